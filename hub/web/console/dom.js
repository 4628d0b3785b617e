// DOM building and formatting helpers. Everything shown goes through textContent or attributes
// set one by one: no HTML is ever parsed from data anywhere in the console.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return el;
}

/** h("a", {href: "#/x", class: "y"}, "text", child, [more]) */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** The same for SVG elements (the usage chart). */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function link(hash, text, attrs = {}) {
  return h("a", { href: hash, ...attrs }, text);
}

/** A hash route with its parts encoded: route("functions", name) -> "#/functions/NAME". */
export function route(...parts) {
  return "#/" + parts.map(encodeURIComponent).join("/");
}

export function withQuery(hash, query) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `${hash}?${text}` : hash;
}

/** A table: columns are [label, (row) => cell content]; rowAttrs(row) adds attributes to each tr. */
export function table(columns, rows, { empty = "nothing yet", rowAttrs = null, caption = null } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", {},
    caption ? h("caption", {}, caption) : null,
    h("thead", {}, h("tr", {}, columns.map(([label]) => h("th", { scope: "col" }, label)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs ? rowAttrs(row) : {},
      columns.map(([, cell]) => h("td", {}, cell(row)))))));
}

/** A definition list from [term, value] pairs (values may be nodes). */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.filter((p) => p).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

export function section(title, ...children) {
  return h("section", {}, h("h2", {}, title), ...children);
}

export function jsonBlock(value, attrs = {}) {
  return h("pre", { class: "json", ...attrs }, JSON.stringify(value, null, 2) ?? "null");
}

export function textBlock(text, attrs = {}) {
  return h("pre", { class: "text", ...attrs }, text ?? "");
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${String(kind).replace(/[^a-z_]/gi, "")}` }, text);
}

export const NA = () => h("span", { class: "na", title: "not available from this hub" }, "n/a");

/** Times are shown in UTC, whatever the browser's zone: the hub's records, usage days and the
 * invocation filters (invocations.js) are all UTC, so what a table shows can be typed back. */
export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().slice(0, 19).replace("T", " ");
}

export function time(iso) {
  return h("time", { datetime: iso || null, title: iso ? `${iso} (UTC)` : null }, fmtTime(iso));
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms >= 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (Number.isInteger(ms)) return `${ms} ms`;
  return `${Number(ms).toFixed(ms < 10 ? 2 : 1)} ms`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(Number(n))) return "—";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function shortVersion(v) {
  return v ? h("code", { title: v }, String(v).slice(0, 8)) : "—";
}

export function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err));
}

/** An invocation's error: type, message and the traceback (folded when long). */
export function errorDetails(error) {
  if (!error) return null;
  const head = `${error.type || "Error"}: ${error.message || ""}`;
  return h("div", { class: "fn-error" },
    h("p", { class: "error-head" }, head),
    error.traceback ? h("details", { open: true }, h("summary", {}, "traceback"),
      textBlock(error.traceback, { class: "text traceback" })) : null);
}
