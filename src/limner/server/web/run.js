// One drawing on POST /api/generate, shown as it happens: the error (if any), a progress bar
// and step counter, the work in progress when the server sends previews, then the picture,
// its seed and a download link. Draw, Inpaint and Restyle each own one.

import { aborted, ApiError, dataUrl, element, lines, seconds, showError } from "./api.js";

const PREVIEWS = 10; // about this many previews per drawing: each costs the server a VAE decode

export class Drawing {
  // `prefix` names the elements (`draw-counter`, `draw-result`, ...), inside `#<prefix>-run`.
  constructor(prefix, { go, stop, seedInput }) {
    const id = (name) => `${prefix}-${name}`;
    this.go = go;
    this.stopButton = stop;
    this.error = element("p", { id: id("error"), className: "error", role: "alert", hidden: true });
    this.progress = element("progress", { id: id("progress"), max: 1, value: 0, "aria-labelledby": id("counter") });
    this.steps = element("span", { id: id("counter"), role: "status", text: "" });
    this.time = element("span", { id: id("time"), className: "muted" });
    this.preview = element("img", { id: id("preview"), className: "picture", alt: "The picture so far", hidden: true });
    this.result = element("img", { id: id("result"), className: "picture", alt: "The picture drawn", hidden: true });
    this.seed = element("span", { id: id("seed-used") });
    this.reuse = element("button", { type: "button", id: id("reuse-seed"), text: "Use this seed" });
    this.download = element("a", { id: id("download"), className: "button", text: "Download PNG" });
    this.actions = element("div", { className: "row", hidden: true }, this.seed, this.reuse, this.download);
    this.more = element("div", { className: "row", hidden: true });
    this.row = element("div", { className: "progress-row", hidden: true }, this.progress, this.steps, this.time);
    document.getElementById(id("run")).append(
      this.error, this.row, element("figure", {}, this.preview, this.result), this.actions, this.more,
    );
    this.stopButton.addEventListener("click", () => this.controller && this.controller.abort());
    this.reuse.addEventListener("click", () => {
      if (this.lastSeed !== null) seedInput.value = this.lastSeed;
    });
    this.lastSeed = null;
  }

  // Buttons under the picture that hand it on (to Inpaint, to Restyle).
  addAction(label, use) {
    const button = element("button", { type: "button", text: label });
    button.addEventListener("click", () => use(this.result.src));
    this.more.append(button);
  }

  fail(message) {
    showError(this.error, message);
  }

  // Draws `body` (model, prompt and the rest); resolves when the picture is shown, or when the
  // drawing failed or was stopped (the page says which).
  async run(body, { previews = true } = {}) {
    showError(this.error, "");
    this.controller = new AbortController();
    this.go.disabled = true;
    this.stopButton.disabled = false;
    this.row.hidden = false;
    this.progress.value = 0;
    this.progress.max = 1;
    this.steps.textContent = "starting…";
    this.time.textContent = "";
    this.preview.hidden = true;
    this.result.hidden = true; // a new drawing replaces the last one
    this.actions.hidden = true;
    this.more.hidden = true;
    const started = performance.now();
    const steps = body.steps || 20;
    if (previews) body = { ...body, preview_every: Math.max(1, Math.round(steps / PREVIEWS)) };
    try {
      for await (const line of lines("api/generate", body, this.controller.signal)) {
        if (line.total) this.count(line.completed, line.total);
        if (!line.done) {
          if (line.preview) {
            this.preview.src = dataUrl(line.preview);
            this.preview.hidden = false;
          }
          continue;
        }
        if (!line.image) {
          throw new ApiError(`${body.model} answered with text, not a picture: pick a drawing model`);
        }
        this.show(line, body.model, (performance.now() - started) / 1000);
        return;
      }
      throw new ApiError("the drawing ended without a picture; see the server's log");
    } catch (error) {
      if (aborted(error)) {
        this.steps.textContent += " · stopped"; // the picture so far stays in view
      } else {
        this.fail(error.message);
        this.preview.hidden = true;
        this.row.hidden = this.progress.value === 0; // refused before any step: no progress
        this.steps.textContent += " · failed";
      }
    } finally {
      this.go.disabled = false;
      this.stopButton.disabled = true;
      this.controller = null;
    }
  }

  count(completed, total) {
    this.progress.max = total;
    this.progress.value = completed;
    this.steps.textContent = `${completed} / ${total} steps`;
  }

  show(line, model, took) {
    const url = dataUrl(line.image);
    this.preview.hidden = true;
    this.result.src = url;
    this.result.hidden = false;
    this.result.classList.remove("small");
    this.result.addEventListener("load", () => {
      this.result.classList.toggle("small", this.result.naturalWidth < 256);
    }, { once: true });
    this.time.textContent = `· ${seconds(took)}`;
    const parameters = line.parameters || {};
    this.lastSeed = parameters.seed ?? null;
    this.seed.textContent = this.lastSeed === null ? "" : `seed ${this.lastSeed}`;
    this.reuse.hidden = this.lastSeed === null;
    this.download.href = url;
    const name = `${model}-${this.lastSeed ?? "picture"}`.replace(/[^A-Za-z0-9._-]+/g, "-");
    this.download.setAttribute("download", `${name}.png`);
    this.actions.hidden = false;
    this.more.hidden = this.more.childElementCount === 0;
  }
}

// The value of a number input, or undefined when it is empty (the server's default).
export function number(input) {
  const text = input.value.trim();
  return text === "" ? undefined : Number(text);
}

// The drawing fields every panel shares, without the empty ones.
export function compact(body) {
  return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined && v !== ""));
}
