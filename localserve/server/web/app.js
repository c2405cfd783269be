// The chat page: conversations in localStorage, answers streamed from /api/chat.
// Everything that came from the daemon (model names, answers, errors) goes into the
// page as text: textContent, option.text, or DOM built by markdown.js; no string is
// ever parsed as HTML.

import { render } from "/web/markdown.js";

const STORE_KEY = "localserve.chat.v1";
const KEY_KEY = "localserve.apiKey"; // sessionStorage: gone when the tab closes
const $ = (id) => document.getElementById(id);

const ui = {
  menu: $("menu"),
  sidebar: $("sidebar"),
  model: $("model"),
  loaded: $("loaded"),
  newChat: $("new-chat"),
  conversations: $("conversations"),
  system: $("system"),
  temperature: $("temperature"),
  numCtx: $("num-ctx"),
  pullForm: $("pull-form"),
  pullName: $("pull-name"),
  pullProgress: $("pull-progress"),
  pullStatus: $("pull-status"),
  keyForm: $("key-form"),
  apiKey: $("api-key"),
  notice: $("notice"),
  messages: $("messages"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
};

// ------------------------------------------------------------------ saved state

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY));
    if (saved && Array.isArray(saved.conversations)) return saved;
  } catch {
    // A damaged entry: start afresh rather than not at all.
  }
  return { conversations: [], current: null };
}

const state = load();
let controller = null; // the AbortController of the answer being streamed

function save() {
  localStorage.setItem(STORE_KEY, JSON.stringify(state));
}

function newConversation() {
  const conversation = {
    id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now() + Math.random()),
    title: "New chat",
    model: ui.model.value || "",
    system: "",
    options: {},
    messages: [],
  };
  state.conversations.unshift(conversation);
  state.current = conversation.id;
  save();
  return conversation;
}

function current() {
  return state.conversations.find((c) => c.id === state.current) ?? newConversation();
}

// An answer that was streaming when the page went away is over.
for (const conversation of state.conversations) {
  for (const message of conversation.messages) {
    if (message.streaming) {
      delete message.streaming;
      message.stopped = true;
    }
  }
}

// ------------------------------------------------------------------ the daemon

class ApiError extends Error {}

async function api(path, init = {}) {
  const headers = new Headers(init.headers);
  const key = sessionStorage.getItem(KEY_KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  if (init.body) headers.set("Content-Type", "application/json");
  const response = await fetch(path, { ...init, headers });
  if (response.status === 401) {
    ui.keyForm.hidden = false;
    ui.apiKey.focus();
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = typeof body.error === "string" ? body.error : body.error?.message ?? message;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new ApiError(message);
  }
  return response;
}

// NDJSON from a fetch body, one object per line, as the bytes arrive.
async function* ndjson(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buffered.trim()) yield JSON.parse(buffered);
  } finally {
    reader.releaseLock();
  }
}

function notify(text) {
  ui.notice.textContent = text;
}

// ------------------------------------------------------------------ models

async function refreshModels() {
  try {
    const { models } = await (await api("/api/tags")).json();
    const wanted = current().model;
    const names = models.map((m) => m.name).sort();
    ui.model.replaceChildren(...names.map((name) => new Option(name, name)));
    if (wanted && names.includes(wanted)) ui.model.value = wanted;
    else if (names.length) current().model = ui.model.value;
    if (!names.length) notify("No models yet: pull one (in the menu).");
  } catch (error) {
    notify(`Could not list models: ${error.message}`);
  }
}

async function refreshLoaded() {
  try {
    const { models } = await (await api("/api/ps")).json();
    ui.loaded.textContent = models.length
      ? `Loaded: ${models.map((m) => `${m.name} (ctx ${m.context_length})`).join(", ")}`
      : "No model loaded";
  } catch {
    ui.loaded.textContent = "";
  }
}

async function pull(name) {
  ui.pullProgress.hidden = false;
  ui.pullProgress.removeAttribute("value"); // indeterminate until a size is known
  ui.pullStatus.textContent = "Starting…";
  try {
    const response = await api("/api/pull", {
      method: "POST",
      body: JSON.stringify({ model: name, stream: true }),
    });
    for await (const event of ndjson(response)) {
      if (event.error) throw new ApiError(event.error);
      ui.pullStatus.textContent = event.status ?? "";
      if (event.total) ui.pullProgress.value = (event.completed ?? 0) / event.total;
    }
    ui.pullProgress.value = 1;
    await refreshModels();
  } catch (error) {
    ui.pullStatus.textContent = `Pull failed: ${error.message}`;
    ui.pullProgress.hidden = true;
  }
}

// ------------------------------------------------------------------ drawing

function drawConversations() {
  const items = state.conversations.map((conversation) => {
    const item = document.createElement("li");
    if (conversation.id === state.current) item.setAttribute("aria-current", "true");
    const open = document.createElement("button");
    open.type = "button";
    open.className = "open";
    open.textContent = conversation.title;
    open.addEventListener("click", () => switchTo(conversation.id));
    const rename = document.createElement("button");
    rename.type = "button";
    rename.className = "rename";
    rename.textContent = "Rename";
    rename.setAttribute("aria-label", `Rename ${conversation.title}`);
    rename.addEventListener("click", () => startRename(item, conversation));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.textContent = "Delete";
    remove.setAttribute("aria-label", `Delete ${conversation.title}`);
    remove.addEventListener("click", () => removeConversation(conversation.id));
    item.append(open, rename, remove);
    return item;
  });
  ui.conversations.replaceChildren(...items);
}

function startRename(item, conversation) {
  const input = document.createElement("input");
  input.value = conversation.title;
  input.setAttribute("aria-label", "New name");
  const finish = (keep) => {
    if (keep && input.value.trim()) conversation.title = input.value.trim();
    save();
    drawConversations();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function removeConversation(id) {
  if (controller && id === state.current) controller.abort();
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.current === id) state.current = state.conversations[0]?.id ?? null;
  save();
  showConversation();
}

function switchTo(id) {
  if (controller) controller.abort();
  state.current = id;
  save();
  showConversation();
  closeMenuOnPhone();
}

function stats(message) {
  const parts = [];
  if (message.stats?.eval_count) {
    const { eval_count: count, eval_duration: ns } = message.stats;
    parts.push(`${count} tokens`);
    if (ns > 0) parts.push(`${((count * 1e9) / ns).toFixed(1)} tokens/s`);
  }
  if (message.ttft_ms != null) parts.push(`first token ${Math.round(message.ttft_ms)} ms`);
  if (message.stopped) parts.push("stopped");
  return parts.join(" · ");
}

// One message's <li>; an answer's parts are filled by fillAnswer so that streaming
// can redraw only them.
function drawMessage(message) {
  const item = document.createElement("li");
  item.className = `message ${message.role}`;
  if (message.role === "user") {
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = message.content;
    item.append(text);
    return item;
  }
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  const summary = document.createElement("summary");
  summary.textContent = "Thinking";
  const thought = document.createElement("div");
  thought.className = "thought";
  thinking.append(summary, thought);
  const content = document.createElement("div");
  content.className = "content";
  const error = document.createElement("p");
  error.className = "error";
  const footer = document.createElement("p");
  footer.className = "stats";
  item.append(thinking, content, error, footer);
  fillAnswer(item, message);
  return item;
}

function fillAnswer(item, message) {
  const [thinking, content, error, footer] = item.children;
  thinking.hidden = !message.thinking;
  thinking.lastChild.textContent = message.thinking ?? "";
  render(message.content, content);
  error.hidden = !message.error;
  error.textContent = message.error ?? "";
  footer.textContent = stats(message);
  item.toggleAttribute("data-streaming", Boolean(message.streaming));
}

function showConversation() {
  const conversation = current();
  drawConversations();
  ui.messages.replaceChildren(...conversation.messages.map(drawMessage));
  ui.system.value = conversation.system ?? "";
  ui.temperature.value = conversation.options.temperature ?? "";
  ui.numCtx.value = conversation.options.num_ctx ?? "";
  if (conversation.model && [...ui.model.options].some((o) => o.value === conversation.model)) {
    ui.model.value = conversation.model;
  }
  ui.messages.lastElementChild?.scrollIntoView({ block: "end" });
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  if (!busy && document.activeElement === ui.stop) ui.prompt.focus();
}

// ------------------------------------------------------------------ chatting

function requestBody(conversation) {
  const messages = [];
  if (conversation.system) messages.push({ role: "system", content: conversation.system });
  for (const message of conversation.messages) {
    if (message.streaming || (message.role === "assistant" && !message.content)) continue;
    messages.push({ role: message.role, content: message.content });
  }
  return { model: conversation.model, messages, stream: true, options: conversation.options };
}

async function send(text) {
  const conversation = current();
  conversation.model = ui.model.value;
  if (!conversation.model) {
    notify("Pick a model first (or pull one).");
    return;
  }
  notify("");
  if (conversation.title === "New chat") conversation.title = text.replace(/\s+/g, " ").slice(0, 40);
  conversation.messages.push({ role: "user", content: text });
  const body = requestBody(conversation);
  const answer = { role: "assistant", content: "", thinking: "", streaming: true };
  conversation.messages.push(answer);
  save();
  showConversation();
  const item = ui.messages.lastElementChild;

  controller = new AbortController();
  setBusy(true);
  const sent = performance.now();
  let pending = false;
  const redraw = () => {
    pending = false;
    fillAnswer(item, answer);
    item.scrollIntoView({ block: "end" });
  };
  try {
    const response = await api("/api/chat", {
      method: "POST",
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    for await (const chunk of ndjson(response)) {
      if (chunk.error) throw new ApiError(chunk.error);
      const piece = chunk.message ?? {};
      const first = !answer.content && !answer.thinking;
      answer.thinking += piece.thinking ?? "";
      answer.content += piece.content ?? "";
      if (first && (answer.content || answer.thinking)) {
        redraw();
        // The frame that shows the first token: the time a user waited for it.
        requestAnimationFrame(() => {
          answer.ttft_ms = performance.now() - sent;
        });
      } else if (!pending) {
        // Redraw at most once a frame, however fast tokens come.
        pending = true;
        requestAnimationFrame(redraw);
      }
      if (chunk.done) answer.stats = chunk;
    }
  } catch (error) {
    if (error.name === "AbortError") answer.stopped = true;
    else answer.error = error.message;
  } finally {
    delete answer.streaming;
    controller = null;
    // Let a pending frame (and the first-token timing) run before the final draw.
    await new Promise((resolve) => requestAnimationFrame(resolve));
    save();
    if (item.isConnected) redraw();
    setBusy(false);
    refreshLoaded();
  }
}

// ------------------------------------------------------------------ wiring

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || controller) return;
  ui.prompt.value = "";
  send(text);
});

ui.prompt.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter (and Enter while an input method composes) is a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => controller?.abort());
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && controller) controller.abort();
});

ui.newChat.addEventListener("click", () => {
  if (controller) controller.abort();
  newConversation();
  showConversation();
  closeMenuOnPhone();
  ui.prompt.focus();
});

ui.model.addEventListener("change", () => {
  current().model = ui.model.value;
  save();
});

ui.system.addEventListener("change", () => {
  current().system = ui.system.value;
  save();
});

function numberOption(input, name) {
  input.addEventListener("change", () => {
    const options = current().options;
    if (input.value === "" || !input.checkValidity()) delete options[name];
    else options[name] = Number(input.value);
    save();
  });
}
numberOption(ui.temperature, "temperature");
numberOption(ui.numCtx, "num_ctx");

ui.pullForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = ui.pullName.value.trim();
  if (name) pull(name);
});

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_KEY, ui.apiKey.value);
  ui.apiKey.value = "";
  ui.keyForm.hidden = true;
  refreshModels().then(showConversation);
  refreshLoaded();
});

const phone = window.matchMedia("(max-width: 700px)");
function closeMenuOnPhone() {
  if (phone.matches) {
    ui.sidebar.classList.remove("open");
    ui.menu.setAttribute("aria-expanded", "false");
  }
}
ui.menu.addEventListener("click", () => {
  const open = ui.sidebar.classList.toggle("open");
  ui.menu.setAttribute("aria-expanded", String(open));
});

await refreshModels();
showConversation();
refreshLoaded();
setInterval(() => {
  if (!document.hidden) refreshLoaded();
}, 5000);
ui.prompt.focus();
