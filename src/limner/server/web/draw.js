// The Draw panel (text to picture, or picture to picture from a starting picture and a
// strength) and the Restyle panel (a style reference picture, and optionally a picture to
// restyle), both on POST /api/generate. Draw also reads the parameters a PNG carries (PNG
// info) and takes parameters and pictures handed on from a result or the gallery.

import { dataUrl, element, pictureOf, rememberFields, showError, stripDataUrl, submitOnCtrlEnter } from "./api.js";
import { choose, draws, facts, picker } from "./catalog.js";
import { parametersOf } from "./pnginfo.js";
import { compact, Drawing, number, parameterList } from "./run.js";

// Automatic1111's names, as the API takes them; empty: the model's own.
const SCHEDULERS = ["euler", "euler a", "dpm++ 2m", "dpm++ 2m karras", "ddim", "lcm", "pndm", "unipc"];
const MAX_BATCH = 16;

const $ = (id) => document.getElementById(id);

// Sizes around a model's own (same area, multiples of 8): SDXL's trained buckets for 1024,
// Automatic1111's usual sizes below it.
export function sizePresets(size) {
  if (!size) return [];
  const round = (value) => Math.max(8, Math.round(value / 8) * 8);
  const shapes = size >= 1024
    ? [[1, 1, "square"], [0.875, 1.125, "portrait"], [1.125, 0.875, "landscape"],
      [0.8125, 1.1875, "portrait 2:3"], [1.1875, 0.8125, "landscape 3:2"],
      [0.75, 1.3125, "tall"], [1.3125, 0.75, "wide"]]
    : [[1, 1, "square"], [1, 1.5, "portrait 2:3"], [1.5, 1, "landscape 3:2"],
      [1, 1.75, "tall 4:7"], [1.75, 1, "wide 7:4"]];
  return shapes.map(([w, h, label]) => ({ width: round(w * size), height: round(h * size), label }));
}

// The model's own steps, guidance and size as the placeholders of a panel's fields.
export function showDefaults(prefix, known) {
  const set = (name, value) => {
    const input = $(`${prefix}-${name}`);
    if (input) input.placeholder = value === undefined ? "model's" : `${value} (model's)`;
  };
  set("steps", known.defaultSteps);
  set("guidance", known.defaultGuidance);
  set("width", known.defaultSize);
  set("height", known.defaultSize);
}

export function setupDraw(handOn) {
  const select = $("draw-model");
  picker(select, draws, "no drawing model: pull one in Models", "draw");
  for (const schedulers of document.querySelectorAll("select.schedulers")) {
    schedulers.append(element("option", { value: "", text: "model's own" }));
    schedulers.append(...SCHEDULERS.map((name) => element("option", { value: name, text: name })));
  }
  const form = $("draw-form");
  const drawing = new Drawing("draw", { go: $("draw-go"), stop: $("draw-stop"), seedInput: $("draw-seed") });
  drawing.addAction("Use these parameters", (picture) => fill(picture.parameters, picture.model));
  drawing.addAction("Send to img2img", (picture) => handOn("img2img", picture));
  drawing.addAction("Inpaint this picture", (picture) => handOn("inpaint", picture));
  drawing.addAction("Use as a style reference", (picture) => handOn("restyle", picture));
  let known = {};
  let init = null; // the starting picture of picture to picture: {base64, url}

  // --- Size presets from the model's own size -------------------------------------------------

  const sizes = $("draw-size");
  function showPresets() {
    const own = known.defaultSize;
    sizes.replaceChildren(
      element("option", { value: "", text: own ? `${own}×${own} (model's)` : "model's size" }),
      ...sizePresets(own).slice(1).map((p) => element("option", { value: `${p.width}x${p.height}`, text: `${p.width}×${p.height} ${p.label}` })),
      element("option", { value: "custom", text: "custom (below)" }),
    );
    matchPreset();
  }
  function matchPreset() {
    const width = $("draw-width").value.trim();
    const height = $("draw-height").value.trim();
    if (!width && !height) sizes.value = "";
    else if ([...sizes.options].some((o) => o.value === `${width}x${height}`)) sizes.value = `${width}x${height}`;
    else if (known.defaultSize && width === String(known.defaultSize) && height === width) sizes.value = "";
    else sizes.value = "custom";
  }
  sizes.addEventListener("change", () => {
    if (sizes.value === "custom") return $("draw-width").focus();
    const [width, height] = sizes.value ? sizes.value.split("x") : ["", ""];
    $("draw-width").value = width;
    $("draw-height").value = height;
    save();
  });
  for (const id of ["draw-width", "draw-height"]) $(id).addEventListener("input", matchPreset);

  select.addEventListener("model", () => {
    known = facts(select.value);
    showDefaults("draw", known);
    showPresets();
  });
  select.dispatchEvent(new Event("model"));

  // --- Text to picture, or picture to picture ---------------------------------------------------

  function showMode() {
    const img2img = $("draw-mode-img2img").checked;
    $("draw-init").hidden = !img2img;
    $("draw-go").textContent = img2img ? "Draw from the picture" : "Draw";
  }
  for (const id of ["draw-mode-txt2img", "draw-mode-img2img"]) $(id).addEventListener("change", showMode);

  function setInit(picture) {
    init = picture;
    $("draw-init-preview").hidden = !init;
    $("draw-init-clear").hidden = !init;
    if (init) $("draw-init-preview").src = init.url;
  }
  $("draw-init-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      const picture = await pictureOf(file);
      setInit({ base64: picture.base64, url: picture.url });
      drawing.fail("");
    } catch (error) {
      drawing.fail(error.message);
    }
  });
  $("draw-init-clear").addEventListener("click", () => {
    $("draw-init-file").value = "";
    setInit(null);
  });

  // --- PNG info: the parameters a picture carries -----------------------------------------------

  let read = null;
  async function readInfo(file) {
    $("draw-pnginfo-box").open = true;
    read = null;
    $("draw-pnginfo-use").hidden = true;
    $("draw-pnginfo").hidden = true;
    try {
      read = await parametersOf(file);
    } catch {
      read = null;
    }
    $("draw-pnginfo-status").textContent = read ? `${file.name || "the picture"} was drawn with:`
      : `${file.name || "that file"} carries no drawing parameters (only PNGs from limner, Automatic1111 and the like do)`;
    if (!read) return;
    parameterList($("draw-pnginfo"), read);
    $("draw-pnginfo-use").hidden = false;
  }
  $("draw-pnginfo-file").addEventListener("change", (event) => {
    if (event.target.files[0]) readInfo(event.target.files[0]);
    event.target.value = "";
  });
  $("draw-pnginfo-use").addEventListener("click", () => read && fill(read, read.model));

  // A picture dropped on the starting picture's box starts picture to picture; anywhere else
  // on the panel its parameters are read.
  const panel = $("panel-draw");
  panel.addEventListener("dragover", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) event.preventDefault();
  });
  panel.addEventListener("drop", async (event) => {
    const file = [...event.dataTransfer.files].find((f) => f.type.startsWith("image/"));
    if (!file) return;
    event.preventDefault();
    if ($("draw-init").contains(event.target) && !$("draw-init").hidden) {
      const picture = await pictureOf(file).catch((error) => drawing.fail(error.message));
      if (picture) setInit({ base64: picture.base64, url: picture.url });
    } else {
      readInfo(file);
    }
  });

  // --- Parameters handed on ---------------------------------------------------------------------

  // Fills the form with a picture's parameters (from a result, the gallery or PNG info), the
  // model too when it is listed.
  function fill(parameters, model) {
    const set = (id, value) => {
      if (value !== undefined && value !== null) $(id).value = value;
    };
    choose(select, model || parameters.model);
    $("draw-prompt").value = parameters.prompt || "";
    $("draw-negative").value = parameters.negative_prompt || "";
    $("draw-width").value = parameters.width ?? "";
    $("draw-height").value = parameters.height ?? "";
    set("draw-steps", parameters.steps);
    set("draw-seed", parameters.seed);
    set("draw-guidance", parameters.guidance_scale);
    const scheduler = String(parameters.scheduler || "").toLowerCase();
    $("draw-scheduler").value = SCHEDULERS.includes(scheduler) ? scheduler : "";
    $("draw-tiny-vae").checked = parameters.vae === "tiny";
    if (parameters.strength) $("draw-strength").value = parameters.strength;
    matchPreset();
    save();
    showError($("draw-error"), "");
  }

  const save = rememberFields(form, "draw");
  showMode();
  matchPreset();
  submitOnCtrlEnter(form);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (drawing.running) return;
    const model = select.value;
    const prompt = $("draw-prompt").value.trim();
    const img2img = $("draw-mode-img2img").checked;
    if (!model) return drawing.fail("pick a drawing model first (pull one in Models)");
    if (!prompt) return drawing.fail("write what to draw in the prompt");
    if (img2img && !init) return drawing.fail("choose the picture to start from (or switch to Text to picture)");
    const count = Math.min(MAX_BATCH, Math.max(1, Math.floor(number($("draw-batch")) || 1)));
    drawing.runBatch(compact({
      model,
      prompt,
      negative_prompt: $("draw-negative").value.trim(),
      width: number($("draw-width")),
      height: number($("draw-height")),
      steps: number($("draw-steps")),
      seed: number($("draw-seed")),
      guidance_scale: number($("draw-guidance")),
      scheduler: $("draw-scheduler").value,
      vae: $("draw-tiny-vae").checked ? "tiny" : "",
      images: img2img ? [init.base64] : undefined,
      strength: img2img ? number($("draw-strength")) : undefined,
    }), count, { previews: $("draw-previews").checked, steps: known.defaultSteps || 20 });
  });

  return {
    fill,
    // Picture to picture from a picture handed on, with its parameters.
    img2img(picture) {
      fill(picture.parameters || {}, picture.model);
      $("draw-mode-img2img").checked = true;
      showMode();
      setInit({ base64: picture.base64, url: picture.url });
      save();
    },
  };
}

export function setupRestyle(handOn) {
  const select = $("restyle-model");
  picker(select, draws, "no drawing model: pull one in Models", "restyle");
  const form = $("restyle-form");
  const drawing = new Drawing("restyle", { go: $("restyle-go"), stop: $("restyle-stop"), seedInput: $("restyle-seed") });
  drawing.addAction("Use these parameters", (picture) => handOn("draw", picture));
  drawing.addAction("Send to img2img", (picture) => handOn("img2img", picture));
  drawing.addAction("Inpaint this picture", (picture) => handOn("inpaint", picture));
  const chosen = { reference: null, picture: null };
  let known = {};

  const choosePicture = async (which, file) => {
    const preview = $(`restyle-${which}-preview`);
    try {
      chosen[which] = file ? (await pictureOf(file)).base64 : null;
    } catch (error) {
      chosen[which] = null;
      drawing.fail(error.message);
    }
    preview.hidden = !chosen[which];
    if (chosen[which]) preview.src = dataUrl(chosen[which]);
    if (which === "picture") $("restyle-picture-clear").hidden = !chosen.picture;
  };
  $("restyle-reference").addEventListener("change", (e) => choosePicture("reference", e.target.files[0]));
  $("restyle-picture").addEventListener("change", (e) => choosePicture("picture", e.target.files[0]));
  $("restyle-picture-clear").addEventListener("click", () => {
    $("restyle-picture").value = "";
    choosePicture("picture", null);
  });

  // A model without an IP-Adapter restyles by image-to-image from the reference, and cannot
  // restyle a picture of yours: the page says so before anything is sent.
  select.addEventListener("model", () => {
    known = facts(select.value);
    showDefaults("restyle", known);
    const without = known.ipAdapter === false;
    $("restyle-picture").disabled = without;
    $("restyle-picture-reason").hidden = !without;
    $("restyle-picture-reason").textContent = without
      ? `${select.value} has no IP-Adapter: it restyles by drawing over the reference (image to image, ` +
        "more style strength keeps more of it), and cannot restyle a picture of yours. A Stable " +
        "Diffusion model in diffusers' layout with image_encoder/ and ip_adapter/ can."
      : "";
    if (without && chosen.picture) {
      $("restyle-picture").value = "";
      choosePicture("picture", null);
    }
  });
  select.dispatchEvent(new Event("model"));

  rememberFields(form, "restyle");
  submitOnCtrlEnter(form);

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (drawing.running) return;
    const model = select.value;
    if (!model) return drawing.fail("pick a drawing model first (pull one in Models)");
    if (!chosen.reference) return drawing.fail("choose a style reference picture");
    // An empty prompt without a picture would only load the model (the API's rule).
    if (!$("restyle-prompt").value.trim() && !chosen.picture) {
      return drawing.fail("write a prompt: what the new picture shows");
    }
    const body = {
      model,
      prompt: $("restyle-prompt").value.trim(),
      negative_prompt: $("restyle-negative").value.trim(),
      style_images: [chosen.reference],
      style_strength: number($("restyle-style-strength")),
      width: number($("restyle-width")),
      height: number($("restyle-height")),
      steps: number($("restyle-steps")),
      seed: number($("restyle-seed")),
    };
    if (chosen.picture) {
      body.images = [chosen.picture];
      body.strength = number($("restyle-strength"));
    }
    drawing.run(compact(body), { steps: known.defaultSteps || 20 });
  });

  // A picture handed on becomes the style reference, with its model.
  return (picture) => {
    choose(select, picture.model);
    chosen.reference = picture.base64 || stripDataUrl(picture.url);
    $("restyle-reference").value = "";
    $("restyle-reference-preview").src = picture.url;
    $("restyle-reference-preview").hidden = false;
  };
}
