// A small Markdown renderer for model answers that builds DOM nodes and sets only
// textContent: model text is never parsed as HTML, so `<img onerror=...>` or `<script>`
// in an answer shows as those characters. It covers what chat answers use: fenced code
// (also an unclosed fence while the answer streams), headings, lists, quotes, rules,
// paragraphs, and inline code, bold, italic and links (http, https and mailto only).

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const BULLET = /^ {0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^ {0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

// Inline markup, left to right: the earliest match wins; text between matches is text.
const INLINE = [
  { kind: "code", re: /`([^`\n]+)`/ },
  { kind: "link", re: /\[([^\]\n]+)\]\(([^)\s]+)\)/ },
  { kind: "strong", re: /\*\*(?=\S)([^\n]*?\S)\*\*|__(?=\S)([^\n]*?\S)__/ },
  { kind: "em", re: /\*(?=\S)([^*\n]*?\S)\*|\b_(?=\S)([^_\n]*?\S)_\b/ },
];

export function renderInline(text, parent) {
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const match = rule.re.exec(rest);
      if (match && (best === null || match.index < best.match.index)) {
        best = { rule, match };
      }
    }
    if (best === null) {
      parent.append(document.createTextNode(rest));
      return;
    }
    const { rule, match } = best;
    if (match.index > 0) parent.append(document.createTextNode(rest.slice(0, match.index)));
    if (rule.kind === "code") {
      const code = el("code");
      code.textContent = match[1];
      parent.append(code);
    } else if (rule.kind === "link") {
      if (SAFE_LINK.test(match[2])) {
        const link = el("a");
        link.href = match[2];
        link.rel = "noopener noreferrer nofollow";
        link.target = "_blank";
        renderInline(match[1], link);
        parent.append(link);
      } else {
        parent.append(document.createTextNode(match[0]));
      }
    } else {
      const node = el(rule.kind);
      renderInline(match[1] ?? match[2], node);
      parent.append(node);
    }
    rest = rest.slice(match.index + match[0].length);
  }
}

function codeBlock(lines, language) {
  const pre = el("pre", "code");
  const code = el("code");
  if (language) code.dataset.language = language;
  code.textContent = lines.join("\n");
  const copy = el("button", "copy");
  copy.type = "button";
  copy.textContent = "Copy";
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(code.textContent).then(
      () => (copy.textContent = "Copied"),
      () => (copy.textContent = "Copy failed"),
    );
  });
  pre.append(copy, code);
  return pre;
}

// Block structure, one line at a time; returns the nodes for `lines`.
function blocks(lines) {
  const out = [];
  let paragraph = [];
  const flush = () => {
    if (paragraph.length) {
      const p = el("p");
      paragraph.forEach((line, i) => {
        if (i) p.append(el("br"));
        renderInline(line, p);
      });
      out.push(p);
      paragraph = [];
    }
  };
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let match;
    if ((match = FENCE.exec(line))) {
      flush();
      const fence = match[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence)) {
        body.push(lines[i]);
        i += 1;
      }
      out.push(codeBlock(body, match[2]));
      i += 1; // the closing fence (or past the end while it streams)
    } else if (!line.trim()) {
      flush();
      i += 1;
    } else if ((match = HEADING.exec(line))) {
      flush();
      const heading = el(`h${Math.min(match[1].length + 2, 6)}`);
      renderInline(match[2], heading);
      out.push(heading);
      i += 1;
    } else if (RULE.test(line)) {
      flush();
      out.push(el("hr"));
      i += 1;
    } else if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && (match = QUOTE.exec(lines[i]))) {
        quoted.push(match[1]);
        i += 1;
      }
      const quote = el("blockquote");
      quote.append(...blocks(quoted));
      out.push(quote);
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      flush();
      const ordered = !BULLET.test(line);
      const pattern = ordered ? NUMBERED : BULLET;
      const list = el(ordered ? "ol" : "ul");
      if (ordered) list.start = Number(NUMBERED.exec(line)[1]);
      while (i < lines.length && (match = pattern.exec(lines[i]))) {
        const item = el("li");
        renderInline(ordered ? match[2] : match[1], item);
        list.append(item);
        i += 1;
        // Indented continuation lines belong to the item.
        while (i < lines.length && /^\s{2,}\S/.test(lines[i]) && !pattern.test(lines[i])) {
          item.append(el("br"));
          renderInline(lines[i].trim(), item);
          i += 1;
        }
      }
      out.push(list);
    } else {
      paragraph.push(line);
      i += 1;
    }
  }
  flush();
  return out;
}

// Replace `container`'s children with `text` rendered as Markdown.
export function render(text, container) {
  container.replaceChildren(...blocks(text.split(/\r?\n/)));
}
