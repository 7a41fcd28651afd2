// The chats kept in this browser, in IndexedDB (database "limner", store "chats"): pictures
// stay as the base64 the API takes, so a chat with pictures fits where localStorage's few
// megabytes would not. A browser without IndexedDB (or one that refuses it) keeps the chats
// for the page's lifetime only; the page says so.
//
// A chat: {id, title, model, created, updated, messages: [{role, content, images, meta}]},
// `images` as [{base64, type}], `meta` the line under an answer.

const DB = "limner";
const STORE = "chats";
let opening = null;
const memory = new Map(); // the fallback

function open() {
  opening ||= new Promise((resolve) => {
    let request;
    try {
      request = indexedDB.open(DB, 1);
    } catch {
      resolve(null);
      return;
    }
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id" });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => resolve(null);
    request.onblocked = () => resolve(null);
  });
  return opening;
}

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export async function kept() {
  return Boolean(await open());
}

// Every chat, the most recently updated first.
export async function allChats() {
  const db = await open();
  const chats = db ? await done(db.transaction(STORE).objectStore(STORE).getAll()) : [...memory.values()];
  return chats.sort((a, b) => b.updated - a.updated);
}

export async function putChat(chat) {
  const db = await open();
  const copy = structuredClone(chat);
  if (!db) {
    memory.set(chat.id, copy);
    return;
  }
  await done(db.transaction(STORE, "readwrite").objectStore(STORE).put(copy));
}

export async function deleteChat(id) {
  const db = await open();
  if (!db) {
    memory.delete(id);
    return;
  }
  await done(db.transaction(STORE, "readwrite").objectStore(STORE).delete(id));
}

export function newId() {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}
