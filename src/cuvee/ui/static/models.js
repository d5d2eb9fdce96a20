// The models screen: the store's models, and for one its manifest as a person reads it (what
// it was tuned from, on which data with which hashes and licences, the recipe, the run, the
// exports with their sizes and quantization fidelity) and its model card.

import { getJSON } from "./api.js";
import { el } from "./dom.js";
import { render } from "./markdown.js";

const $ = (id) => document.getElementById(id);


function commercial(value) {
  return value === true ? "yes" : value === false ? "no" : "unknown";
}

function table(headers, rows, caption) {
  const t = el("table");
  if (caption) t.append(el("caption", caption));
  const head = el("tr");
  for (const h of headers) {
    const th = el("th", h);
    th.scope = "col";
    head.append(th);
  }
  t.append(el("thead"));
  t.tHead.append(head);
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) tr.append(el("td", cell ?? "-"));
    body.append(tr);
  }
  t.append(body);
  return t;
}

function facts(pairs) {
  const dl = el("dl", null, "facts");
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(el("dt", k), el("dd", typeof v === "object" ? JSON.stringify(v) : v));
  }
  return dl;
}

function size(bytes) {
  if (bytes == null) return null;
  const mb = bytes / 1e6;
  return mb >= 1000 ? `${(mb / 1000).toFixed(2)} GB` : `${mb.toFixed(1)} MB`;
}

function detail(model) {
  const box = $("model-detail");
  const m = model.manifest;
  const lineage = m.lineage || {};
  const parts = [el("h2", model.id)];
  parts.push(
    facts([
      ["Kind", model.kind],
      ["Tuned from", model.parent],
      ["Architecture", model.architecture],
      ["Parameters", model.parameters ? model.parameters.toLocaleString("en") : null],
      ["Created", model.created_at],
      ["Licence", `${model.licence.id}${model.licence.name ? ` (${model.licence.name})` : ""}`],
      ["Commercial use", commercial(model.commercial_use)],
      ["Why", (m.commercial_use_reasons || []).join("; ")],
      ["Description", model.description],
    ]),
  );
  if (lineage.base) {
    parts.push(el("h3", "Base"));
    parts.push(
      facts([
        ["Name", lineage.base.name],
        ["Upstream", lineage.base.upstream],
        ["Weights sha256", lineage.base.weights_sha256],
        ["Licence", lineage.base.licence && lineage.base.licence.id],
      ]),
    );
  }
  if (lineage.data && lineage.data.length) {
    parts.push(
      table(
        ["Data", "Records", "sha256", "Licence", "Commercial use"],
        lineage.data.map((d) => [
          d.path,
          d.records,
          d.sha256 ? d.sha256.slice(0, 16) + "…" : null,
          d.licence && d.licence.id,
          commercial(d.licence && d.licence.commercial_use),
        ]),
        "Training data",
      ),
    );
  }
  if (lineage.recipe) {
    parts.push(el("h3", "Recipe"));
    parts.push(facts(Object.entries(lineage.recipe)));
  }
  if (lineage.run) {
    parts.push(el("h3", "Run"));
    parts.push(facts(Object.entries(lineage.run).filter(([k]) => k !== "run_dir")));
  }
  if (lineage.contributors) parts.push(facts([["Contributors", lineage.contributors.join(", ")]]));
  parts.push(
    (m.exports || []).length
      ? table(
          ["Format", "Quantization", "Size", "Fidelity", "Created"],
          m.exports.map((e) => [
            e.format,
            e.quantization,
            size(e.size),
            e.fidelity ? Object.entries(e.fidelity).map(([k, v]) => `${k} ${v}`).join(", ") : null,
            e.created_at,
          ]),
          "Exports",
        )
      : el("p", "No exports yet: cuvee export " + model.id, "note"),
  );
  if (model.card) {
    parts.push(el("h3", "Model card"));
    const card = el("div", null, "card");
    card.append(render(model.card));
    parts.push(card);
  }
  box.replaceChildren(...parts);
}

async function open(name, button) {
  for (const b of document.querySelectorAll("#store-list button")) b.removeAttribute("aria-current");
  button.setAttribute("aria-current", "true");
  try {
    detail(await getJSON(`/v1/store/models/${encodeURIComponent(name)}`));
  } catch (error) {
    $("model-detail").replaceChildren(el("p", error.message, "error"));
  }
}

async function load() {
  const list = $("store-list");
  try {
    const models = (await getJSON("/v1/store/models")).data;
    list.replaceChildren(
      ...models.map((m) => {
        const li = el("li");
        const b = el("button", m.id, "model-name");
        b.type = "button";
        b.addEventListener("click", () => open(m.id, b));
        li.append(b, el("span", `${m.kind} · commercial use: ${commercial(m.commercial_use)}`, "note"));
        return li;
      }),
    );
    if (!models.length) list.replaceChildren(el("li", "No models yet: cuvee models pull gemma3-270m", "note"));
  } catch (error) {
    list.replaceChildren(el("li", `Could not list the models: ${error.message}`, "error"));
  }
}

export function initModels() {
  load();
  return { reload: load };
}
