// limner's web page: the tabs, the model list every panel picks from, and each panel's setup.
// Plain modules, no build step and nothing from other hosts: it works offline, as served.

import { call, showError } from "./api.js";
import { refresh } from "./catalog.js";
import { setupChat } from "./chat.js";
import { setupDraw, setupRestyle } from "./draw.js";
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
}

async function start() {
  setupTabs();
  setupChat();
  const toInpaint = setupInpaint();
  const toRestyle = setupRestyle();
  setupDraw((where, url) => {
    (where === "inpaint" ? toInpaint : toRestyle)(url);
    show(where);
  });
  setupTrain();
  panels.models = setupModels();
  show(location.hash.slice(1) || "chat");
  $("not-started").hidden = true;
  try {
    $("server-version").textContent = `version ${(await call("GET", "api/version")).version}`;
    await refresh();
  } catch (error) {
    showError($("server-error"), `cannot list the models: ${error.message}`);
  } finally {
    document.body.dataset.ready = "true"; // set up and listed (or said why not)
  }
}

start();
