// The chat screen: conversations kept in this browser (localStorage), answers streamed from
// /v1/chat/completions, a Stop button that closes the stream (the server then cancels the
// sequence), and under each answer its time to first token and tokens per second.

import { getJSON, stream } from "./api.js";
import { render } from "./markdown.js";

const STORE = "cuvee.conversations";
const $ = (id) => document.getElementById(id);

let conversations = [];
let current = null;
let running = null; // the AbortController of the answer being streamed

function load() {
  try {
    conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
  } catch {
    conversations = [];
  }
  if (!Array.isArray(conversations)) conversations = [];
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
}

function newConversation() {
  const conv = {
    id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now()),
    title: "New chat",
    created: new Date().toISOString(),
    messages: [],
  };
  conversations.unshift(conv);
  current = conv;
  save();
  drawList();
  drawMessages();
  $("prompt").focus();
}

function select(conv) {
  current = conv;
  drawList();
  drawMessages();
}

function button(label, onClick, extra = {}) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  Object.assign(b, extra);
  b.addEventListener("click", onClick);
  return b;
}

function drawList() {
  const list = $("conv-list");
  list.replaceChildren();
  for (const conv of conversations) {
    const li = document.createElement("li");
    if (conv === current) li.classList.add("current");
    const open = button(conv.title, () => select(conv), { className: "conv-title" });
    if (conv === current) open.setAttribute("aria-current", "true");
    const rename = button("Rename", () => {
      const title = window.prompt("New name for this conversation", conv.title);
      if (title && title.trim()) {
        conv.title = title.trim();
        save();
        drawList();
      }
    });
    rename.setAttribute("aria-label", `Rename ${conv.title}`);
    const remove = button("Delete", () => {
      if (!window.confirm(`Delete "${conv.title}"?`)) return;
      conversations = conversations.filter((c) => c !== conv);
      if (current === conv) current = conversations[0] || null;
      save();
      if (!current) newConversation();
      else {
        drawList();
        drawMessages();
      }
    });
    remove.setAttribute("aria-label", `Delete ${conv.title}`);
    li.append(open, rename, remove);
    list.append(li);
  }
}

function stats(message) {
  const s = message.stats;
  if (!s) return "";
  const parts = [];
  if (s.ttft != null) parts.push(`TTFT ${s.ttft.toFixed(3)} s`);
  if (s.tokensPerSecond != null) parts.push(`${s.tokensPerSecond.toFixed(1)} tokens/s`);
  if (s.tokens != null) parts.push(`${s.tokens} tokens`);
  if (s.stopped) parts.push("stopped");
  return parts.join(" · ");
}

function drawMessage(message) {
  const li = document.createElement("li");
  li.className = `message ${message.role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = message.role === "user" ? "You" : message.model || "assistant";
  const body = document.createElement("div");
  body.className = "body";
  body.append(render(message.content));
  li.append(who, body);
  if (message.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.setAttribute("role", "alert");
    error.textContent = message.error;
    li.append(error);
  }
  const line = stats(message);
  if (line) {
    const meta = document.createElement("p");
    meta.className = "stats";
    meta.textContent = line;
    li.append(meta);
  }
  return li;
}

function drawMessages() {
  const list = $("messages");
  list.replaceChildren(...(current ? current.messages.map(drawMessage) : []));
  list.lastElementChild?.scrollIntoView({ block: "end" });
}

async function loadModels() {
  const select = $("chat-model");
  const previous = select.value || localStorage.getItem("cuvee.chatModel");
  try {
    const models = await getJSON("/v1/models");
    const chat = models.data.filter((m) => m.kind !== "embedding");
    select.replaceChildren(
      ...chat.map((m) => {
        const option = document.createElement("option");
        option.value = m.id;
        option.textContent = m.id;
        return option;
      }),
    );
    if (chat.some((m) => m.id === previous)) select.value = previous;
    document.getElementById("status").textContent = "";
  } catch (error) {
    const hint = error.status === 401 ? " Paste your key into the API key field." : "";
    document.getElementById("status").textContent = `Could not list the models: ${error.message}${hint}`;
  }
}

async function send(text) {
  if (running || !text.trim()) return;
  if (!current) newConversation();
  const conv = current;
  const model = $("chat-model").value;
  if (!model) {
    document.getElementById("status").textContent = "No model to answer: see cuvee serve's models.";
    return;
  }
  localStorage.setItem("cuvee.chatModel", model);
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = text.slice(0, 40);
  const answer = { role: "assistant", model, content: "", stats: null };
  conv.messages.push(answer);
  save();
  drawList();
  drawMessages();
  const system = $("chat-system").value.trim();
  const history = conv.messages
    .slice(0, -1)
    .filter((m) => !m.error)
    .map((m) => ({ role: m.role, content: m.content }));
  const body = {
    model,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    stream: true,
    stream_options: { include_usage: true },
    temperature: Number($("chat-temperature").value),
    max_tokens: Number($("chat-max-tokens").value),
  };
  running = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const bubble = $("messages").lastElementChild;
  const started = performance.now();
  let first = null;
  let usage = null;
  let frame = 0;
  const redraw = () => {
    frame = 0;
    const fresh = drawMessage(answer);
    bubble.replaceChildren(...fresh.childNodes);
  };
  try {
    for await (const chunk of stream("/v1/chat/completions", body, running.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        if (first === null) first = performance.now();
        answer.content += delta;
        if (!frame) frame = requestAnimationFrame(redraw);
      }
    }
  } catch (error) {
    if (error.name === "AbortError") answer.stopped = true;
    else answer.error = error.message;
  } finally {
    if (frame) cancelAnimationFrame(frame);
    const ended = performance.now();
    const tokens = usage ? usage.completion_tokens : null;
    answer.stats = {
      ttft: first === null ? null : (first - started) / 1000,
      tokens,
      tokensPerSecond:
        first !== null && tokens > 1 && ended > first ? (tokens - 1) / ((ended - first) / 1000) : null,
      stopped: Boolean(answer.stopped),
    };
    running = null;
    $("send").disabled = false;
    $("stop").disabled = true;
    save();
    redraw();
  }
}

function exportConversations() {
  const blob = new Blob([JSON.stringify(conversations, null, 2)], { type: "application/json" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "cuvee-conversations.json";
  a.click();
  URL.revokeObjectURL(a.href);
}

export function initChat() {
  load();
  current = conversations[0] || null;
  if (!current) newConversation();
  drawList();
  drawMessages();
  $("conv-new").addEventListener("click", newConversation);
  $("conv-export").addEventListener("click", exportConversations);
  $("stop").addEventListener("click", () => running?.abort());
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  loadModels();
  return { reload: loadModels };
}
