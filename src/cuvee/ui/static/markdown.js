// Markdown to DOM nodes, for text nobody vouches for (model output, document text). Nothing is
// ever parsed as HTML: every piece of text becomes a text node, and the only elements are the
// ones this file creates. Links keep only http(s) and mailto targets; anything else
// (javascript:, data:, a relative path) stays plain text.

const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

// `code`, **bold**, *emphasis* or _emphasis_, [text](url)
const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|(?<![\w])_([^_]+)_(?![\w])|\[([^\]]+)\]\(([^)\s]+)\)/g;

export function inline(text) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) out.append(text.slice(last, match.index));
    const [whole, code, bold, em, em2, label, href] = match;
    if (code !== undefined) out.append(el("code", code));
    else if (bold !== undefined) out.append(el("strong", inline(bold)));
    else if (em !== undefined || em2 !== undefined) out.append(el("em", inline(em ?? em2)));
    else if (SAFE_LINK.test(href)) {
      const a = el("a", inline(label));
      a.href = href;
      a.rel = "noopener noreferrer nofollow";
      a.target = "_blank";
      out.append(a);
    } else out.append(whole);
    last = match.index + whole.length;
  }
  if (last < text.length) out.append(text.slice(last));
  return out;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    p.append(inline(line));
  });
  return p;
}

// Blocks: fenced code, headings, bulleted and numbered lists, tables, quotes, paragraphs.
export function render(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*```/);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !/^\s*```/.test(lines[i])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of an unfinished stream)
      out.append(el("pre", el("code", body.join("\n"))));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      // headings inside a message sit below the page's own: h4 at most
      out.append(el(`h${Math.min(6, heading[1].length + 3)}`, inline(heading[2])));
      i += 1;
      continue;
    }
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = el(ordered ? "ol" : "ul");
      while (i < lines.length) {
        const m = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
        if (!m || /\d/.test(m[1]) !== ordered) break;
        list.append(el("li", inline(m[2])));
        i += 1;
      }
      out.append(list);
      continue;
    }
    if (/^\s*\|.*\|\s*$/.test(line) && /^\s*\|[\s:|-]+\|\s*$/.test(lines[i + 1] || "")) {
      flush();
      const cells = (row) => row.trim().replace(/^\||\|$/g, "").split("|").map((c) => c.trim());
      const table = el("table");
      const head = el("tr", ...cells(line).map((c) => el("th", inline(c))));
      table.append(el("thead", head));
      const body = el("tbody");
      i += 2;
      while (i < lines.length && /^\s*\|.*\|\s*$/.test(lines[i])) {
        body.append(el("tr", ...cells(lines[i]).map((c) => el("td", inline(c)))));
        i += 1;
      }
      table.append(body);
      out.append(table);
      continue;
    }
    const quote = line.match(/^>\s?(.*)$/);
    if (quote) {
      flush();
      const quoted = [];
      while (i < lines.length && /^>/.test(lines[i])) quoted.push(lines[i++].replace(/^>\s?/, ""));
      out.append(el("blockquote", render(quoted.join("\n"))));
      continue;
    }
    if (!line.trim()) flush();
    else para.push(line);
    i += 1;
  }
  flush();
  return out;
}
