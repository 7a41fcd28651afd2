// The Chat panel: a conversation with a chat model on POST /api/chat, pictures attached from
// a file picker, dropped on the message box or pasted, the answer streamed in as it comes.
// The whole conversation is sent with every question, so follow-ups work (and the server
// reuses what it already evaluated).

import { aborted, element, lines, pictureOf, seconds, showError } from "./api.js";
import { draws, picker } from "./catalog.js";

const $ = (id) => document.getElementById(id);

export function setupChat() {
  picker($("chat-model"), (model) => !draws(model), "no chat model: pull one in Models");
  const log = $("chat-log");
  const input = $("chat-input");
  const error = $("chat-error");
  let history = []; // {role, content, images} as sent
  let attached = []; // pictures for the next message: {base64, type, url, name}
  let controller = null;

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

  function bubble(role, who, text, pictures = []) {
    const body = element("div", { className: "text", text });
    const item = element("li", { className: `message ${role}` },
      element("div", { className: "who", text: who }),
      ...(pictures.length ? [element("div", { className: "thumbs" },
        ...pictures.map((p) => element("img", { src: p.url, alt: p.name })))] : []),
      body);
    log.append(item);
    item.scrollIntoView({ block: "end" });
    return { item, body };
  }

  async function send() {
    const text = input.value.trim();
    const model = $("chat-model").value;
    if (!model) return showError(error, "pick a chat model first (pull one in Models)");
    if (!text && !attached.length) return showError(error, "write a message or attach a picture");
    showError(error, "");
    const pictures = attached;
    const message = { role: "user", content: text, images: pictures.map((p) => p.base64) };
    history.push(message);
    const mine = bubble("user", "You", text, pictures);
    const theirs = bubble("assistant", model, "");
    theirs.item.classList.add("pending");
    input.value = "";
    attached = [];
    showAttached();
    controller = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    let answer = "";
    try {
      const body = { model, messages: history, options: options() };
      for await (const chunk of lines("api/chat", body, controller.signal)) {
        if (chunk.message && chunk.message.content) {
          answer += chunk.message.content;
          theirs.body.textContent = answer;
          theirs.item.scrollIntoView({ block: "end" });
        }
        if (chunk.done) theirs.item.append(element("div", { className: "meta", text: metrics(chunk) }));
      }
      history.push({ role: "assistant", content: answer });
    } catch (problem) {
      if (aborted(problem) && answer) {
        history.push({ role: "assistant", content: answer }); // what came before Stop
        theirs.item.append(element("div", { className: "meta", text: "stopped" }));
      } else {
        history.pop(); // not answered: the question is not part of the conversation
        if (!answer) {
          mine.item.remove();
          theirs.item.remove();
          input.value = text; // back in the box, to send again
          attached = pictures;
          showAttached();
        } else {
          mine.item.classList.add("failed");
          theirs.item.classList.add("failed");
        }
        if (!aborted(problem)) showError(error, problem.message);
      }
    } finally {
      theirs.item.classList.remove("pending");
      controller = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
    }
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
    history = [];
    log.replaceChildren();
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
  if (done.done_reason === "length") parts.push("stopped at the length limit");
  if (done.truncated) {
    parts.push(`the oldest ${done.truncated.messages} messages were left out to fit the context window`);
  }
  return parts.join(" · ");
}
