// The stored models (GET /api/tags) with what each can do (POST /api/show `capabilities`), and
// the model pickers of every panel, which refill whenever the list changes.

import { call, element } from "./api.js";

const capabilities = new Map(); // digest -> capabilities, asked once per model version
const listeners = [];
let models = [];

export function all() {
  return models;
}

export function draws(model) {
  return model.capabilities.includes("image");
}

export function onChange(listener) {
  listeners.push(listener);
}

// Reads the list again; throws an ApiError if the server cannot be asked.
export async function refresh() {
  const listed = (await call("GET", "api/tags")).models;
  await Promise.all(listed.map(async (model) => {
    if (!capabilities.has(model.digest)) {
      try {
        const shown = await call("POST", "api/show", { model: model.name });
        capabilities.set(model.digest, shown.capabilities || []);
      } catch {
        return; // removed meanwhile, or unreadable: listed without capabilities this time
      }
    }
  }));
  models = listed.map((model) => ({ ...model, capabilities: capabilities.get(model.digest) || [] }));
  for (const listener of listeners) listener(models);
  return models;
}

// Keeps `select` filled with the models that `fits`, keeping the choice when it is still there.
export function picker(select, fits, nothing) {
  const fill = () => {
    const chosen = select.value;
    const names = models.filter(fits).map((model) => model.name);
    select.replaceChildren(...names.map((name) => element("option", { value: name, text: name })));
    if (!names.length) select.append(element("option", { value: "", text: nothing }));
    if (names.includes(chosen)) select.value = chosen;
  };
  onChange(fill);
  fill();
}
