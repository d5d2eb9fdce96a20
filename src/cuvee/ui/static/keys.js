// The keys screen (admin): the active keys (never their secrets), a new key shown once, revoke.

import { getJSON, postJSON } from "./api.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);


function list(value) {
  const items = value.split(",").map((s) => s.trim()).filter(Boolean);
  return items.length ? items : null;
}

async function load() {
  const body = $("key-table").tBodies[0];
  try {
    const keys = (await getJSON("/v1/keys")).data;
    body.replaceChildren(
      ...keys.map((k) => {
        const tr = el("tr");
        const budgets = Object.entries(k.budgets || {}).map(([name, limit]) => `${name} ${limit}`);
        const limits = [k.rpm && `${k.rpm} req/min`, k.tpm && `${k.tpm} tok/min`, ...budgets].filter(Boolean).join(", ");
        for (const cell of [k.name, k.id, limits || "none", k.models ? k.models.join(", ") : "all",
          k.collections ? k.collections.join(", ") : "default", k.admin ? "yes" : "no", k.created_at]) {
          tr.append(el("td", cell));
        }
        const revoke = el("button", "Revoke");
        revoke.type = "button";
        revoke.setAttribute("aria-label", `Revoke ${k.name}`);
        revoke.addEventListener("click", async () => {
          if (!window.confirm(`Revoke the key "${k.name}"? Clients using it stop working.`)) return;
          try {
            await postJSON(`/v1/keys/${encodeURIComponent(k.name)}/revoke`, {});
            load();
          } catch (error) {
            $("key-secret").textContent = error.message;
          }
        });
        const td = el("td");
        td.append(revoke);
        tr.append(td);
        return tr;
      }),
    );
    if (!keys.length) {
      const tr = el("tr");
      const td = el("td", "No keys: the server answers without one, on loopback only.", "note");
      td.colSpan = 8;
      tr.append(td);
      body.replaceChildren(tr);
    }
  } catch (error) {
    const tr = el("tr");
    const td = el("td", error.status === 403 ? "Keys are managed with an admin key (cuvee keys create --admin)." : error.message, "note");
    td.colSpan = 8;
    tr.append(td);
    body.replaceChildren(tr);
  }
}

async function create(event) {
  event.preventDefault();
  const body = {
    name: $("key-name").value.trim(),
    models: list($("key-models").value),
    collections: list($("key-collections").value),
    admin: $("key-admin").checked,
    budgets: list($("key-budgets").value),
  };
  if ($("key-rpm").value) body.rpm = Number($("key-rpm").value);
  if ($("key-tpm").value) body.tpm = Number($("key-tpm").value);
  const out = $("key-secret");
  try {
    const made = await postJSON("/v1/keys", body);
    const code = el("code", made.key, "secret");
    out.replaceChildren(`Key "${made.name}" created. It is shown only now; copy it: `, code);
    $("key-form").reset();
    load();
  } catch (error) {
    out.textContent = `Not created: ${error.message}`;
  }
}

export function initKeys() {
  $("key-form").addEventListener("submit", create);
  load();
  return { reload: load };
}
