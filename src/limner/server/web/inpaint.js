// The Inpaint panel: a picture, a mask painted over it with the mouse (or a pen or a finger),
// and a prompt for what to paint there. The mask goes to POST /api/generate as a PNG the size
// of the picture: white repaints, black keeps. Every stroke, clear and invert can be undone
// (the Undo button, or Ctrl+Z). Mask blur softens the painted outline before it is sent (grey
// levels, every painted pixel at least half white). The server repaints where the mask is at
// least half white and keeps the rest exactly, so today a blur smooths the outline's corners
// and steps rather than fading the edge.

import { pictureOf, rememberFields, stripDataUrl, submitOnCtrlEnter } from "./api.js";
import { choose, draws, facts, picker } from "./catalog.js";
import { showDefaults } from "./draw.js";
import { compact, Drawing, number } from "./run.js";

const $ = (id) => document.getElementById(id);
const UNDO = 30; // strokes kept to undo

export function setupInpaint(handOn) {
  const select = $("inpaint-model");
  picker(select, draws, "no drawing model: pull one in Models", "inpaint");
  let known = {};
  select.addEventListener("model", () => {
    known = facts(select.value);
    showDefaults("inpaint", known);
  });
  select.dispatchEvent(new Event("model"));
  const drawing = new Drawing("inpaint", { go: $("inpaint-go"), stop: $("inpaint-stop"), seedInput: $("inpaint-seed") });
  const image = $("inpaint-picture");
  const canvas = $("inpaint-mask");
  const pen = canvas.getContext("2d", { willReadFrequently: true });
  let picture = null; // base64 PNG of the picture at its own size: the mask is made at that size
  let last = null; // the pointer's last point while it paints
  let undo = []; // the mask before each change

  function showUndo() {
    $("inpaint-undo").disabled = undo.length === 0;
  }

  function remember() {
    undo.push(pen.getImageData(0, 0, canvas.width, canvas.height));
    if (undo.length > UNDO) undo.shift();
    showUndo();
  }

  async function load(url) {
    image.src = url;
    try {
      await image.decode();
    } catch {
      picture = null;
      $("inpaint-stack").hidden = true;
      return drawing.fail("this browser cannot open that picture");
    }
    const { naturalWidth: width, naturalHeight: height } = image;
    // Sent as PNG, as shown: a JPEG's orientation or colour profile cannot make the picture
    // and its mask disagree.
    const copy = document.createElement("canvas");
    copy.width = width;
    copy.height = height;
    copy.getContext("2d").drawImage(image, 0, 0);
    picture = stripDataUrl(copy.toDataURL("image/png"));
    canvas.width = width;
    canvas.height = height;
    undo = [];
    showUndo();
    const stack = $("inpaint-stack");
    stack.hidden = false;
    $("inpaint-tools").hidden = false;
    $("inpaint-empty").hidden = true;
    stack.style.width = `${Math.min(512, Math.max(256, width))}px`; // small pictures shown larger
    stack.classList.toggle("small", width < 256);
    drawing.fail("");
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return { x: (event.clientX - box.left) * scale, y: (event.clientY - box.top) * scale, scale };
  }

  function paint(from, to) {
    pen.globalCompositeOperation = $("inpaint-tool-eraser").checked ? "destination-out" : "source-over";
    pen.strokeStyle = pen.fillStyle = "#ff1f7a";
    pen.lineWidth = Number($("inpaint-brush").value) * to.scale;
    pen.lineCap = pen.lineJoin = "round";
    pen.beginPath();
    if (from === to) {
      pen.arc(to.x, to.y, pen.lineWidth / 2, 0, 2 * Math.PI); // a click paints a dot
      pen.fill();
    } else {
      pen.moveTo(from.x, from.y);
      pen.lineTo(to.x, to.y);
      pen.stroke();
    }
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (!picture || event.button !== 0) return;
    canvas.setPointerCapture(event.pointerId);
    remember();
    last = point(event);
    paint(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    paint(last, next);
    last = next;
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    canvas.addEventListener(type, () => { last = null; });
  }

  $("inpaint-brush").addEventListener("input", () => {
    $("inpaint-brush-size").value = $("inpaint-brush").value;
  });
  $("inpaint-blur").addEventListener("input", () => {
    $("inpaint-blur-size").value = $("inpaint-blur").value;
  });
  $("inpaint-clear").addEventListener("click", () => {
    remember();
    pen.clearRect(0, 0, canvas.width, canvas.height);
  });
  $("inpaint-invert").addEventListener("click", () => {
    remember();
    const painted = pen.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < painted.data.length; i += 4) {
      const alpha = painted.data[i + 3] >= 128 ? 0 : 255;
      painted.data.set([255, 31, 122, alpha], i);
    }
    pen.putImageData(painted, 0, 0);
  });
  const undoOne = () => {
    const before = undo.pop();
    if (before) pen.putImageData(before, 0, 0);
    showUndo();
  };
  $("inpaint-undo").addEventListener("click", undoOne);
  $("panel-inpaint").addEventListener("keydown", (event) => {
    const typing = ["TEXTAREA", "INPUT"].includes(event.target.tagName) && event.target.type !== "range";
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z" && !typing) {
      event.preventDefault();
      undoOne();
    }
  });
  $("inpaint-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    try {
      await load((await pictureOf(file)).url);
    } catch (error) {
      drawing.fail(error.message);
    }
  });

  // The painted pixels as the API's mask: white where painted, black elsewhere, the outline
  // blurred by the chosen radius (in the picture's pixels); null if nothing is painted.
  function mask() {
    const { width, height } = canvas;
    const painted = pen.getImageData(0, 0, width, height).data;
    const sharp = document.createElement("canvas");
    sharp.width = width;
    sharp.height = height;
    const context = sharp.getContext("2d");
    const pixels = context.createImageData(width, height);
    let any = false;
    for (let i = 0; i < painted.length; i += 4) {
      const value = painted[i + 3] >= 128 ? 255 : 0;
      any ||= value > 0;
      pixels.data.set([value, value, value, 255], i);
    }
    if (!any) return null;
    context.putImageData(pixels, 0, 0);
    const blur = Number($("inpaint-blur").value) || 0;
    if (!blur) return stripDataUrl(sharp.toDataURL("image/png"));
    const soft = document.createElement("canvas");
    soft.width = width;
    soft.height = height;
    const softly = soft.getContext("2d");
    softly.fillStyle = "#000";
    softly.fillRect(0, 0, width, height);
    softly.filter = `blur(${blur}px)`;
    softly.drawImage(sharp, 0, 0);
    // Every painted pixel stays at least half white: the server repaints from half white up,
    // so a thin stroke is never blurred away.
    const blurred = softly.getImageData(0, 0, width, height);
    for (let i = 0; i < blurred.data.length; i += 4) {
      if (pixels.data[i] === 255 && blurred.data[i] < 128) blurred.data.set([128, 128, 128, 255], i);
    }
    softly.putImageData(blurred, 0, 0);
    return stripDataUrl(soft.toDataURL("image/png"));
  }

  drawing.addAction("Inpaint the result again", (result) => load(result.url));
  drawing.addAction("Send to img2img", (result) => handOn("img2img", result));
  drawing.addAction("Use as a style reference", (result) => handOn("restyle", result));

  const form = $("inpaint-form");
  rememberFields(form, "inpaint");
  submitOnCtrlEnter(form);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (drawing.running) return;
    const model = select.value;
    if (!model) return drawing.fail("pick a drawing model first (pull one in Models)");
    if (!picture) return drawing.fail("choose a picture first");
    const painted = mask();
    if (!painted) return drawing.fail("paint over the part of the picture to repaint first");
    drawing.run(compact({
      model,
      prompt: $("inpaint-prompt").value.trim(),
      negative_prompt: $("inpaint-negative").value.trim(),
      images: [picture],
      mask: painted,
      strength: number($("inpaint-strength")),
      steps: number($("inpaint-steps")),
      seed: number($("inpaint-seed")),
      guidance_scale: number($("inpaint-guidance")),
    }), { steps: known.defaultSteps || 20 });
  });

  // A picture handed on (from Draw, Restyle or the gallery), with its model and prompt.
  return (picture) => {
    choose(select, picture.model);
    if (picture.parameters && picture.parameters.prompt && !$("inpaint-prompt").value.trim()) {
      $("inpaint-prompt").value = picture.parameters.prompt;
    }
    return load(picture.url);
  };
}
