// One drawing on POST /api/generate, shown as it happens: "loading MODEL… 3 s" while a cold
// model loads, a progress bar with the step counter, steps per second and the time left, the
// work in progress when the server sends previews, then the picture with every parameter it
// was drawn with, a download link and buttons that hand it on. A batch draws N pictures with
// seeds seed, seed+1, ... A run that fails or is stopped never takes away the picture shown
// before it: the error is shown beside it. The last picture comes back after a reload (from
// the server's gallery). Draw, Inpaint and Restyle each own one.

import {
  aborted, ApiError, blobOf, dataUrl, dataUrlOf, element, lines, loaded, loadingClock, saved,
  seconds, showError, stripDataUrl,
} from "./api.js";

const PREVIEWS = 10; // about this many previews per drawing: each costs the server a VAE decode

// The parameters a picture reports, in the order and words a person reads them.
const LABELS = [
  ["prompt", "Prompt"], ["negative_prompt", "Negative prompt"], ["model", "Model"],
  ["mode", "Mode"], ["seed", "Seed"], ["steps", "Steps"], ["scheduler", "Sampler"],
  ["guidance_scale", "Guidance"], ["size", "Size"], ["strength", "Strength"], ["style", "Style"],
  ["style_strength", "Style strength"], ["loras", "LoRAs"], ["vae", "VAE"],
];

// Fills a <dl> with a picture's parameters (as text; nothing in them becomes markup).
export function parameterList(list, parameters, extra = []) {
  const shown = { ...parameters };
  if (shown.width && shown.height) shown.size = `${shown.width}×${shown.height}`;
  const rows = [];
  for (const [key, label] of LABELS) {
    const value = shown[key];
    if (value === undefined || value === null || value === "") continue;
    rows.push(element("dt", { text: label }), element("dd", { text: String(value) }));
  }
  for (const [label, value] of extra) rows.push(element("dt", { text: label }), element("dd", { text: value }));
  list.replaceChildren(...rows);
  list.hidden = rows.length === 0;
}

export function fileName(model, seed) {
  return `${`${model || "picture"}-${seed ?? "picture"}`.replace(/[^A-Za-z0-9._-]+/g, "-")}.png`;
}

export class Drawing {
  // `prefix` names the elements (`draw-counter`, `draw-result`, ...), inside `#<prefix>-run`.
  constructor(prefix, { go, stop, seedInput }) {
    const id = (name) => `${prefix}-${name}`;
    this.prefix = prefix;
    this.go = go;
    this.stopButton = stop;
    this.error = element("p", { id: id("error"), className: "error", role: "alert", hidden: true });
    this.progress = element("progress", { id: id("progress"), max: 1, value: 0, "aria-labelledby": id("counter") });
    this.at = element("span", { id: id("batch-at"), className: "muted" });
    this.steps = element("span", { id: id("counter"), role: "status", text: "" });
    this.rate = element("span", { id: id("rate"), className: "muted" });
    this.time = element("span", { id: id("time"), className: "muted" });
    this.preview = element("img", { id: id("preview"), className: "picture", alt: "The picture so far", hidden: true });
    this.result = element("img", { id: id("result"), className: "picture", alt: "The picture drawn", hidden: true });
    this.strip = element("ul", { id: id("results"), className: "thumbs strip", "aria-label": "Pictures of this batch", hidden: true });
    this.seed = element("span", { id: id("seed-used") });
    this.reuse = element("button", { type: "button", id: id("reuse-seed"), text: "Use this seed" });
    this.download = element("a", { id: id("download"), className: "button", text: "Download PNG" });
    this.actions = element("div", { className: "row", hidden: true }, this.seed, this.reuse, this.download);
    this.parameters = element("dl", { id: id("parameters"), className: "parameters", hidden: true });
    this.more = element("div", { className: "row", hidden: true });
    this.row = element("div", { className: "progress-row", hidden: true },
      this.progress, element("span", { className: "counts" }, this.at, this.steps, this.rate, this.time));
    document.getElementById(id("run")).append(
      this.error, this.row, element("figure", {}, this.preview, this.result), this.strip,
      this.actions, this.parameters, this.more,
    );
    this.stopButton.addEventListener("click", () => this.controller && this.controller.abort());
    this.reuse.addEventListener("click", () => {
      const seed = this.current && this.current.parameters.seed;
      if (seed !== undefined && seed !== null) {
        seedInput.value = seed;
        seedInput.dispatchEvent(new Event("input", { bubbles: true }));
      }
    });
    this.current = null; // the picture shown: {url, base64, parameters, model, pictureId, took}
    this.restore();
  }

  // Buttons under the picture that hand it on: `use(current)` gets the picture shown.
  addAction(label, use) {
    const button = element("button", { type: "button", text: label });
    button.addEventListener("click", () => this.current && use(this.current));
    this.more.append(button);
  }

  fail(message) {
    showError(this.error, message);
  }

  get running() {
    return Boolean(this.controller);
  }

  // Draws `count` pictures of `body`, with seeds seed, seed+1, ... (a random first seed, then
  // the ones after it). Resolves when done, failed or stopped.
  async runBatch(body, count = 1, options = {}) {
    this.strip.replaceChildren();
    this.strip.hidden = true;
    let seed = body.seed !== undefined && body.seed >= 0 ? body.seed : undefined;
    for (let i = 0; i < count; i++) {
      this.at.textContent = count > 1 ? `picture ${i + 1} of ${count} · ` : "";
      const one = seed === undefined ? body : { ...body, seed: seed + i };
      const outcome = await this.run(one, options);
      if (outcome !== "done") return outcome;
      if (seed === undefined) seed = Number(this.current.parameters.seed) - i;
      if (count > 1) this.addToStrip(this.current);
    }
    return "done";
  }

  // Draws `body` (model, prompt and the rest); resolves to "done", "failed" or "stopped".
  async run(body, { previews = true, steps = 20 } = {}) {
    showError(this.error, "");
    this.controller = new AbortController();
    const signal = this.controller.signal;
    this.go.disabled = true;
    this.stopButton.disabled = false;
    this.row.hidden = false;
    this.progress.value = 0;
    this.progress.max = 1;
    this.steps.textContent = "starting…";
    this.rate.textContent = "";
    this.time.textContent = "";
    this.preview.hidden = true;
    // On a narrow screen the settings come first: bring the progress into view.
    if (window.matchMedia("(max-width: 760px)").matches) this.row.scrollIntoView({ block: "nearest" });
    const started = performance.now();
    const planned = body.steps || steps;
    if (previews) body = { ...body, preview_every: Math.max(1, Math.round(planned / PREVIEWS)) };
    let stopClock = () => {};
    this.pace = null;
    try {
      if (!(await loaded(body.model)) && !signal.aborted) stopClock = loadingClock(this.steps, body.model);
      for await (const line of lines("api/generate", body, signal)) {
        stopClock();
        if (line.total) this.count(line.completed, line.total);
        if (!line.done) {
          if (line.preview) {
            this.preview.src = dataUrl(line.preview);
            this.preview.hidden = false;
            this.showCurrent(false);
          }
          continue;
        }
        if (!line.image) {
          throw new ApiError(`${body.model} answered with text, not a picture: pick a drawing model`);
        }
        this.show({
          url: dataUrl(line.image), base64: line.image, parameters: line.parameters || {},
          model: body.model, pictureId: line.picture_id || null,
          took: (performance.now() - started) / 1000,
        });
        return "done";
      }
      throw new ApiError("the drawing ended without a picture; see the server's log");
    } catch (error) {
      stopClock();
      if (aborted(error)) {
        this.steps.textContent += " · stopped";
        // The picture before comes back; without one, the picture so far stays in view.
        if (this.current) this.preview.hidden = true;
        this.showCurrent(true);
        return "stopped";
      }
      this.fail(error.message);
      this.preview.hidden = true;
      this.showCurrent(true); // the picture before stays
      this.row.hidden = this.progress.value === 0; // refused before any step: no progress
      this.steps.textContent += " · failed";
      return "failed";
    } finally {
      stopClock();
      this.go.disabled = false;
      this.stopButton.disabled = true;
      this.controller = null;
    }
  }

  count(completed, total) {
    this.progress.max = total;
    this.progress.value = completed;
    this.steps.textContent = `${completed} / ${total} steps`;
    // The pace from the first step on (loading and the prompt's encoding are not steps).
    const now = performance.now();
    if (!this.pace) {
      this.pace = { from: completed, at: now };
      return;
    }
    const done = completed - this.pace.from;
    if (done <= 0) return;
    const perSecond = done / ((now - this.pace.at) / 1000);
    const left = (total - completed) / perSecond;
    this.rate.textContent = ` · ${perSecond >= 10 ? perSecond.toFixed(0) : perSecond.toFixed(1)} steps/s` +
      (completed < total ? ` · ${seconds(left)} left` : "");
  }

  // Shows (or hides, while a preview shows) the current picture and everything under it.
  showCurrent(visible) {
    const shown = visible && Boolean(this.current);
    this.result.hidden = !shown;
    this.actions.hidden = !shown;
    this.parameters.hidden = !shown || !this.parameters.childElementCount;
    this.more.hidden = !shown || this.more.childElementCount === 0;
  }

  show(picture, { keep = true } = {}) {
    this.current = picture;
    this.preview.hidden = true;
    this.result.src = picture.url;
    this.result.classList.remove("small");
    this.result.addEventListener("load", () => {
      this.result.classList.toggle("small", this.result.naturalWidth < 256);
    }, { once: true });
    if (picture.took) this.time.textContent = ` · ${seconds(picture.took)}`;
    if (this.rate.textContent.includes(" left")) this.rate.textContent = this.rate.textContent.replace(/ · [^·]* left$/, "");
    const parameters = picture.parameters;
    const seed = parameters.seed ?? null;
    this.seed.textContent = seed === null ? "" : `seed ${seed}`;
    this.reuse.hidden = seed === null;
    this.download.href = picture.url;
    this.download.setAttribute("download", fileName(picture.model, seed));
    parameterList(this.parameters, parameters, picture.took ? [["Took", seconds(picture.took)]] : []);
    this.showCurrent(true);
    if (keep && picture.pictureId) {
      saved.set(`last-${this.prefix}`, { id: picture.pictureId, model: picture.model, parameters });
    }
  }

  addToStrip(picture) {
    const button = element("button", { type: "button", className: "thumb-button",
      "aria-label": `Show the picture of seed ${picture.parameters.seed}` },
    element("img", { src: picture.url, alt: `seed ${picture.parameters.seed}` }));
    button.addEventListener("click", () => this.show(picture));
    this.strip.append(element("li", {}, button));
    this.strip.hidden = false;
  }

  // The last picture this panel showed, from the server's gallery (gone: nothing is shown).
  async restore() {
    const last = saved.get(`last-${this.prefix}`);
    if (!last || !last.id || !/^[\w-]+$/.test(last.id)) return;
    try {
      const url = await dataUrlOf(await blobOf(`api/gallery/${last.id}`));
      if (this.current || this.running) return; // a new drawing came first
      this.show({ url, base64: stripDataUrl(url), parameters: last.parameters || {}, model: last.model,
        pictureId: last.id }, { keep: false });
      this.row.hidden = true;
    } catch {
      saved.set(`last-${this.prefix}`, null); // deleted from the gallery, or no server: forgotten
    }
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
