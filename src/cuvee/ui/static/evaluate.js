// The evaluate screen (admin): run suites on models (cuvee eval in the server), watch its
// progress, read the figures, open the HTML report; past reports are listed.

import { getJSON, postJSON, stream } from "./api.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
let running = null;


function checks(box, values, checked) {
  box.replaceChildren(
    ...values.map((v, i) => {
      const l = el("label", null, "check");
      const input = el("input");
      input.type = "checkbox";
      input.value = v;
      input.checked = checked(v, i);
      l.append(input, ` ${v}`);
      return l;
    }),
  );
}

function reportLink(id) {
  const a = el("a", "Open the report");
  a.href = `/v1/evals/${encodeURIComponent(id)}/report`;
  a.target = "_blank";
  a.rel = "noopener";
  a.addEventListener("click", async (event) => {
    const key = localStorage.getItem("cuvee.apiKey");
    if (!key) return; // a server without keys: the link opens it
    // a key never goes into a URL: the report is fetched with it and opened from memory (this
    // page's policy then applies to it, so its own styles may not all show)
    event.preventDefault();
    const response = await fetch(a.href, { headers: { Authorization: `Bearer ${key}` } });
    const blob = await response.blob();
    window.open(URL.createObjectURL(blob), "_blank", "noopener");
  });
  return a;
}

function results(state) {
  const box = $("eval-results");
  box.replaceChildren();
  for (const [model, suites] of Object.entries(state.results || {})) {
    for (const [suite, entry] of Object.entries(suites)) {
      const metrics = Object.entries(entry.metrics || {}).filter(([, v]) => typeof v === "number");
      const table = el("table");
      table.append(el("caption", `${model} · ${suite}`));
      const body = el("tbody");
      for (const [k, v] of metrics) {
        const tr = el("tr");
        const th = el("th", k);
        th.scope = "row";
        tr.append(th, el("td", v.toFixed(4)));
        body.append(tr);
      }
      table.append(body);
      box.append(table);
    }
  }
  if (state.report) box.append(reportLink(state.id));
}

async function follow(id) {
  running = new AbortController();
  $("eval-run").disabled = true;
  const log = $("eval-log");
  const lines = [];
  try {
    for await (const e of stream(`/v1/evals/${encodeURIComponent(id)}/events`, null, running.signal)) {
      if (e.event === "log") {
        lines.push(e.line);
        log.textContent = lines.slice(-12).join("\n");
      } else if (e.event === "status") {
        $("eval-status").textContent = e.status === "done" ? `Done: ${id}.` : `The evaluation failed.\n${e.error || ""}`;
        if (e.status === "done") results(e);
      }
    }
  } catch (error) {
    if (error.name !== "AbortError") $("eval-status").textContent = error.message;
  } finally {
    running = null;
    $("eval-run").disabled = false;
    load();
  }
}

async function run(event) {
  event.preventDefault();
  if (running) return;
  const models = [...document.querySelectorAll("#eval-models input:checked")].map((i) => i.value);
  const endpoint = $("eval-endpoint").value.trim();
  if (endpoint) models.push(endpoint);
  const suites = [...document.querySelectorAll("#eval-suites input:checked")].map((i) => i.value);
  const body = { models, suites };
  if ($("eval-limit").value) body.limit = Number($("eval-limit").value);
  $("eval-results").replaceChildren();
  $("eval-log").textContent = "";
  try {
    const started = await postJSON("/v1/evals", body);
    $("eval-status").textContent = `Evaluating (${started.id})…`;
    follow(started.id);
  } catch (error) {
    $("eval-status").textContent = `Not started: ${error.message}`;
  }
}

async function load() {
  const list = $("eval-list");
  try {
    const evals = await getJSON("/v1/evals");
    if (!$("eval-suites").children.length) checks($("eval-suites"), evals.suites, (v) => v === "instructions");
    list.replaceChildren(
      ...(evals.data.length
        ? evals.data.map((e) => {
            const li = el("li", `${e.id}: ${e.status}${e.models ? ` (${e.models.join(", ")})` : ""} `);
            if (e.report) li.append(reportLink(e.id));
            return li;
          })
        : [el("li", "No evaluations yet.", "note")]),
    );
  } catch (error) {
    list.replaceChildren(el("li", error.status === 403 ? "Evaluating needs an admin key (cuvee keys create --admin)." : error.message, "note"));
  }
  try {
    const models = (await getJSON("/v1/models")).data.filter((m) => m.kind !== "embedding" && m.kind !== "rag");
    if (!$("eval-models").children.length) checks($("eval-models"), models.map((m) => m.id), (v, i) => i === 0);
  } catch {
    // listed on the chat screen's status line already
  }
}

export function initEvaluate() {
  $("eval-form").addEventListener("submit", run);
  load();
  return { reload: load };
}
