// The Train panel: a folder of pictures (and same-name .txt captions) becomes a LoRA of a
// drawing model. Every file is uploaded as a blob (POST /api/blobs/sha256:<hex>, skipped when
// the server has it), then POST /api/create with a `train` section streams the training: the
// loss of every step is drawn as a curve, the sample pictures are shown as they come.

import { aborted, call, element, exists, lines, seconds, showError } from "./api.js";
import { draws, picker, refresh } from "./catalog.js";
import { sha256 } from "./sha256.js";

const $ = (id) => document.getElementById(id);
const PICTURE = /\.(png|jpe?g|webp)$/i;
const USED = /(\.(png|jpe?g|webp|txt|zip)|(^|\/)metadata\.jsonl)$/i; // what the server reads
const SVG = "http://www.w3.org/2000/svg";

// The dataset's files by their name inside the chosen folder; hidden files and others left out.
function dataset(files) {
  const chosen = new Map();
  let ignored = 0;
  for (const file of files) {
    const parts = (file.webkitRelativePath || file.name).split("/");
    const name = parts.length > 1 ? parts.slice(1).join("/") : parts[0];
    const hidden = name.split("/").some((part) => part.startsWith(".") || part === "__MACOSX");
    if (hidden || !USED.test(name)) ignored += 1;
    else chosen.set(name, file);
  }
  return { chosen, ignored };
}

export function setupTrain() {
  picker($("train-base"), draws, "no drawing model: pull one in Models", "train");
  let files = new Map();
  let controller = null;
  const error = $("train-error");
  const status = $("train-status");

  $("train-folder").addEventListener("change", (event) => {
    const { chosen, ignored } = dataset(event.target.files);
    files = chosen;
    const names = [...chosen.keys()];
    const pictures = names.filter((n) => PICTURE.test(n)).length;
    const captions = names.filter((n) => n.toLowerCase().endsWith(".txt")).length;
    $("train-summary").textContent = `${pictures} pictures, ${captions} captions` +
      (ignored ? `; ${ignored} other files left out` : "");
  });

  function log(text) {
    $("train-log").append(element("li", { text }));
  }

  // 1. Upload: the digest of every file, and only the files the server does not have yet.
  async function upload(signal) {
    const digests = {};
    let done = 0;
    $("train-progress").max = files.size;
    for (const [name, file] of files) {
      if (signal.aborted) throw new DOMException("stopped", "AbortError");
      status.textContent = `uploading ${done + 1} of ${files.size}: ${name}`;
      const buffer = await file.arrayBuffer();
      const digest = `sha256:${await sha256(buffer)}`;
      if (!(await exists(`api/blobs/${digest}`))) {
        await call("POST", `api/blobs/${digest}`, buffer, signal);
      }
      digests[name] = digest;
      $("train-progress").value = ++done;
    }
    log(`uploaded ${files.size} files`);
    return digests;
  }

  // 2. Train: the create stream, shown line by line.
  async function train(body, signal) {
    const losses = [];
    let total = 0;
    let drawing = false; // the curve is redrawn at most once a frame, however fast steps come
    const redraw = () => {
      drawing = false;
      chart(losses, total);
    };
    for await (const line of lines("api/create", body, signal)) {
      if (line.status === "training") {
        losses.push([line.step, line.loss]);
        total = line.total;
        $("train-progress").max = line.total;
        $("train-progress").value = line.completed;
        status.textContent = `step ${line.step} / ${line.total} · loss ${line.loss.toFixed(4)}` +
          (line.eta ? ` · ${seconds(line.eta)} left` : "");
        if (!drawing) {
          drawing = true;
          requestAnimationFrame(redraw);
        }
      } else if (line.status === "validation") {
        const src = `data:image/png;base64,${line.image}`;
        $("train-validations").append(element("li", {},
          element("figure", {}, element("img", { src, alt: `Sample at step ${line.step}` }),
            element("figcaption", { text: `step ${line.step}` }))));
      } else if (line.status === "captioning") {
        status.textContent = `captioning ${line.completed} / ${line.total}`;
        log(`${line.file}: ${line.caption}`);
      } else {
        status.textContent = line.status;
        log(line.status);
      }
    }
    if (losses.length) chart(losses, total);
  }

  $("train-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (controller) return;
    const model = $("train-name").value.trim();
    const base = $("train-base").value;
    const rate = Number($("train-lr").value);
    const problem = !files.size ? "choose a folder of pictures"
      : !base ? "pick a base drawing model (pull one in Models)"
      : !model ? "name the new model"
      : !(rate > 0) ? "the learning rate must be a number above 0, like 1e-4"
      : "";
    showError(error, problem);
    if (problem) return;
    const settings = {
      steps: Number($("train-steps").value) || undefined,
      rank: Number($("train-rank").value) || undefined,
      learning_rate: rate,
      resolution: Number($("train-resolution").value) || undefined,
      validation_every: Number($("train-validation-every").value) || undefined,
      validation_prompt: $("train-validation-prompt").value.trim() || undefined,
      instance_prompt: $("train-instance").value.trim() || undefined,
    };
    controller = new AbortController();
    $("train-go").disabled = true;
    $("train-stop").disabled = false;
    $("train-log").replaceChildren();
    $("train-validations").replaceChildren();
    $("train-loss").replaceChildren();
    const started = performance.now();
    try {
      const digests = await upload(controller.signal);
      await train({ model, from: base, train: { files: digests, ...settings } }, controller.signal);
      status.textContent = `${model} is ready (${seconds((performance.now() - started) / 1000)}): ` +
        "draw with it in Draw";
      await refresh();
    } catch (failure) {
      if (aborted(failure)) {
        status.textContent = "stopped; the last checkpoint, if one was written, became the model";
        refresh().catch(() => {});
      } else {
        showError(error, failure.message);
      }
    } finally {
      controller = null;
      $("train-go").disabled = false;
      $("train-stop").disabled = true;
    }
  });
  $("train-stop").addEventListener("click", () => controller && controller.abort());
}

// The loss curve as SVG: steps across (0 to `total`), loss up (from the lowest to the highest).
function chart(losses, total) {
  const svg = $("train-loss");
  const [width, height, left, bottom] = [600, 220, 56, 24];
  const values = losses.map(([, loss]) => loss);
  const low = Math.min(...values);
  const high = Math.max(...values);
  const span = high - low || 1;
  const x = (step) => left + ((width - left - 8) * step) / Math.max(total, 1);
  const y = (loss) => 8 + ((height - bottom - 16) * (high - loss)) / span;
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("class", "loss");
  line.setAttribute("points", losses.map(([step, loss]) => `${x(step).toFixed(1)},${y(loss).toFixed(1)}`).join(" "));
  const label = (text, px, py, anchor) => {
    const node = document.createElementNS(SVG, "text");
    node.setAttribute("x", px);
    node.setAttribute("y", py);
    node.setAttribute("text-anchor", anchor);
    node.textContent = text;
    return node;
  };
  const axes = document.createElementNS(SVG, "path");
  axes.setAttribute("class", "axes");
  axes.setAttribute("d", `M${left},8 V${height - bottom} H${width - 8}`);
  svg.replaceChildren(
    axes, line,
    label(high.toPrecision(3), left - 6, 16, "end"),
    label(low.toPrecision(3), left - 6, height - bottom, "end"),
    label("step 0", left, height - 6, "start"),
    label(`${total}`, width - 8, height - 6, "end"),
  );
}
