// Talking to limner's HTTP API: one JSON call, one NDJSON stream reader, and pictures as the
// raw base64 strings the API takes. Every error becomes an ApiError whose message is what the
// server said ({"error": "..."}, as a status or as a line in a stream), or what went wrong.

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

// Relative to the page, so the page also works behind a proxy that serves it under a path.
function url(path) {
  return new URL(path, document.baseURI);
}

async function failure(response) {
  const text = await response.text();
  let message = "";
  try {
    message = JSON.parse(text).error || "";
  } catch {
    // not JSON: described below
  }
  if (!message && response.status === 403 && !text) {
    // The origin check answers a browser it does not allow with an empty 403.
    message = `the server refused this page's requests (403): ${location.origin} is not an ` +
      `allowed browser origin; start limner with LIMNER_ORIGINS=${location.origin}`;
  } else if (!message) {
    message = `${response.status} ${response.statusText}${text ? `: ${text.slice(0, 300)}` : ""}`;
  }
  return new ApiError(message, response.status);
}

// A server started with LIMNER_API_KEY wants its token: asked for once, kept for the tab.
const TOKEN = "limner-token";

function withToken(headers) {
  const token = sessionStorage.getItem(TOKEN);
  return token ? { ...headers, Authorization: `Bearer ${token}` } : headers;
}

async function send(method, path, body, signal, headers = {}, asked = false) {
  const used = sessionStorage.getItem(TOKEN);
  const init = { method, signal, headers: withToken(headers) };
  if (body instanceof ArrayBuffer || body instanceof Blob) {
    init.body = body;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = withToken({ "Content-Type": "application/json", ...headers });
  }
  let response;
  try {
    response = await fetch(url(path), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(`cannot reach the server: ${error.message}`);
  }
  if (response.status === 401 && !asked) {
    // Requests sent together all come back 401: only the first asks, the others retry.
    const known = sessionStorage.getItem(TOKEN);
    const token = known && known !== used ? known
      : window.prompt("This limner server needs its API token (LIMNER_API_KEY):");
    if (token) {
      sessionStorage.setItem(TOKEN, token.trim());
      return send(method, path, body, signal, headers, true);
    }
  }
  return response;
}

// Whether the page holds an API token (then pictures are fetched with it, not by <img src>).
export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN));
}

// A file the API answers (a gallery picture) as a Blob, with the token when there is one.
export async function blobOf(path, signal) {
  const response = await send("GET", path, undefined, signal);
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// One request with a JSON (or empty) answer.
export async function call(method, path, body, signal) {
  const response = await send(method, path, body, signal);
  if (!response.ok) throw await failure(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// Whether a blob is stored: HEAD /api/blobs/sha256:<hex> is 200 or 404.
export async function exists(path) {
  const response = await send("HEAD", path);
  if (response.status === 404) return false;
  if (!response.ok) throw await failure(response);
  return true;
}

function parse(line) {
  let item;
  try {
    item = JSON.parse(line);
  } catch {
    throw new ApiError(`the server sent a line that is not JSON: ${line.slice(0, 200)}`);
  }
  if (item.error) throw new ApiError(item.error);
  return item;
}

// The objects of an NDJSON stream (POST `body` to `path`), one per line as they arrive. An
// `{"error"}` line or status throws; aborting `signal` throws an AbortError.
export async function* lines(path, body, signal) {
  const response = await send("POST", path, { ...body, stream: true }, signal);
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let from = buffer.length; // a picture's line comes in many pieces: scan only the new one
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n", from)) >= 0) {
        const line = buffer.slice(0, end).trim();
        buffer = buffer.slice(end + 1);
        from = 0;
        if (line) yield parse(line);
      }
    }
    if (buffer.trim()) yield parse(buffer.trim());
  } finally {
    reader.cancel().catch(() => {}); // a reader that stops early closes the connection
  }
}

export function aborted(error) {
  return error && error.name === "AbortError";
}

// --- Pictures --------------------------------------------------------------------------------

const ACCEPTED = ["image/png", "image/jpeg", "image/webp"]; // what the API decodes

function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new ApiError(`cannot read ${blob.name || "the picture"}`));
    reader.readAsDataURL(blob);
  });
}

export async function dataUrlOf(blob) {
  return readAsDataUrl(blob);
}

export function dataUrl(base64, type = "image/png") {
  return `data:${type};base64,${base64}`;
}

export function stripDataUrl(url) {
  return url.slice(url.indexOf(",") + 1);
}

// A picture file as {base64, type, url}: PNG, JPEG and WebP as they are; any other picture the
// browser can open (GIF, BMP, AVIF, ...) converted to PNG first.
export async function pictureOf(file) {
  if (ACCEPTED.includes(file.type)) {
    const url = await readAsDataUrl(file);
    return { base64: stripDataUrl(url), type: file.type, url, name: file.name };
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch {
    throw new ApiError(`${file.name || "that file"} is not a picture this browser can open`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  const url = canvas.toDataURL("image/png");
  return { base64: stripDataUrl(url), type: "image/png", url, name: file.name };
}

// --- Small formatting helpers shared by the panels ---------------------------------------------

export function bytes(count) {
  if (!count) return "0 B";
  const units = ["B", "KB", "MB", "GB", "TB"];
  const power = Math.min(Math.floor(Math.log10(count) / 3), units.length - 1);
  const value = count / 1000 ** power;
  return `${value >= 100 || power === 0 ? value.toFixed(0) : value.toFixed(1)} ${units[power]}`;
}

export function seconds(value) {
  if (value < 60) return `${value.toFixed(1)} s`;
  const minutes = Math.floor(value / 60);
  return `${minutes} min ${Math.round(value % 60)} s`;
}

// <el> with attributes and children, for the few elements the page builds.
export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

// Shows `message` in an error element (role="alert"), or hides it when empty.
export function showError(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
}

// Whether `model` is loaded now (GET /api/ps); true when that cannot be told, so that a page
// whose /api/ps fails says nothing rather than a wrong "loading".
export async function loaded(model) {
  try {
    const running = (await call("GET", "api/ps")).models;
    return running.some((m) => m.name === model || m.model === model);
  } catch {
    return true;
  }
}

// "loading MODEL… 3 s" in `node` once a second from now, until the returned stop() is called.
export function loadingClock(node, model) {
  const started = performance.now();
  const tick = () => {
    node.textContent = `loading ${model}… ${Math.floor((performance.now() - started) / 1000)} s`;
  };
  tick();
  const timer = setInterval(tick, 1000);
  return () => clearInterval(timer);
}

// --- What the page keeps in this browser (localStorage), never failing the page ----------------

export const saved = {
  get(key, fallback = null) {
    try {
      const text = localStorage.getItem(`limner-${key}`);
      return text === null ? fallback : JSON.parse(text);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      if (value === null || value === undefined) localStorage.removeItem(`limner-${key}`);
      else localStorage.setItem(`limner-${key}`, JSON.stringify(value));
    } catch {
      // full or refused (private mode): the page works, it only forgets
    }
  },
};

// Keeps the values of a form's fields (text, numbers, selects, checkboxes, radios; never files
// or the model pickers, which keep their own) across reloads, under `key`. Returns save(), for
// code that sets fields itself.
export function rememberFields(form, key) {
  const fields = () => [...form.elements].filter((field) => field.id && field.type !== "file" &&
    !field.classList.contains("model-picker") && field.tagName !== "BUTTON");
  const values = saved.get(`form-${key}`, {});
  for (const field of fields()) {
    if (!(field.id in values)) continue;
    if (field.type === "checkbox" || field.type === "radio") field.checked = values[field.id];
    else field.value = values[field.id];
  }
  const save = () => {
    const now = {};
    for (const field of fields()) {
      now[field.id] = field.type === "checkbox" || field.type === "radio" ? field.checked : field.value;
    }
    saved.set(`form-${key}`, now);
  };
  form.addEventListener("input", save);
  form.addEventListener("change", save);
  return save;
}

// Ctrl+Enter (Cmd+Enter on a Mac) in a form submits it, from any of its fields.
export function submitOnCtrlEnter(form) {
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
}
