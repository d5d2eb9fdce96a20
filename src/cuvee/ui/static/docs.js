// The documents screen: ask a collection (a rag:NAME chat completion) and read the verified
// answer; each [n] opens the cited document at the quoted characters, highlighted. What the
// checker dropped, and abstentions, are shown as such.

import { getJSON, postJSON } from "./api.js";
import { el as text } from "./dom.js";

const $ = (id) => document.getElementById(id);
let collections = [];
let asking = null;

// "Title > Section", without repeating a title that is also the top heading (as cuvee ask does)
function place(title, section) {
  if (section && (section === title || section.startsWith(`${title} > `))) return section;
  return [title, section].filter(Boolean).join(" > ");
}


async function loadCollections() {
  const select = $("docs-collection");
  const previous = select.value;
  try {
    collections = (await getJSON("/v1/collections")).data;
  } catch (error) {
    $("collection-info").textContent = `Could not list the collections: ${error.message}`;
    return;
  }
  select.replaceChildren(
    ...collections.map((c) => {
      const option = document.createElement("option");
      option.value = c.id;
      option.textContent = c.id;
      return option;
    }),
  );
  if (collections.some((c) => c.id === previous)) select.value = previous;
  describe();
  listDocuments();
}

function describe() {
  const c = collections.find((x) => x.id === $("docs-collection").value);
  $("collection-info").textContent = c
    ? `${c.documents} documents, ${c.chunks} passages, embedded with ${c.embedding_model}`
    : "No collection yet: add documents with cuvee docs add NAME FOLDER.";
}

// The answer's text with each [n] made a button that opens source n.
function answerLine(content, citations, collection) {
  const p = document.createElement("p");
  p.className = "answer-text";
  let last = 0;
  for (const match of content.matchAll(/\[(\d+)\]/g)) {
    p.append(content.slice(last, match.index));
    const n = Number(match[1]);
    const citation = citations.find((c) => c.n === n);
    if (citation) {
      const b = text("button", `[${n}]`, "cite");
      b.type = "button";
      b.setAttribute("aria-label", `Show source ${n}: ${citation.title}`);
      b.addEventListener("click", () => showSource(collection, citation));
      p.append(b);
    } else p.append(match[0]);
    last = match.index + match[0].length;
  }
  p.append(content.slice(last));
  return p;
}

async function showSource(collection, citation) {
  const panel = $("source");
  const pre = $("source-text");
  try {
    const doc = await getJSON(
      `/v1/collections/${encodeURIComponent(collection)}/document?ref=${encodeURIComponent(citation.doc)}`,
    );
    const mark = text("mark", doc.text.slice(citation.start, citation.end));
    mark.id = "quote";
    pre.replaceChildren(doc.text.slice(0, citation.start), mark, doc.text.slice(citation.end));
    $("source-title").textContent = `[${citation.n}] ${doc.title || doc.path}`;
    panel.hidden = false;
    mark.scrollIntoView({ block: "center" });
    pre.focus({ preventScroll: true });
  } catch (error) {
    $("source-title").textContent = `Could not open the source: ${error.message}`;
    pre.replaceChildren();
    panel.hidden = false;
  }
}

function drawAnswer(response, collection) {
  const box = $("answer");
  box.replaceChildren();
  const content = response.choices[0].message.content;
  const [answer] = content.split("\n\nSources:\n");
  const citations = response.citations || [];
  if (response.abstained) {
    const div = document.createElement("div");
    div.className = "abstained";
    div.append(text("strong", "No answer from the documents. "), answer);
    if (response.abstain_reason) div.append(text("p", `Why: ${response.abstain_reason}`, "reason"));
    box.append(div);
  } else {
    box.append(answerLine(answer, citations, collection));
    if (response.wording === "quote") {
      box.append(text("p", "The answer is the source's own words, quoted.", "note"));
    }
  }
  if (citations.length) {
    box.append(text("h3", "Sources"));
    const list = document.createElement("ol");
    list.className = "sources";
    for (const c of citations) {
      const li = document.createElement("li");
      const b = text("button", `[${c.n}] ${place(c.title, c.section)}`, "source-link");
      b.type = "button";
      b.addEventListener("click", () => showSource(collection, c));
      li.append(b, text("q", c.quote));
      list.append(li);
    }
    box.append(list);
  }
  const seen = new Set();
  const dropped = (response.sentences || []).filter((s) => {
    if (s.verdict !== "unsupported" && s.verdict !== "off_topic") return false;
    if (seen.has(s.text)) return false; // a small model repeats itself: each once
    seen.add(s.text);
    return true;
  });
  if (dropped.length) {
    box.append(text("h3", "Dropped by the checker"));
    const list = document.createElement("ul");
    list.className = "dropped";
    for (const s of dropped) {
      const why = s.verdict === "unsupported" ? "not supported by the sources" : "not about the question";
      list.append(text("li", `${s.text} (${why})`));
    }
    box.append(list);
  }
}

async function ask(event) {
  event.preventDefault();
  const collection = $("docs-collection").value;
  const question = $("docs-question").value.trim();
  if (!collection || !question || asking) return;
  asking = new AbortController();
  $("ask").disabled = true;
  // the last answer's source goes with it: a panel left open would show the wrong document
  $("source").hidden = true;
  $("source-text").replaceChildren();
  $("answer").replaceChildren(text("p", "Searching and checking…", "note"));
  try {
    const response = await postJSON(
      "/v1/chat/completions",
      { model: `rag:${collection}`, messages: [{ role: "user", content: question }] },
      asking.signal,
    );
    drawAnswer(response, collection);
  } catch (error) {
    $("answer").replaceChildren(text("p", error.message, "error"));
    $("answer").firstChild.setAttribute("role", "alert");
  } finally {
    asking = null;
    $("ask").disabled = false;
  }
}

// ---- managing (admin): upload, sync, remove -------------------------------------------------

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

function managed() {
  return $("upload-collection").value.trim() || $("docs-collection").value;
}

async function listDocuments() {
  const name = managed();
  const list = $("doc-list");
  if (!name || !collections.some((c) => c.id === name)) return list.replaceChildren();
  try {
    const docs = (await getJSON(`/v1/collections/${encodeURIComponent(name)}/documents`)).data;
    list.replaceChildren(
      ...docs.map((d) => {
        const li = text("li", `${d.title || d.path} (${d.chunks} passages) `);
        const b = text("button", "Remove");
        b.type = "button";
        b.setAttribute("aria-label", `Remove ${d.title || d.path}`);
        b.addEventListener("click", async () => {
          if (!window.confirm(`Remove "${d.title || d.path}" from ${name}?`)) return;
          try {
            await postJSON(`/v1/collections/${encodeURIComponent(name)}/documents/remove`, { ref: String(d.id) });
            $("manage-status").textContent = `Removed ${d.title || d.path}.`;
            await loadCollections();
          } catch (error) {
            $("manage-status").textContent = error.message;
          }
        });
        li.append(b);
        return li;
      }),
    );
  } catch (error) {
    list.replaceChildren(text("li", error.message, "note"));
  }
}

function reportLine(r) {
  const parts = [`${r.added.length} added`, `${r.updated.length} updated`, `${r.unchanged} unchanged`];
  if (r.removed && r.removed.length) parts.push(`${r.removed.length} removed`);
  if (r.skipped && r.skipped.length) parts.push(`${r.skipped.length} skipped: ${r.skipped.map((s) => `${s.path}: ${s.error}`).join("; ")}`);
  return `${r.collection}: ${parts.join(", ")}.`;
}

async function upload(event) {
  event.preventDefault();
  const name = managed();
  const files = [...$("upload-files").files];
  if (!name || !files.length) {
    $("manage-status").textContent = "Name a collection and choose files.";
    return;
  }
  $("manage-status").textContent = "Indexing…";
  try {
    const body = { files: await Promise.all(files.map(async (f) => ({ name: f.name, content_base64: base64(await f.arrayBuffer()) }))) };
    const report = await postJSON(`/v1/collections/${encodeURIComponent(name)}/documents`, body);
    $("manage-status").textContent = reportLine(report);
    $("upload-files").value = "";
    await loadCollections();
    $("docs-collection").value = name;
    describe();
  } catch (error) {
    $("manage-status").textContent = `Not indexed: ${error.message}`;
  }
}

async function sync() {
  const name = managed();
  try {
    $("manage-status").textContent = reportLine(await postJSON(`/v1/collections/${encodeURIComponent(name)}/sync`, {}));
    await loadCollections();
  } catch (error) {
    $("manage-status").textContent = error.message;
  }
}

export function initDocs() {
  $("docs-collection").addEventListener("change", () => {
    describe();
    listDocuments();
  });
  $("upload-form").addEventListener("submit", upload);
  $("docs-sync").addEventListener("click", sync);
  $("upload-collection").addEventListener("change", listDocuments);
  $("ask-form").addEventListener("submit", ask);
  loadCollections();
  return { reload: loadCollections };
}
