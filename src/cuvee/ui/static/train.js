// The train screen (admin): start `cuvee train` from a shipped recipe or an uploaded data file,
// watch step, loss, held-out loss, tokens/s, ETA and cost as the run writes them (server-sent
// events), stop it (its checkpoint is kept, and the command that resumes it shown), and find
// the model under Models when it is done.

import { getJSON, postJSON, stream } from "./api.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let following = null;
let points = [];
let onModel = () => {};


function knobs(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^\s*([A-Za-z_]+)\s*:\s*(.*?)\s*$/);
    if (!m) continue;
    const value = m[2];
    out[m[1]] = value === "true" ? true : value === "false" ? false
      : value !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
  }
  return out;
}

function figures(m) {
  const rows = [
    ["Step", m.step],
    ["Loss", m.loss?.toFixed(4)],
    ["Held-out loss", m.eval_loss?.toFixed(4)],
    ["Tokens/s", m.tokens_per_s?.toFixed(0)],
    ["ETA", m.eta_s != null ? `${Math.round(m.eta_s)} s` : null],
    ["Cost", m.cost_usd != null ? `$${m.cost_usd.toFixed(4)}` : null],
  ];
  $("train-figures").replaceChildren(
    ...rows.filter(([, v]) => v != null).flatMap(([k, v]) => [el("dt", k), el("dd", v, `fig-${k.toLowerCase().replace(/[^a-z]+/g, "-")}`)]),
  );
}

// Loss (line) and held-out loss (dots) against the step, drawn as SVG elements.
function chart() {
  const box = $("train-chart");
  const train = points.filter((p) => p.loss != null);
  const held = points.filter((p) => p.eval_loss != null);
  const all = [...train.map((p) => p.loss), ...held.map((p) => p.eval_loss)];
  if (all.length < 2) return box.replaceChildren();
  const w = 480, h = 160, pad = 8;
  const maxStep = Math.max(1, ...points.map((p) => p.step));
  const lo = Math.min(...all), hi = Math.max(...all);
  const x = (s) => pad + (s / maxStep) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo || 1)) * (h - 2 * pad);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("width", String(w));
  svg.setAttribute("height", String(h));
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", train.map((p) => `${x(p.step)},${y(p.loss)}`).join(" "));
  line.setAttribute("class", "loss-line");
  svg.append(line);
  for (const p of held) {
    const dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", String(x(p.step)));
    dot.setAttribute("cy", String(y(p.eval_loss)));
    dot.setAttribute("r", "3");
    dot.setAttribute("class", "eval-dot");
    svg.append(dot);
  }
  box.replaceChildren(svg);
}

function ended(state) {
  const status = $("train-status");
  if (state.status === "completed") {
    status.replaceChildren(`Done: the model ${state.model} is in the store. `, Object.assign(el("a", "Open Models"), { href: "#models" }));
    onModel();
  } else if (state.status === "stopped") {
    status.textContent = `Stopped; the checkpoint is kept. Resume with: ${state.resume}`;
  } else {
    status.textContent = `The run failed.${state.error ? "\n" + state.error : ""}`;
  }
}

async function follow(name) {
  following = new AbortController();
  points = [];
  $("train-stop").disabled = false;
  $("train-start").disabled = true;
  try {
    for await (const e of stream(`/v1/runs/${encodeURIComponent(name)}/events`, null, following.signal)) {
      if (e.event === "metrics") {
        points.push(e);
        const last = { ...points.filter((p) => p.loss != null).at(-1), eval_loss: points.filter((p) => p.eval_loss != null).at(-1)?.eval_loss };
        figures(last);
        chart();
        $("train-status").textContent = `Training ${name}…`;
      } else if (e.event === "status" && !["running", "stopping"].includes(e.status)) {
        ended(e);
      } else if (e.event === "status") {
        $("train-status").textContent = e.status === "stopping" ? "Stopping after this step…" : `Training ${name}…`;
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") $("train-status").textContent = error.message;
  } finally {
    following = null;
    $("train-stop").disabled = true;
    $("train-start").disabled = false;
    loadRuns();
  }
}

async function start(event) {
  event.preventDefault();
  if (following) return;
  const name = $("train-name").value.trim();
  const body = { name, knobs: knobs($("train-knobs").value), data: [] };
  if ($("train-recipe").value) body.recipe = $("train-recipe").value;
  if ($("train-base").value) body.base = $("train-base").value;
  if ($("train-starter").checked) body.data.push("starter");
  const file = $("train-file").files[0];
  if (file) body.data_file = { name: file.name, content: await file.text() };
  if ($("train-budget").value.trim()) body.time_budget = $("train-budget").value.trim();
  if ($("train-steps").value) body.max_steps = Number($("train-steps").value);
  $("train-status").textContent = "Starting…";
  $("train-figures").replaceChildren();
  $("train-chart").replaceChildren();
  try {
    await postJSON("/v1/runs", body);
  } catch (error) {
    $("train-status").textContent = `Not started: ${error.message}`;
    return;
  }
  follow(name);
}

async function stop() {
  const name = $("train-name").value.trim();
  try {
    await postJSON(`/v1/runs/${encodeURIComponent(name)}/stop`, {});
    $("train-status").textContent = "Stopping after this step…";
  } catch (error) {
    $("train-status").textContent = error.message;
  }
}

async function loadRuns() {
  const list = $("run-list");
  try {
    const runs = await getJSON("/v1/runs");
    const recipe = $("train-recipe");
    if (recipe.options.length === 1) {
      for (const r of runs.recipes) recipe.append(Object.assign(el("option", r), { value: r }));
    }
    list.replaceChildren(
      ...(runs.data.length ? runs.data.map((r) => el("li", `${r.id}: ${r.status}${r.resume ? ` (${r.resume})` : ""}`))
        : [el("li", "No runs yet.", "note")]),
    );
  } catch (error) {
    list.replaceChildren(el("li", error.status === 403 ? "Training needs an admin key (cuvee keys create --admin)." : error.message, "note"));
  }
  try {
    const models = (await getJSON("/v1/store/models")).data.filter((m) => m.kind === "base");
    const base = $("train-base");
    const chosen = base.value;
    base.replaceChildren(Object.assign(el("option", "(the default)"), { value: "" }),
      ...models.map((m) => Object.assign(el("option", m.id), { value: m.id })));
    base.value = models.some((m) => m.id === chosen) ? chosen : "";
  } catch {
    // the base list is a convenience; the default base still works
  }
}

export function initTrain(hooks = {}) {
  onModel = hooks.onModel || onModel;
  $("train-form").addEventListener("submit", start);
  $("train-stop").addEventListener("click", stop);
  loadRuns();
  return { reload: loadRuns };
}
