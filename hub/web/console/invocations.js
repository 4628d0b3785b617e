// Invocations: a filtered, paged list (newest first) and one invocation with its REPORT fields,
// result, error and output.

import { api } from "./api.js";
import {
  badge, clear, errorDetails, facts, fmtMs, fmtNum, h, jsonBlock, link, route, section, table, textBlock,
  time, withQuery,
} from "./dom.js";

const STATUSES = ["", "succeeded", "failed", "timeout", "out_of_memory", "crashed", "throttled", "partial"];
const FILTERS = ["function", "trigger", "status", "event_id", "trace_id", "from", "to"];

/** A table of invocation records (also used on a function's page). */
export function invocationRows(records, { showFunction = true, empty = "No invocations yet." } = {}) {
  return table([
    ["Started", (r) => link(route("invocations", r.invocation_id), time(r.started_at))],
    showFunction ? ["Function", (r) => (r.function ? link(route("functions", r.function), r.function) : "—")] : null,
    ["Status", (r) => badge(r.status)],
    ["Duration", (r) => fmtMs(r.duration_ms)],
    ["Billed", (r) => fmtMs(r.billed_ms)],
    ["Start", (r) => (r.cold_start === undefined || r.cold_start === null ? "—"
      : r.cold_start ? badge("cold") : badge("warm"))],
    ["Trigger", (r) => (r.trigger ? link(route("triggers", r.trigger), r.trigger)
      : h("span", { class: "muted" }, r.request_id ? "invoke" : "—"))],
    ["Attempt", (r) => String(r.attempt ?? "—")],
    ["Events", (r) => String(r.batch_size || (r.event_ids || []).length || 1)],
    ["Id", (r) => link(route("invocations", r.invocation_id), h("code", {}, r.invocation_id))],
  ].filter(Boolean), records, { empty, rowAttrs: (r) => ({ "data-invocation-id": r.invocation_id, "data-status": r.status }) });
}

/** The From/To filters are UTC, like every time the console shows (dom.js fmtTime) and the
 * API's own naive times: "2025-05-01 12:00:00", "2025-05-01T12:00", "2025-05-01". A browser's
 * datetime-local input would show and read local time in the locale's own format instead. */
const UTC_INPUT = /^(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?(?:Z|UTC| UTC)?$/i;

function toApiTime(text) {
  if (!text) return "";
  const m = UTC_INPUT.exec(text.trim());
  if (!m) return text; // passed on as typed: the API answers a 400 that says what it takes
  const [, y, mo, d, hh = "00", mi = "00", ss = "00"] = m;
  return `${y}-${mo}-${d}T${hh}:${mi}:${ss}Z`;
}

function toUtcInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().slice(0, 19).replace("T", " ");
}

function filterForm(query) {
  const field = (name, label, input) => h("label", {}, label, input);
  const text = (name, placeholder) => h("input", { name, value: query[name] || "", placeholder, size: 16 });
  const status = h("select", { name: "status" }, STATUSES.map((s) =>
    h("option", { value: s, selected: (query.status || "") === s }, s || "any")));
  const when = (name) => h("input", { name, value: toUtcInput(query[name]), size: 19,
    placeholder: "YYYY-MM-DD HH:MM:SS", title: "UTC, e.g. 2025-05-01 12:00:00 (or just 2025-05-01)" });
  const form = h("form", { class: "inline", id: "invocation-filters", role: "search" },
    field("function", "Function", text("function", "any")),
    field("trigger", "Trigger", text("trigger", "any")),
    field("status", "Status", status),
    field("from", "From (UTC)", when("from")),
    field("to", "To (UTC)", when("to")),
    query.event_id ? field("event_id", "Event id", text("event_id", "")) : null,
    query.trace_id ? field("trace_id", "Trace id", text("trace_id", "")) : null,
    h("button", { type: "submit" }, "Filter"),
    h("a", { href: "#/invocations" }, "clear"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = {};
    for (const key of FILTERS) {
      const value = String(data.get(key) || "").trim();
      if (value) next[key] = key === "from" || key === "to" ? toApiTime(value) : value;
    }
    location.hash = withQuery("#/invocations", next);
  });
  return form;
}

export async function list(ctx) {
  const query = Object.fromEntries(FILTERS.filter((k) => ctx.query[k]).map((k) => [k, ctx.query[k]]));
  const rows = h("div");
  const more = h("div", { class: "actions" });
  clear(ctx.main, h("h1", {}, "Invocations"), filterForm(ctx.query), rows, more);
  let records = [];
  let pages = 1;
  const page = async (cursor) => {
    const body = await api("v1/invocations", { query: { ...query, limit: 50, cursor } });
    if (!ctx.alive()) return;
    records = cursor ? records.concat(body.invocations) : body.invocations;
    clear(rows, invocationRows(records, { empty: "No invocation matches." }));
    const button = h("button", { type: "button", class: "secondary" }, "More");
    button.addEventListener("click", async () => {
      button.disabled = true;
      pages += 1;
      await page(body.next_cursor);
    });
    clear(more, body.next_cursor ? button : null, h("span", { class: "muted" },
      `${records.length} shown${body.next_cursor ? "" : " (all)"}`));
  };
  await page(null);
  // auto-refresh reloads the first page only until the user pages further (then it would jump)
  return async () => {
    if (pages === 1) await page(null);
  };
}

export async function detail(ctx) {
  const [id] = ctx.params;
  const body = h("div");
  clear(ctx.main, h("p", { class: "muted" }, link("#/invocations", "Invocations"), " / ", id),
    h("h1", {}, "Invocation ", h("code", {}, id)), body);
  const load = async () => {
    const r = await api(`v1/invocations/${encodeURIComponent(id)}`);
    if (!ctx.alive()) return;
    clear(body, renderRecord(r));
    return r.status === "queued"; // keep refreshing while it waits
  };
  await load();
  return load;
}

function reportLine(r) {
  // Lambda's REPORT line: Duration, Billed Duration, Max Memory Used, Init Duration
  const parts = [
    `Duration: ${fmtMs(r.duration_ms)}`,
    `Billed Duration: ${r.billed_ms ?? "—"} ms`,
    r.memory_mb ? `Memory Size: ${r.memory_mb} MB` : null,
    `Max Memory Used: ${r.max_memory_mb === null || r.max_memory_mb === undefined ? "—" : fmtNum(r.max_memory_mb, 1)} MB`,
    r.cold_start ? `Init Duration: ${fmtMs(r.init_duration_ms)}` : null,
  ].filter(Boolean);
  return h("pre", { class: "text report" }, `REPORT RequestId: ${r.invocation_id}\t${parts.join("\t")}`);
}

/** An http(s) URL as given, else null: only such a link is ever made (never javascript: etc.). */
function httpUrl(text) {
  if (typeof text !== "string" || !text) return null;
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** The invocation's OpenTelemetry trace id: text to copy (a button copies it, or selects it where
 * the clipboard is not available, e.g. a page not served over https or from localhost), a link to
 * the trace UI when the hub has HUB_TRACE_URL_TEMPLATE (the record's trace_url), and the
 * invocations of the same trace. */
function traceCell(r) {
  const code = h("code", { id: "invocation-trace-id", title: "OpenTelemetry trace id" }, r.trace_id);
  const copy = h("button", { type: "button", class: "secondary", id: "invocation-trace-copy" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(r.trace_id);
      copy.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(code);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      copy.textContent = "Selected: copy with Ctrl+C";
    }
  });
  const url = httpUrl(r.trace_url);
  return h("span", {}, code, " ", copy,
    url ? [" ", h("a", { href: url, id: "invocation-trace-link", target: "_blank", rel: "noopener noreferrer" }, "open trace")] : null,
    " ", link(withQuery("#/invocations", { trace_id: r.trace_id }), "invocations of this trace"));
}

function renderRecord(r) {
  if (r.status === "queued") {
    return h("p", {}, badge("queued"), " waiting to run (an async invoke); this page updates when it has run.");
  }
  const events = r.event_ids || (r.event_id ? [r.event_id] : []);
  return [
    facts([
      ["Status", h("span", {}, badge(r.status), r.exit_code !== undefined && r.exit_code !== null ? ` exit code ${r.exit_code}` : "",
        r.signal ? ` signal ${r.signal}` : "")],
      ["Function", r.function ? link(route("functions", r.function), r.function) : "—"],
      ["Version", h("span", {}, h("code", {}, r.version || "—"), r.qualifier && r.qualifier !== r.version ? ` (asked for ${r.qualifier})` : "")],
      ["Trigger", r.trigger ? link(route("triggers", r.trigger), r.trigger) : "—"],
      ["Attempt", String(r.attempt ?? "—")],
      ["Started", time(r.started_at)],
      ["Finished", time(r.finished_at)],
      ["Duration", fmtMs(r.duration_ms)],
      ["Billed", r.billed_ms === undefined ? "—" : `${r.billed_ms} ms`],
      ["Max memory", r.max_memory_mb === undefined || r.max_memory_mb === null ? "—" : `${fmtNum(r.max_memory_mb, 1)} MB`],
      ["Cold start", r.cold_start ? `yes (init ${fmtMs(r.init_duration_ms)})` : "no (warm worker)"],
      r.request_id ? ["Request id", h("code", {}, r.request_id)] : null,
      r.trace_id ? ["Trace", traceCell(r)] : null,
    ]),
    reportLine(r),
    section(`Events (${events.length})`, table([
      ["Event id", (e) => h("code", {}, e)],
      ["Outcome", (e) => {
        const item = (r.items || []).find((i) => i.event_id === e);
        return item ? badge(item.status) : badge(r.status);
      }],
      ["All attempts", (e) => link(withQuery("#/invocations", { event_id: e }), "invocations of this event")],
    ], events, { empty: "No event ids (a direct invoke)." })),
    r.error ? section("Error", errorDetails(r.error)) : section("Result", jsonBlock(r.result, { id: "invocation-result" })),
    section("stdout", r.stdout ? textBlock(r.stdout, { id: "invocation-stdout" }) : h("p", { class: "empty" }, "(nothing)")),
    section("stderr", r.stderr ? textBlock(r.stderr, { id: "invocation-stderr" }) : h("p", { class: "empty" }, "(nothing)")),
    r.output_truncated ? h("p", { class: "muted" }, "Output was truncated (64 KB per stream).") : null,
  ];
}
