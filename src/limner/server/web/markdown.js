// A small Markdown renderer for chat answers that builds DOM nodes, never HTML strings: every
// piece of the model's text becomes a text node, so nothing it writes can become markup.
// It knows what chat models write: fenced code blocks (with a Copy button), inline code,
// headings, bullet and numbered lists (nested by indentation), block quotes, rules, tables,
// bold, italic, strike-through and links (shown as text with their address, never followed).
// Half-written Markdown (an answer still streaming) renders as far as it goes.

import { copyText } from "./copy.js";

function el(tag, className, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}

// --- Inline: `code`, **bold**, *italic*, ~~strike~~, [text](address) --------------------------

const INLINE = new RegExp([
  /(`+)([\s\S]*?[^`])\1(?!`)/.source, // 1, 2: code
  /\*\*(?=\S)([\s\S]*?\S)\*\*/.source, // 3: bold
  /(?<![\w])__(?=\S)([\s\S]*?\S)__(?![\w])/.source, // 4: bold
  /\*(?=[^\s*])([\s\S]*?[^\s*])\*/.source, // 5: italic
  /(?<![\w])_(?=[^\s_])([\s\S]*?[^\s_])_(?![\w])/.source, // 6: italic
  /~~(?=\S)([\s\S]*?\S)~~/.source, // 7: strike
  /\[([^\]\n]+)\]\(((?:[^()\s]|\([^()\s]*\))+)(?:\s+"[^"]*")?\)/.source, // 8, 9: link
].join("|"), "g");

export function inline(text) {
  const nodes = [];
  let at = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > at) nodes.push(document.createTextNode(text.slice(at, match.index)));
    const [, , code, bold, bold2, italic, italic2, strike, label, address] = match;
    if (code !== undefined) nodes.push(el("code", "", code.replace(/^ (.*) $/s, "$1")));
    else if (bold !== undefined || bold2 !== undefined) nodes.push(el("strong", "", ...inline(bold ?? bold2)));
    else if (italic !== undefined || italic2 !== undefined) nodes.push(el("em", "", ...inline(italic ?? italic2)));
    else if (strike !== undefined) nodes.push(el("s", "", ...inline(strike)));
    else if (label !== undefined) {
      nodes.push(el("span", "link", ...inline(label)));
      if (address !== label) nodes.push(el("span", "address", ` (${address})`));
    }
    at = match.index + match[0].length;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

// Lines joined with line breaks, as chat models mean their single newlines.
function lines(texts) {
  const nodes = [];
  texts.forEach((text, i) => {
    if (i) nodes.push(document.createElement("br"));
    nodes.push(...inline(text));
  });
  return nodes;
}

// --- Blocks ------------------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
// A table's second line: | --- | :---: | ---: |
const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

function codeBlock(language, code) {
  const copy = el("button", "copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", "Copy the code");
  copy.addEventListener("click", () => copyText(code, copy));
  const head = el("div", "code-head", el("span", "language", language || "code"), copy);
  const pre = el("pre", "", el("code", "", code));
  return el("div", "code-block", head, pre);
}

// The cells of one table line; `\|` is a bar inside a cell.
function cells(line) {
  const inner = line.trim().replace(/^\|/, "").replace(/(?<!\\)\|$/, "");
  return inner.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function isTableStart(line, next) {
  return line.includes("|") && next.includes("|") && TABLE_RULE.test(next)
    && cells(next).length === cells(line).length;
}

// A GitHub table, in a box that scrolls sideways on its own so the page never does.
function table(head, rule, rows) {
  const align = cells(rule).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  const row = (texts, tag) => el("tr", "", ...align.map((a, i) => {
    const cell = el(tag, "", ...inline(texts[i] ?? ""));
    if (a) cell.style.textAlign = a;
    return cell;
  }));
  const body = el("tbody", "", ...rows.map((r) => row(cells(r), "td")));
  return el("div", "table-box", el("table", "", el("thead", "", row(cells(head), "th")), body));
}

function width(indent) {
  return indent.replace(/\t/g, "    ").length;
}

// A run of list lines (and their continuation lines) as nested <ul>/<ol>.
function list(items) {
  const root = { children: [], indent: -1 };
  const stack = [root];
  for (const item of items) {
    while (stack.length > 1 && item.indent <= stack[stack.length - 1].indent) stack.pop();
    const parent = stack[stack.length - 1];
    const node = { ...item, children: [] };
    parent.children.push(node);
    stack.push(node);
  }
  const build = (children) => {
    const groups = [];
    for (const child of children) {
      const last = groups[groups.length - 1];
      if (last && last.ordered === child.ordered) last.items.push(child);
      else groups.push({ ordered: child.ordered, items: [child] });
    }
    return groups.map((group) => {
      const node = el(group.ordered ? "ol" : "ul", "");
      if (group.ordered && group.items[0].start !== 1) node.start = group.items[0].start;
      for (const item of group.items) {
        node.append(el("li", "", ...lines(item.lines), ...build(item.children)));
      }
      return node;
    });
  };
  return build(root.children);
}

export function render(text) {
  const out = document.createDocumentFragment();
  const source = text.replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) out.append(el("p", "", ...lines(paragraph)));
    paragraph = [];
  };
  for (let i = 0; i < source.length; i++) {
    const line = source[i];
    let match;
    if ((match = FENCE.exec(line))) {
      flush();
      const fence = match[1];
      const body = [];
      for (i += 1; i < source.length; i++) {
        const closing = source[i].trim();
        if (closing.length >= fence.length && [...closing].every((c) => c === fence[0])) break;
        body.push(source[i]);
      }
      out.append(codeBlock(match[2], body.join("\n")));
    } else if (!line.trim()) {
      flush();
    } else if ((match = HEADING.exec(line))) {
      flush();
      out.append(el(`h${Math.min(6, match[1].length + 2)}`, "", ...inline(match[2])));
    } else if (isTableStart(line, source[i + 1] || "")) {
      flush();
      const [head, rule, rows] = [line, source[i + 1], []];
      for (i += 2; i < source.length && source[i].trim() && source[i].includes("|"); i++) rows.push(source[i]);
      i -= 1;
      out.append(table(head, rule, rows));
    } else if (RULE.test(line)) {
      flush();
      out.append(el("hr", ""));
    } else if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < source.length && (match = QUOTE.exec(source[i]))) {
        quoted.push(match[1]);
        i += 1;
      }
      i -= 1;
      out.append(el("blockquote", "", render(quoted.join("\n"))));
    } else if ((match = ITEM.exec(line))) {
      flush();
      const items = [];
      for (; i < source.length; i++) {
        const next = source[i];
        const item = ITEM.exec(next);
        if (item) {
          const ordered = /\d/.test(item[2]);
          items.push({ indent: width(item[1]), ordered, start: ordered ? parseInt(item[2], 10) : 1, lines: [item[3]] });
        } else if (next.trim() && /^\s/.test(next) && items.length) {
          items[items.length - 1].lines.push(next.trim()); // a continuation line
        } else if (!next.trim() && ITEM.test(source[i + 1] || "")) {
          continue; // a loose list: a blank line between items
        } else {
          break;
        }
      }
      i -= 1;
      out.append(...list(items));
    } else {
      paragraph.push(line);
    }
  }
  flush();
  return out;
}
