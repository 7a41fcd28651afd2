// The Gallery panel: every picture the server drew (GET /api/gallery, newest first, a page at
// a time), as a grid. A picture chosen shows large with every parameter it was drawn with, a
// download link, Delete (DELETE /api/gallery/<id>), and buttons that reuse its parameters in
// Draw or send it, with its model, to img2img, Inpaint or Restyle.

import { blobOf, call, dataUrlOf, element, hasToken, showError, stripDataUrl } from "./api.js";
import { fileName, parameterList } from "./run.js";

const $ = (id) => document.getElementById(id);
const PAGE = 48;

function when(text) {
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString();
}

export function setupGallery(handOn) {
  const grid = $("gallery-grid");
  const error = $("gallery-error");
  let pictures = []; // as listed: {id, created_at, parameters, bytes, url}
  let next = null;
  let chosen = null; // {listed, url (data: URL), base64}
  let objectUrls = []; // thumbnails fetched with a token, let go of when the grid is redrawn

  // A tile's thumbnail address for <img>: its URL, or (when the server wants a token, which <img>
  // cannot send) a blob: URL of the picture fetched with it.
  async function source(listed) {
    const path = `api/gallery/${listed.id}/thumbnail`;
    if (!hasToken()) return new URL(path, document.baseURI).href;
    const url = URL.createObjectURL(await blobOf(path));
    objectUrls.push(url);
    return url;
  }

  function tile(listed) {
    const parameters = listed.parameters || {};
    const img = element("img", { alt: parameters.prompt || "a drawn picture", loading: "lazy" });
    source(listed).then((url) => { img.src = url; }).catch(() => img.classList.add("missing"));
    const open = element("button", { type: "button", className: "tile", "data-id": listed.id,
      "aria-label": `Picture: ${parameters.prompt || listed.id}` }, img);
    open.addEventListener("click", () => show(listed));
    return element("li", {}, open);
  }

  function showGrid() {
    grid.replaceChildren(...pictures.map(tile));
    $("gallery-empty").hidden = pictures.length > 0;
    $("gallery-more").hidden = !next;
    $("gallery-count").textContent = pictures.length ? `${pictures.length}${next ? "+" : ""} pictures` : "";
    for (const button of grid.querySelectorAll(".tile")) {
      button.setAttribute("aria-pressed", String(Boolean(chosen && chosen.listed.id === button.dataset.id)));
    }
  }

  async function load(more = false) {
    showError(error, "");
    try {
      const query = `api/gallery?limit=${PAGE}${more && next ? `&before=${encodeURIComponent(next)}` : ""}`;
      const page = await call("GET", query);
      if (!more) {
        for (const url of objectUrls) URL.revokeObjectURL(url);
        objectUrls = [];
        pictures = [];
      }
      pictures.push(...page.pictures);
      next = page.next || null;
      if (chosen && !pictures.some((p) => p.id === chosen.listed.id)) hide();
      showGrid();
    } catch (problem) {
      showError(error, `cannot list the gallery: ${problem.message}`);
    }
  }

  function hide() {
    chosen = null;
    $("gallery-detail").hidden = true;
  }

  async function show(listed) {
    showError(error, "");
    let url;
    try {
      url = await dataUrlOf(await blobOf(`api/gallery/${listed.id}`));
    } catch (problem) {
      showError(error, problem.message);
      return;
    }
    chosen = { listed, url, base64: stripDataUrl(url) };
    const parameters = listed.parameters || {};
    $("gallery-picture").src = url;
    $("gallery-picture").alt = parameters.prompt || "the picture";
    parameterList($("gallery-parameters"), parameters, [["Drawn", when(listed.created_at)], ["Id", listed.id]]);
    const download = $("gallery-download");
    download.href = url;
    download.setAttribute("download", fileName(parameters.model, parameters.seed));
    $("gallery-detail").hidden = false;
    showGrid();
    $("gallery-detail").scrollIntoView({ block: "nearest" });
  }

  const handed = () => ({ url: chosen.url, base64: chosen.base64, parameters: chosen.listed.parameters || {},
    model: (chosen.listed.parameters || {}).model, pictureId: chosen.listed.id });
  for (const [id, where] of [["gallery-reuse", "draw"], ["gallery-img2img", "img2img"], ["gallery-inpaint", "inpaint"], ["gallery-restyle", "restyle"]]) {
    $(id).addEventListener("click", () => chosen && handOn(where, handed()));
  }
  $("gallery-delete").addEventListener("click", async () => {
    if (!chosen) return;
    const { id } = chosen.listed;
    if (!window.confirm("Delete this picture from the gallery? It is kept nowhere else.")) return;
    try {
      await call("DELETE", `api/gallery/${id}`);
    } catch (problem) {
      showError(error, problem.message);
      return;
    }
    pictures = pictures.filter((p) => p.id !== id);
    hide();
    showGrid();
  });
  $("gallery-close").addEventListener("click", hide);
  $("gallery-refresh").addEventListener("click", () => load());
  $("gallery-more").addEventListener("click", () => load(true));

  return { shown: () => load(), hidden: () => {} };
}
