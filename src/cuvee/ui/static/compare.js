// The compare screen: one prompt to two or more models at once, streamed side by side, each
// labelled with what it is (kind, what it was tuned from, licence, date); with two models, a
// vote that POST /v1/votes appends to the file `cuvee eval --suite pairwise` reads.

import { getJSON, postJSON, stream } from "./api.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);
let models = [];
let runs = []; // {model, text, controller, done}
let lastPrompt = null;

function label(model) {
  const parts = [model.kind || "model"];
  if (model.parent) parts.push(`from ${model.parent}`);
  const licence = model.licence;
  if (licence) {
    const use = licence.commercial_use === true ? "commercial use: yes"
      : licence.commercial_use === false ? "commercial use: no" : "commercial use: unknown";
    parts.push(`${licence.id} (${use})`);
  }
  if (model.created_at) parts.push(`trained ${model.created_at.slice(0, 10)}`);
  return parts.join(" · ");
}

async function load() {
  try {
    const listed = await getJSON("/v1/models");
    models = listed.data.filter((m) => m.kind !== "embedding" && m.kind !== "rag");
  } catch (error) {
    $("compare-models").textContent = `Could not list the models: ${error.message}`;
    return;
  }
  const box = $("compare-models");
  box.replaceChildren(
    ...models.map((m, i) => {
      const l = document.createElement("label");
      l.className = "check";
      const input = document.createElement("input");
      input.type = "checkbox";
      input.value = m.id;
      input.checked = i < 2;
      l.append(input, ` ${m.id}`);
      return l;
    }),
  );
}

function column(model, letter) {
  const col = document.createElement("article");
  col.className = "compare-column";
  const h = document.createElement("h3");
  h.textContent = letter ? `${letter}: ${model.id}` : model.id;
  const meta = document.createElement("p");
  meta.className = "note";
  meta.textContent = label(model);
  const body = document.createElement("div");
  body.className = "body";
  const stats = document.createElement("p");
  stats.className = "stats";
  col.append(h, meta, body, stats);
  return col;
}

async function runOne(run, body, col) {
  const started = performance.now();
  let first = null;
  let usage = null;
  try {
    for await (const chunk of stream("/v1/chat/completions", body, run.controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) {
        if (first === null) first = performance.now();
        run.text += delta;
        col.querySelector(".body").replaceChildren(render(run.text));
      }
    }
  } catch (error) {
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = error.name === "AbortError" ? "stopped" : error.message;
    col.querySelector(".body").append(p);
    run.failed = true;
  }
  const ended = performance.now();
  const tokens = usage ? usage.completion_tokens : null;
  const parts = [];
  if (first !== null) parts.push(`TTFT ${((first - started) / 1000).toFixed(3)} s`);
  if (first !== null && tokens > 1 && ended > first) {
    parts.push(`${((tokens - 1) / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
  }
  if (tokens != null) parts.push(`${tokens} tokens`);
  col.querySelector(".stats").textContent = parts.join(" · ");
  run.done = true;
}

async function run(event) {
  event.preventDefault();
  if (runs.some((r) => !r.done)) return;
  const chosen = [...document.querySelectorAll("#compare-models input:checked")].map((i) => i.value);
  const prompt = $("compare-prompt").value.trim();
  $("vote-status").textContent = "";
  $("compare-status").textContent = "";
  if (chosen.length < 2 || !prompt) {
    $("compare-status").textContent = "Choose two models or more, and write a prompt.";
    return;
  }
  const system = $("compare-system").value.trim();
  const messages = system ? [{ role: "system", content: system }, { role: "user", content: prompt }]
    : [{ role: "user", content: prompt }];
  lastPrompt = { prompt, system: system || null };
  $("compare-vote").hidden = true;
  const columns = $("compare-columns");
  columns.replaceChildren();
  runs = chosen.map((id) => ({ model: id, text: "", controller: new AbortController(), done: false }));
  const pair = runs.length === 2;
  const jobs = runs.map((r, i) => {
    const model = models.find((m) => m.id === r.model) || { id: r.model };
    const col = column(model, pair ? "AB"[i] : null);
    columns.append(col);
    const body = {
      model: r.model,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: Number($("compare-max-tokens").value) || 256,
    };
    return runOne(r, body, col);
  });
  $("compare-run").disabled = true;
  $("compare-stop").disabled = false;
  await Promise.all(jobs);
  $("compare-run").disabled = false;
  $("compare-stop").disabled = true;
  if (pair && runs.every((r) => !r.failed)) {
    $("compare-vote").hidden = false;
    for (const b of document.querySelectorAll("#compare-vote button")) b.disabled = false;
  }
}

async function vote(event) {
  const winner = event.currentTarget.dataset.winner;
  const [a, b] = runs;
  try {
    await postJSON("/v1/votes", {
      ...lastPrompt,
      a: { model: a.model, answer: a.text },
      b: { model: b.model, answer: b.text },
      winner,
    });
    $("vote-status").textContent = "Vote saved.";
    for (const button of document.querySelectorAll("#compare-vote button")) button.disabled = true;
  } catch (error) {
    $("vote-status").textContent = `The vote was not saved: ${error.message}`;
  }
}

export function initCompare() {
  $("compare-form").addEventListener("submit", run);
  $("compare-stop").addEventListener("click", () => runs.forEach((r) => r.controller.abort()));
  for (const b of document.querySelectorAll("#compare-vote button")) b.addEventListener("click", vote);
  load();
  return { reload: load };
}
