// The Draw panel (text to picture) and the Restyle panel (a style reference picture, and
// optionally a picture to restyle), both on POST /api/generate.

import { dataUrl, element, pictureOf, stripDataUrl } from "./api.js";
import { draws, picker } from "./catalog.js";
import { compact, Drawing, number } from "./run.js";

// Automatic1111's names, as the API takes them; empty: the model's own.
const SCHEDULERS = ["euler", "euler a", "dpm++ 2m", "dpm++ 2m karras", "ddim", "lcm", "pndm", "unipc"];

const $ = (id) => document.getElementById(id);

export function setupDraw(handOn) {
  picker($("draw-model"), draws, "no drawing model: pull one in Models");
  for (const select of document.querySelectorAll("select.schedulers")) {
    select.append(element("option", { value: "", text: "model's own" }));
    select.append(...SCHEDULERS.map((name) => element("option", { value: name, text: name })));
  }
  const drawing = new Drawing("draw", { go: $("draw-go"), stop: $("draw-stop"), seedInput: $("draw-seed") });
  drawing.addAction("Inpaint this picture", (url) => handOn("inpaint", url));
  drawing.addAction("Use as a style reference", (url) => handOn("restyle", url));
  $("draw-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const model = $("draw-model").value;
    const prompt = $("draw-prompt").value.trim();
    if (!model) return drawing.fail("pick a drawing model first (pull one in Models)");
    if (!prompt) return drawing.fail("write what to draw in the prompt");
    drawing.run(compact({
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
    }), { previews: $("draw-previews").checked });
  });
}

export function setupRestyle() {
  picker($("restyle-model"), draws, "no drawing model: pull one in Models");
  const drawing = new Drawing("restyle", { go: $("restyle-go"), stop: $("restyle-stop"), seedInput: $("restyle-seed") });
  const chosen = { reference: null, picture: null };

  const choose = async (which, file) => {
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
  $("restyle-reference").addEventListener("change", (e) => choose("reference", e.target.files[0]));
  $("restyle-picture").addEventListener("change", (e) => choose("picture", e.target.files[0]));
  $("restyle-picture-clear").addEventListener("click", () => {
    $("restyle-picture").value = "";
    choose("picture", null);
  });

  $("restyle-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const model = $("restyle-model").value;
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
    drawing.run(compact(body));
  });

  // A picture handed on from Draw becomes the style reference.
  return (url) => {
    chosen.reference = stripDataUrl(url);
    $("restyle-reference").value = "";
    $("restyle-reference-preview").src = url;
    $("restyle-reference-preview").hidden = false;
  };
}
