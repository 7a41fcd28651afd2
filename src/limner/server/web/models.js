// The Models panel: the stored models (GET /api/tags), deleting one (DELETE /api/delete),
// pulling one with a progress bar (POST /api/pull), and what is loaded now (GET /api/ps),
// asked again every few seconds while the panel is open.

import { aborted, bytes, call, element, lines, showError } from "./api.js";
import { all, onChange, refresh } from "./catalog.js";

const $ = (id) => document.getElementById(id);
const EVERY = 3000; // ms between /api/ps reads while the panel shows

function when(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

function rows(models) {
  $("models-rows").replaceChildren(...models.map((model) => {
    const remove = element("button", { type: "button", className: "danger", "data-testid": `delete-${model.name}`,
      "aria-label": `Delete ${model.name}`, text: "Delete" });
    remove.addEventListener("click", () => removeModel(model.name));
    const details = model.details || {};
    return element("tr", { "data-model": model.name },
      element("th", { scope: "row", text: model.name }),
      element("td", { text: bytes(model.size) }),
      element("td", { text: details.family || "" }),
      element("td", { text: details.format || "" }),
      element("td", { text: model.capabilities.join(", ") }),
      element("td", { text: when(model.modified_at) }),
      element("td", {}, remove));
  }));
  if (!models.length) {
    $("models-rows").append(element("tr", {}, element("td", { colspan: 7, text: "No models yet: pull one below." })));
  }
}

async function removeModel(name) {
  if (!window.confirm(`Delete ${name}? Its files are removed unless another model uses them.`)) return;
  showError($("models-error"), "");
  try {
    await call("DELETE", "api/delete", { model: name });
  } catch (error) {
    showError($("models-error"), error.message);
  }
  await reload();
}

async function reload() {
  try {
    await refresh();
  } catch (error) {
    showError($("models-error"), error.message);
  }
}

async function loaded() {
  const running = (await call("GET", "api/ps")).models;
  $("ps-rows").replaceChildren(...running.map((model) => {
    const until = new Date(model.expires_at);
    const forever = until.getFullYear() > 2200; // Ollama's "never unloads" is ~292 years ahead
    return element("tr", {},
      element("th", { scope: "row", text: model.name }),
      element("td", { text: bytes(model.size) }),
      element("td", { text: bytes(model.size_vram) }),
      element("td", { text: model.context_length ? `${model.context_length} tokens` : "" }),
      element("td", { text: forever ? "never" : until.toLocaleTimeString() }));
  }));
  if (!running.length) {
    $("ps-rows").append(element("tr", {}, element("td", { colspan: 5, text: "Nothing is loaded." })));
  }
}

// The pull's lines as one bar: per layer digest, what is done out of its size.
async function pull(name, insecure, signal) {
  const layers = new Map();
  const bar = $("pull-progress");
  bar.hidden = false;
  bar.value = 0;
  for await (const line of lines("api/pull", { model: name, insecure }, signal)) {
    $("pull-status").textContent = line.status;
    if (line.digest && line.total) {
      layers.set(line.digest, [line.completed || 0, line.total]);
      let done = 0;
      let total = 0;
      for (const [completed, size] of layers.values()) {
        done += completed;
        total += size;
      }
      bar.max = total;
      bar.value = done;
      $("pull-status").textContent = `${line.status}: ${bytes(done)} of ${bytes(total)}`;
    }
  }
}

export function setupModels() {
  onChange(rows);
  rows(all());
  const tick = () => {
    loaded().then(() => showError($("ps-error"), ""))
      .catch((error) => showError($("ps-error"), error.message));
  };
  $("models-refresh").addEventListener("click", () => {
    reload();
    tick();
  });

  let controller = null;
  $("pull-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("pull-name").value.trim();
    showError($("pull-error"), name ? "" : "write the name of the model to pull");
    if (!name || controller) return;
    controller = new AbortController();
    $("pull-go").disabled = true;
    $("pull-stop").disabled = false;
    try {
      await pull(name, $("pull-insecure").checked, controller.signal);
      $("pull-status").textContent = `${name} is ready`;
      await reload();
    } catch (error) {
      if (aborted(error)) $("pull-status").textContent = "stopped; a pull started again resumes";
      else showError($("pull-error"), error.message);
    } finally {
      controller = null;
      $("pull-go").disabled = false;
      $("pull-stop").disabled = true;
      $("pull-progress").hidden = true;
    }
  });
  $("pull-stop").addEventListener("click", () => controller && controller.abort());

  // /api/ps every few seconds while the panel shows (and the browser tab is visible).
  let timer = null;
  return {
    shown() {
      reload();
      tick();
      timer = timer || setInterval(() => document.hidden || tick(), EVERY);
    },
    hidden() {
      clearInterval(timer);
      timer = null;
    },
  };
}
