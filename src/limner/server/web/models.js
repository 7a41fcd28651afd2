// The Models panel: the stored models (GET /api/tags) with what /api/show says of each
// (Details), deleting one (DELETE /api/delete), pulling one with a progress bar
// (POST /api/pull), and what is loaded now (GET /api/ps, asked again every few seconds while
// the panel is open), each with Unload (POST /api/generate with keep_alive 0, as Ollama).

import { aborted, bytes, call, element, lines, showError } from "./api.js";
import { all, facts, onChange, refresh } from "./catalog.js";

const $ = (id) => document.getElementById(id);
const EVERY = 3000; // ms between /api/ps reads while the panel shows

function when(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

function cell(label, text) {
  return element("td", { "data-label": label, text });
}

function rows(models) {
  $("models-rows").replaceChildren(...models.map((model) => {
    const more = element("button", { type: "button", "aria-label": `Details of ${model.name}`, text: "Details" });
    more.addEventListener("click", () => showDetails(model.name));
    const remove = element("button", { type: "button", className: "danger", "data-testid": `delete-${model.name}`,
      "aria-label": `Delete ${model.name}`, text: "Delete" });
    remove.addEventListener("click", () => removeModel(model.name));
    const details = model.details || {};
    return element("tr", { "data-model": model.name },
      element("th", { scope: "row", text: model.name }),
      cell("Size", bytes(model.size)),
      cell("Family", details.family || ""),
      cell("Format", details.format || ""),
      cell("Can", model.capabilities.join(", ")),
      cell("Modified", when(model.modified_at)),
      element("td", { className: "buttons" }, more, remove));
  }));
  if (!models.length) {
    $("models-rows").append(element("tr", {}, element("td", { colspan: 7, text: "No models yet: pull one below." })));
  }
  const open = $("model-details").dataset.model;
  if (open && !models.some((m) => m.name === open)) $("model-details").hidden = true;
  else if (open && !$("model-details").hidden) showDetails(open, false);
}

function yes(value) {
  return value === undefined ? undefined : value ? "yes" : "no";
}

// What /api/show says of a model, in words: the facts first, every model_info key after.
function showDetails(name, scroll = true) {
  const known = facts(name);
  const details = known.details || {};
  const size = known.defaultSize ? `${known.defaultSize}×${known.defaultSize}` : undefined;
  const rows = [
    ["Family", (details.families || []).length > 1 ? `${known.family} (${details.families.join(", ")})` : known.family],
    ["Format", details.format],
    ["Parameters", details.parameter_size],
    ["Quantization", details.quantization_level],
    ["Capabilities", (known.capabilities || []).join(", ")],
    ["Context length", known.contextLength ? `${Number(known.contextLength).toLocaleString()} tokens` : undefined],
    ["Default size", size],
    ["Default steps", known.defaultSteps],
    ["Default guidance", known.defaultGuidance],
    ["IP-Adapter (restyle a picture)", yes(known.ipAdapter)],
    ["Tiny VAE", yes(known.tinyVae)],
    ["Inpainting UNet", yes(known.inpaintingUnet)],
    ["Parameters set", known.parameters || undefined],
    ["Trained by limner", known.training ? `${known.training.steps} steps from ${known.training.base}` : undefined],
  ];
  const list = $("model-details-facts");
  list.replaceChildren(...rows.filter(([, value]) => value !== undefined && value !== "" && value !== null)
    .flatMap(([label, value]) => [element("dt", { text: label }), element("dd", { text: String(value) })]));
  const info = Object.entries(known.info || {}).map(([key, value]) => {
    let text = typeof value === "string" ? value : JSON.stringify(value);
    if (text.length > 160) text = `${text.slice(0, 159)}…`;
    return [element("dt", { text: key }), element("dd", { text })];
  });
  $("model-details-info").replaceChildren(...info.flat());
  $("model-details-name").textContent = name;
  const box = $("model-details");
  box.dataset.model = name;
  box.hidden = false;
  if (scroll) box.scrollIntoView({ block: "nearest" });
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

async function unload(name) {
  showError($("ps-error"), "");
  try {
    // An empty prompt with keep_alive 0 unloads, for chat and drawing models alike.
    await call("POST", "api/generate", { model: name, keep_alive: 0, stream: false });
  } catch (error) {
    showError($("ps-error"), error.message);
  }
  await loaded().catch((error) => showError($("ps-error"), error.message));
}

async function loaded() {
  const running = (await call("GET", "api/ps")).models;
  $("ps-rows").replaceChildren(...running.map((model) => {
    const until = new Date(model.expires_at);
    const forever = until.getFullYear() > 2200; // Ollama's "never unloads" is ~292 years ahead
    const button = element("button", { type: "button", "aria-label": `Unload ${model.name}`, text: "Unload" });
    button.addEventListener("click", () => {
      button.disabled = true;
      unload(model.name);
    });
    return element("tr", { "data-model": model.name },
      element("th", { scope: "row", text: model.name }),
      cell("Memory", bytes(model.size)),
      cell("On GPU", bytes(model.size_vram)),
      cell("Context", model.context_length ? `${model.context_length} tokens` : ""),
      cell("Unloads", forever ? "never" : until.toLocaleTimeString()),
      element("td", { className: "buttons" }, button));
  }));
  if (!running.length) {
    $("ps-rows").append(element("tr", {}, element("td", { colspan: 6, text: "Nothing is loaded." })));
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
  $("model-details-close").addEventListener("click", () => { $("model-details").hidden = true; });
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
