// The Chat panel: conversations with a chat model on POST /api/chat, pictures attached from a
// file picker, dropped on the message box or pasted, the answer streamed in as it comes and
// shown as Markdown. The whole conversation is sent with every question, so follow-ups work
// (and the server reuses what it already evaluated). Chats are kept in this browser
// (chats.js): listed beside the conversation, renamed, deleted, there again after a reload.
// Answers can be copied and regenerated, questions edited and sent again.

import { aborted, element, lines, loaded, loadingClock, pictureOf, seconds, showError } from "./api.js";
import { choose, draws, picker } from "./catalog.js";
import { allChats, deleteChat, kept, newId, putChat } from "./chats.js";
import { copyText } from "./copy.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);

function blank() {
  return { id: newId(), title: "", model: "", created: Date.now(), updated: Date.now(), messages: [] };
}

function titleOf(chat) {
  if (chat.title) return chat.title;
  const first = chat.messages.find((m) => m.role === "user");
  if (!first) return "New chat";
  const text = first.content.replace(/\s+/g, " ").trim();
  if (!text) return "A picture";
  return text.length > 48 ? `${text.slice(0, 47)}…` : text;
}

export function setupChat() {
  const select = $("chat-model");
  picker(select, (model) => !draws(model), "no chat model: pull one in Models", "chat");
  const log = $("chat-log");
  const input = $("chat-input");
  const error = $("chat-error");
  let chats = []; // kept chats, newest first
  let current = blank(); // the chat shown; kept once it has a message
  let attached = []; // pictures for the next message: {base64, type, url, name}
  let controller = null;

  // --- The list of chats ------------------------------------------------------------------------

  function showList() {
    $("chat-list").replaceChildren(...chats.map((chat) => {
      const title = titleOf(chat);
      const open = element("button", { type: "button", className: "chat-open", text: title,
        "aria-current": chat.id === current.id ? "true" : false, title });
      open.addEventListener("click", () => select_(chat.id));
      const rename = element("button", { type: "button", className: "icon", text: "✎", "aria-label": `Rename ${title}` });
      rename.addEventListener("click", () => renameChat(chat));
      const remove = element("button", { type: "button", className: "icon danger", text: "×", "aria-label": `Delete ${title}` });
      remove.addEventListener("click", () => removeChat(chat));
      return element("li", { "data-chat": chat.id }, open, rename, remove);
    }));
  }

  async function loadList() {
    try {
      chats = await allChats();
    } catch (problem) {
      showError(error, `cannot read the chats kept in this browser: ${problem.message}`);
    }
    showList();
    if (!(await kept())) $("chat-kept").textContent = "This browser does not keep chats: they go when the page closes.";
  }

  async function save(chat) {
    chat.updated = Date.now();
    if (!chats.includes(chat)) chats.unshift(chat);
    chats.sort((a, b) => b.updated - a.updated);
    showList();
    try {
      await putChat(chat);
    } catch (problem) {
      showError(error, `this chat could not be kept in the browser: ${problem.message}`);
    }
  }

  function select_(id) {
    if (controller) controller.abort();
    current = chats.find((chat) => chat.id === id) || blank();
    if (current.model) choose(select, current.model);
    showError(error, "");
    showLog();
    showList();
  }

  function renameChat(chat) {
    const title = window.prompt("Name this chat:", titleOf(chat));
    if (title === null) return;
    chat.title = title.trim();
    save(chat);
  }

  async function removeChat(chat) {
    if (!window.confirm(`Delete the chat "${titleOf(chat)}"? It is kept nowhere else.`)) return;
    if (chat === current && controller) controller.abort();
    chats = chats.filter((other) => other !== chat);
    try {
      await deleteChat(chat.id);
    } catch (problem) {
      showError(error, problem.message);
    }
    if (chat === current) {
      current = blank();
      showLog();
    }
    showList();
  }

  // --- The conversation -------------------------------------------------------------------------

  function showAttached() {
    $("chat-attachments").replaceChildren(...attached.map((picture, index) => {
      const remove = element("button", { type: "button", className: "remove", "aria-label": `Remove ${picture.name}`, text: "×" });
      remove.addEventListener("click", () => {
        attached.splice(index, 1);
        showAttached();
      });
      return element("li", {}, element("img", { src: picture.url, alt: picture.name }), remove);
    }));
  }

  // One message's bubble: who, pictures, text (Markdown for answers), the line under it.
  function bubble(message, index) {
    const assistant = message.role === "assistant";
    const body = element("div", { className: "text" });
    if (assistant) body.append(render(message.content));
    else body.textContent = message.content;
    const pictures = (message.images || []).map((p, i) =>
      element("img", { src: `data:${p.type || "image/png"};base64,${p.base64}`, alt: `picture ${i + 1}` }));
    const item = element("li", { className: `message ${message.role}`, "data-index": index },
      element("div", { className: "who", text: assistant ? message.model || "answer" : "You" }),
      ...(pictures.length ? [element("div", { className: "thumbs" }, ...pictures)] : []),
      body);
    if (message.meta) item.append(element("div", { className: "meta", text: message.meta }));
    if (message.failed) item.classList.add("failed");
    item.append(actions(message, index));
    return { item, body };
  }

  function button(label, name, use) {
    const node = element("button", { type: "button", className: "small", text: label, "aria-label": name });
    node.addEventListener("click", use);
    return node;
  }

  function actions(message, index) {
    const row = element("div", { className: "actions" });
    const last = index === current.messages.length - 1;
    if (message.role === "assistant") {
      row.append(button("Copy", "Copy this answer", (event) => copyText(message.content, event.target)));
      if (last) row.append(button("Regenerate", "Regenerate this answer", () => regenerate()));
    } else {
      row.append(button("Edit", "Edit and send again", () => edit(index)));
      if (last) row.append(button("Retry", "Send this again", () => answer()));
    }
    return row;
  }

  function showLog() {
    log.replaceChildren(...current.messages.map((message, index) => bubble(message, index).item));
    const end = log.lastElementChild;
    if (end) end.scrollIntoView({ block: "end" });
  }

  // Edit a question in place: Send cuts the conversation there and asks again.
  function edit(index) {
    if (controller) return;
    const message = current.messages[index];
    const item = log.querySelector(`[data-index="${index}"]`);
    const area = element("textarea", { className: "edit", rows: 3, "aria-label": "Edit the message" });
    area.value = message.content;
    const sendEdit = button("Send", "Send the edited message", () => {
      current.messages = current.messages.slice(0, index);
      current.messages.push({ ...message, content: area.value.trim() });
      showLog();
      answer();
    });
    sendEdit.classList.add("primary");
    const cancel = button("Cancel", "Cancel editing", () => showLog());
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendEdit.click();
      } else if (event.key === "Escape") {
        cancel.click();
      }
    });
    item.querySelector(".text").replaceWith(area);
    item.querySelector(".actions").replaceChildren(sendEdit, cancel);
    area.focus();
  }

  function regenerate() {
    if (controller) return;
    if (current.messages.length && current.messages[current.messages.length - 1].role === "assistant") {
      current.messages.pop();
    }
    showLog();
    answer();
  }

  async function send() {
    const text = input.value.trim();
    if (!select.value) return showError(error, "pick a chat model first (pull one in Models)");
    if (!text && !attached.length) return showError(error, "write a message or attach a picture");
    const pictures = attached;
    current.messages.push({ role: "user", content: text, images: pictures.map((p) => ({ base64: p.base64, type: p.type })) });
    input.value = "";
    attached = [];
    showAttached();
    showLog();
    const answered = await answer();
    if (answered === "refused") {
      // Not answered at all: the question goes back in the box, to send again.
      current.messages.pop();
      showLog();
      input.value = text;
      attached = pictures;
      showAttached();
    }
  }

  // Answers the conversation as it stands (it ends with a question). Resolves to "answered",
  // "stopped" or "refused" (nothing came back).
  async function answer() {
    const model = select.value;
    if (!model) {
      showError(error, "pick a chat model first (pull one in Models)");
      return "refused";
    }
    showError(error, "");
    const chat = current;
    chat.model = model;
    const history = chat.messages.map((m) => (m.role === "user"
      ? { role: "user", content: m.content, images: (m.images || []).map((p) => p.base64) }
      : { role: m.role, content: m.content }));
    const reply = { role: "assistant", content: "", model };
    const theirs = bubble(reply, chat.messages.length);
    theirs.item.classList.add("pending");
    theirs.item.querySelector(".actions").hidden = true;
    log.append(theirs.item);
    theirs.item.scrollIntoView({ block: "end" });
    controller = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;

    // A model that is not loaded takes a while to answer its first word: say so, with the time.
    let stopClock = () => {};
    const status = element("div", { className: "status loading", role: "status" });
    const cold = !(await loaded(model));
    if (cold && controller) {
      theirs.item.classList.add("loading");
      theirs.body.before(status);
      stopClock = loadingClock(status, model);
    }
    const firstChunk = () => {
      stopClock();
      status.remove();
      theirs.item.classList.remove("loading");
    };

    let drawn = false;
    const redraw = () => {
      drawn = false;
      theirs.body.replaceChildren(render(reply.content));
      if (chat === current) theirs.item.scrollIntoView({ block: "end" });
    };
    let outcome = "answered";
    try {
      const body = { model, messages: history, options: options() };
      for await (const chunk of lines("api/chat", body, controller.signal)) {
        firstChunk();
        if (chunk.message && chunk.message.content) {
          reply.content += chunk.message.content;
          if (!drawn) {
            drawn = true;
            requestAnimationFrame(redraw); // at most once a frame, however fast words come
          }
        }
        if (chunk.done) reply.meta = metrics(chunk);
      }
    } catch (problem) {
      if (aborted(problem)) {
        outcome = reply.content ? "stopped" : "refused";
        if (reply.content) reply.meta = "stopped";
      } else {
        outcome = reply.content ? "stopped" : "refused";
        if (reply.content) reply.failed = true;
        showError(error, problem.message);
      }
    } finally {
      firstChunk();
      controller = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
    }
    theirs.item.remove();
    if (outcome !== "refused") {
      chat.messages.push(reply);
      await save(chat);
    }
    if (chat === current) showLog();
    return outcome;
  }

  // --- The composer -----------------------------------------------------------------------------

  // Pictures arrive from the picker, a paste and a drop, maybe at once: one batch at a time,
  // in order, so none is lost between a read and the list being drawn.
  let attaching = Promise.resolve();
  function attach(files) {
    attaching = attaching.then(() => attachNow(files));
    return attaching;
  }

  async function attachNow(files) {
    showError(error, "");
    for (const file of files) {
      try {
        const picture = await pictureOf(file);
        picture.name = file.name || `pasted picture ${attached.length + 1}`;
        attached.push(picture);
      } catch (problem) {
        showError(error, problem.message);
      }
    }
    showAttached();
  }

  $("chat-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!controller) send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("chat-form").requestSubmit();
    }
  });
  $("chat-stop").addEventListener("click", () => controller && controller.abort());
  $("chat-new").addEventListener("click", () => {
    if (controller) controller.abort();
    current = blank();
    showLog();
    showList();
    showError(error, "");
    input.focus();
  });
  $("chat-files").addEventListener("change", (event) => {
    attach([...event.target.files]);
    event.target.value = "";
  });

  const form = $("chat-form");
  form.addEventListener("dragover", (event) => {
    if ([...event.dataTransfer.types].includes("Files")) {
      event.preventDefault();
      form.classList.add("dropping");
    }
  });
  form.addEventListener("dragleave", () => form.classList.remove("dropping"));
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    form.classList.remove("dropping");
    attach([...event.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
  });
  $("panel-chat").addEventListener("paste", (event) => {
    const files = [...event.clipboardData.files].filter((f) => f.type.startsWith("image/"));
    if (files.length) {
      event.preventDefault();
      attach(files);
    }
  });

  return loadList();
}

// The options set under "Options"; empty ones are left to the model.
function options() {
  const chosen = {};
  for (const [key, id] of [["temperature", "chat-temperature"], ["seed", "chat-seed"], ["num_predict", "chat-num-predict"]]) {
    const text = $(id).value.trim();
    if (text !== "") chosen[key] = Number(text);
  }
  return chosen;
}

function metrics(done) {
  const parts = [];
  if (done.eval_count !== undefined) parts.push(`${done.eval_count} tokens`);
  if (done.total_duration) parts.push(seconds(done.total_duration / 1e9));
  if (done.eval_count && done.eval_duration) parts.push(`${(done.eval_count / (done.eval_duration / 1e9)).toFixed(1)} tokens/s`);
  if (done.load_duration > 5e8) parts.push(`loading took ${seconds(done.load_duration / 1e9)}`);
  if (done.done_reason === "length") parts.push("stopped at the length limit");
  if (done.truncated) {
    parts.push(`the oldest ${done.truncated.messages} messages were left out to fit the context window`);
  }
  return parts.join(" · ");
}
