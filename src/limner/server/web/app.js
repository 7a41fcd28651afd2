// limner's web page: the tabs, the model list every panel picks from, and each panel's setup.
// Plain modules, no build step and nothing from other hosts: it works offline, as served.

import { call, showError } from "./api.js";
import { refresh } from "./catalog.js";
import { setupChat } from "./chat.js";
import { setupDraw, setupRestyle } from "./draw.js";
import { setupGallery } from "./gallery.js";
import { setupInpaint } from "./inpaint.js";
import { setupModels } from "./models.js";
import { setupTrain } from "./train.js";

const $ = (id) => document.getElementById(id);
const tabs = [...document.querySelectorAll('[role="tab"]')];
const panels = {}; // name -> {shown(), hidden()} for panels that care

function show(name, focus = false) {
  const tab = $(`tab-${name}`) || tabs[0];
  for (const other of tabs) {
    const selected = other === tab;
    const panel = $(other.getAttribute("aria-controls"));
    const was = !panel.hidden;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    panel.hidden = !selected;
    const hooks = panels[other.id.slice(4)];
    if (hooks && selected && !was) hooks.shown();
    if (hooks && !selected && was) hooks.hidden();
  }
  if (focus) tab.focus();
  tab.scrollIntoView({ block: "nearest", inline: "nearest" }); // the tab bar scrolls on a phone
  if (location.hash !== `#${tab.id.slice(4)}`) history.replaceState(null, "", `#${tab.id.slice(4)}`);
}

function setupTabs() {
  for (const tab of tabs) {
    tab.addEventListener("click", () => show(tab.id.slice(4)));
    tab.addEventListener("keydown", (event) => {
      // The ARIA tabs pattern: arrows move between tabs, Home and End to the ends.
      const at = tabs.indexOf(tab);
      const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      show(tabs[(to + tabs.length) % tabs.length].id.slice(4), true);
    });
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  // On a narrow screen the tab bar scrolls sideways: its edge fades where more tabs are hidden.
  const bar = $("tabs");
  const edges = () => {
    bar.classList.toggle("more-left", bar.scrollLeft > 1);
    bar.classList.toggle("more-right", bar.scrollLeft + bar.clientWidth < bar.scrollWidth - 1);
  };
  bar.addEventListener("scroll", edges, { passive: true });
  window.addEventListener("resize", edges);
  edges();
}

async function start() {
  setupTabs();
  const chats = setupChat();
  // A picture handed on from a result or the gallery: {url, base64, parameters, model}.
  const receivers = {};
  const handOn = (where, picture) => {
    receivers[where](picture);
    show(where === "img2img" ? "draw" : where);
  };
  receivers.inpaint = setupInpaint(handOn);
  receivers.restyle = setupRestyle(handOn);
  const draw = setupDraw(handOn);
  receivers.draw = (picture) => draw.fill(picture.parameters || {}, picture.model);
  receivers.img2img = (picture) => draw.img2img(picture);
  panels.gallery = setupGallery(handOn);
  setupTrain();
  panels.models = setupModels();
  show(location.hash.slice(1) || "chat");
  $("not-started").hidden = true;
  try {
    $("server-version").textContent = `version ${(await call("GET", "api/version")).version}`;
    await refresh();
    await chats;
  } catch (error) {
    showError($("server-error"), `cannot list the models: ${error.message}`);
  } finally {
    document.body.dataset.ready = "true"; // set up and listed (or said why not)
  }
}

start();
