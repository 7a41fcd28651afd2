// The stored models (GET /api/tags) with what each is (POST /api/show: capabilities, details,
// model_info), and the model pickers of every panel, which refill whenever the list changes
// and remember each panel's choice in this browser.

import { call, element, saved } from "./api.js";

const shown = new Map(); // digest -> the /api/show answer, asked once per model version
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
    if (!shown.has(model.digest)) {
      try {
        shown.set(model.digest, await call("POST", "api/show", { model: model.name }));
      } catch {
        return; // removed meanwhile, or unreadable: listed without capabilities this time
      }
    }
  }));
  models = listed.map((model) => {
    const show = shown.get(model.digest) || {};
    return { ...model, capabilities: show.capabilities || [], show };
  });
  for (const listener of listeners) listener(models);
  return models;
}

// What the page needs to know of a model, from its /api/show answer ({} if not listed).
export function facts(name) {
  const model = models.find((m) => m.name === name);
  if (!model) return {};
  const show = model.show || {};
  const info = show.model_info || {};
  const details = show.details || model.details || {};
  const family = info["general.architecture"] || details.family || "";
  const key = (name) => info[`${family}.${name}`];
  return {
    name: model.name,
    family,
    details,
    info,
    capabilities: model.capabilities,
    contextLength: key("context_length"),
    defaultSize: key("default_size"),
    defaultSteps: key("default_steps"),
    defaultGuidance: key("default_guidance_scale"),
    ipAdapter: key("ip_adapter"), // undefined: the model does not say
    tinyVae: key("tiny_vae"),
    inpaintingUnet: key("inpainting_unet"),
    parameters: show.parameters || "",
    training: show.training || null,
  };
}

// Keeps `select` filled with the models that `fits`. The choice is kept while the model is
// listed, and remembered in this browser under `key` (one per panel).
export function picker(select, fits, nothing, key) {
  select.classList.add("model-picker");
  const fill = () => {
    const chosen = select.value || saved.get(`model-${key}`);
    const names = models.filter(fits).map((model) => model.name);
    select.replaceChildren(...names.map((name) => element("option", { value: name, text: name })));
    if (!names.length) select.append(element("option", { value: "", text: nothing }));
    if (names.includes(chosen)) select.value = chosen;
    select.dispatchEvent(new Event("model")); // the panel reads the model's facts again
  };
  select.addEventListener("change", () => {
    saved.set(`model-${key}`, select.value);
    select.dispatchEvent(new Event("model"));
  });
  onChange(fill);
  fill();
}

// Picks `name` in a panel's picker when it is listed there ("send to" carries the model).
export function choose(select, name) {
  if (!name || ![...select.options].some((option) => option.value === name)) return false;
  if (select.value !== name) {
    select.value = name;
    select.dispatchEvent(new Event("change"));
  }
  return true;
}
