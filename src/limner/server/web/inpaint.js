// The Inpaint panel: a picture, a mask painted over it with the mouse (or a pen or a finger),
// and a prompt for what to paint there. The mask goes to POST /api/generate as a PNG the size
// of the picture: white repaints, black keeps.

import { pictureOf, stripDataUrl } from "./api.js";
import { draws, picker } from "./catalog.js";
import { compact, Drawing, number } from "./run.js";

const $ = (id) => document.getElementById(id);

export function setupInpaint() {
  picker($("inpaint-model"), draws, "no drawing model: pull one in Models");
  const drawing = new Drawing("inpaint", { go: $("inpaint-go"), stop: $("inpaint-stop"), seedInput: $("inpaint-seed") });
  const image = $("inpaint-picture");
  const canvas = $("inpaint-mask");
  const pen = canvas.getContext("2d", { willReadFrequently: true });
  let picture = null; // base64 PNG of the picture at its own size: the mask is made at that size
  let last = null; // the pointer's last point while it paints

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
    const stack = $("inpaint-stack");
    stack.hidden = false;
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
  $("inpaint-clear").addEventListener("click", () => pen.clearRect(0, 0, canvas.width, canvas.height));
  $("inpaint-invert").addEventListener("click", () => {
    const painted = pen.getImageData(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < painted.data.length; i += 4) {
      const alpha = painted.data[i + 3] >= 128 ? 0 : 255;
      painted.data.set([255, 31, 122, alpha], i);
    }
    pen.putImageData(painted, 0, 0);
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

  // The painted pixels as the API's mask: white where painted, black elsewhere; null if none.
  function mask() {
    const { width, height } = canvas;
    const painted = pen.getImageData(0, 0, width, height).data;
    const out = document.createElement("canvas");
    out.width = width;
    out.height = height;
    const context = out.getContext("2d");
    const pixels = context.createImageData(width, height);
    let any = false;
    for (let i = 0; i < painted.length; i += 4) {
      const value = painted[i + 3] >= 128 ? 255 : 0;
      any ||= value > 0;
      pixels.data.set([value, value, value, 255], i);
    }
    context.putImageData(pixels, 0, 0);
    return any ? stripDataUrl(out.toDataURL("image/png")) : null;
  }

  drawing.addAction("Inpaint the result again", (url) => load(url));

  $("inpaint-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const model = $("inpaint-model").value;
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
    }));
  });

  return load; // a picture handed on from Draw
}
