// PNG info, read in the browser: a PNG's text chunks (tEXt, iTXt, zTXt), and the drawing
// parameters they carry: limner's `limner` JSON, else Automatic1111's `parameters` text (what
// A1111, ComfyUI exports and limner itself write). Nothing is sent anywhere.

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

async function inflate(bytes) {
  // zTXt and compressed iTXt hold zlib data: the Compression Streams API's "deflate".
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// The text chunks of a PNG file as {keyword: text}; null when the bytes are not a PNG.
export async function pngTexts(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length < 8 || SIGNATURE.some((value, i) => bytes[i] !== value)) return null;
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const texts = {};
  let at = 8;
  while (at + 12 <= bytes.length) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, Math.min(at + 8 + length, bytes.length));
    at += 12 + length;
    if (type === "IEND") break;
    if (!["tEXt", "zTXt", "iTXt"].includes(type)) continue;
    const zero = data.indexOf(0);
    if (zero < 1) continue;
    const key = latin1.decode(data.subarray(0, zero));
    try {
      if (type === "tEXt") {
        texts[key] = latin1.decode(data.subarray(zero + 1));
      } else if (type === "zTXt") {
        texts[key] = latin1.decode(await inflate(data.subarray(zero + 2)));
      } else {
        const compressed = data[zero + 1] === 1;
        const language = data.indexOf(0, zero + 3);
        const translated = data.indexOf(0, language + 1);
        const text = data.subarray(translated + 1);
        texts[key] = utf8.decode(compressed ? await inflate(text) : text);
      }
    } catch {
      // a damaged chunk: the others are still read
    }
  }
  return texts;
}

// Automatic1111's parameters text as {Prompt, "Negative prompt", Steps, Sampler, ...}: the
// prompt lines, the negative prompt, and the last line's `Key: value` pairs.
export function parseInfotext(text) {
  const lines = text.trim().split("\n");
  if (!lines[0]) return {};
  const settings = /(^|, )Steps: /.test(lines[lines.length - 1]) ? lines.pop() : "";
  const negative = lines.findIndex((line) => line.startsWith("Negative prompt:"));
  const cut = negative >= 0 ? negative : lines.length;
  const parsed = { Prompt: lines.slice(0, cut).join("\n") };
  if (negative >= 0) {
    parsed["Negative prompt"] = lines.slice(cut).join("\n").replace(/^Negative prompt:/, "").trim();
  }
  for (const [, key, value] of settings.matchAll(/\s*([\w /-]+):\s*("(?:\\.|[^"])*"|[^,]*)(?:,|$)/g)) {
    let clean = value.trim();
    if (clean.startsWith('"')) {
      try {
        clean = JSON.parse(clean);
      } catch {
        // left as written
      }
    }
    parsed[key.trim()] = clean;
  }
  return parsed;
}

const NUMBER = (value) => (value === undefined || value === "" || Number.isNaN(Number(value)) ? undefined : Number(value));

// A1111's sampler as the API's scheduler name ("DPM++ 2M" with "Schedule type: Karras" is
// "dpm++ 2m karras").
function sampler(a1111) {
  if (!a1111.Sampler) return undefined;
  const name = a1111.Sampler.toLowerCase();
  const karras = (a1111["Schedule type"] || "").toLowerCase() === "karras" && !name.endsWith("karras");
  return karras ? `${name} karras` : name;
}

// A picture's drawing parameters in the API's names (prompt, negative_prompt, steps, seed,
// guidance_scale, scheduler, width, height, strength, model), from its text chunks; null if
// it carries none.
export function drawingParameters(texts) {
  if (!texts) return null;
  if (texts.limner) {
    try {
      const found = JSON.parse(texts.limner);
      if (found && typeof found === "object" && !Array.isArray(found)) return found;
    } catch {
      // not limner's JSON: A1111's text below
    }
  }
  if (!texts.parameters) return null;
  const a1111 = parseInfotext(texts.parameters);
  const size = /^(\d+)x(\d+)$/.exec(a1111.Size || "");
  const parameters = {
    prompt: a1111.Prompt || "",
    negative_prompt: a1111["Negative prompt"],
    steps: NUMBER(a1111.Steps),
    seed: NUMBER(a1111.Seed),
    guidance_scale: NUMBER(a1111["CFG scale"]),
    scheduler: sampler(a1111),
    width: size ? Number(size[1]) : undefined,
    height: size ? Number(size[2]) : undefined,
    strength: NUMBER(a1111["Denoising strength"]),
    model: a1111.Model,
  };
  return Object.fromEntries(Object.entries(parameters).filter(([, v]) => v !== undefined && v !== ""));
}

// The drawing parameters of a picture file (PNG); null when it carries none.
export async function parametersOf(file) {
  return drawingParameters(await pngTexts(await file.arrayBuffer()));
}
