// The documents screen: ask a collection (a rag:NAME chat completion) and read the verified
// answer; each [n] opens the cited document at the quoted characters, highlighted. What the
// checker dropped, and abstentions, are shown as such.

import { getJSON, postJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
let collections = [];
let asking = null;

// "Title > Section", without repeating a title that is also the top heading (as cuvee ask does)
function place(title, section) {
  if (section && (section === title || section.startsWith(`${title} > `))) return section;
  return [title, section].filter(Boolean).join(" > ");
}

function text(tag, content, className) {
  const node = document.createElement(tag);
  node.textContent = content;
  if (className) node.className = className;
  return node;
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
  const dropped = (response.sentences || []).filter((s) => s.verdict === "unsupported" || s.verdict === "off_topic");
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

export function initDocs() {
  $("docs-collection").addEventListener("change", describe);
  $("ask-form").addEventListener("submit", ask);
  loadCollections();
  return { reload: loadCollections };
}
