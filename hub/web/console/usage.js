// Usage: what each function costs over a period, from GET /v1/usage (aggregated by the hub), as
// totals and an SVG bar chart drawn here (bars per hour or day; per function without a function).
// A hub without usage metering answers 404 there: the page says "n/a" and nothing breaks.

import { api } from "./api.js";
import { NA, clear, errorBox, fmtMs, fmtNum, h, link, route, s, table, withQuery } from "./dom.js";

const PERIODS = { "24h": 24 * 3600e3, "7d": 7 * 24 * 3600e3, "30d": 30 * 24 * 3600e3 };
const STEP = { hour: 3600e3, day: 24 * 3600e3 };
const METRICS = {
  invocations: { label: "Invocations (failures in red)", fmt: (v) => fmtNum(v), overlay: "failures" },
  billed_ms: { label: "Billed ms", fmt: (v) => fmtNum(v) },
  gb_seconds: { label: "GB-seconds", fmt: (v) => fmtNum(v, 4) },
  cold_starts: { label: "Cold starts", fmt: (v) => fmtNum(v) },
  throttles: { label: "Throttles", fmt: (v) => fmtNum(v) },
  p99_ms: { label: "p99 duration (ms)", fmt: (v) => fmtNum(v, 1) },
};
const TOTALS = [
  ["invocations", "invocations", (v) => fmtNum(v)], ["failures", "failures", (v) => fmtNum(v)],
  ["throttles", "throttles", (v) => fmtNum(v)], ["billed_ms", "billed", (v) => fmtMs(v)],
  ["gb_seconds", "GB-seconds", (v) => fmtNum(v, 4)], ["cold_starts", "cold starts", (v) => fmtNum(v)],
  ["p50_ms", "p50", (v) => fmtMs(v)], ["p99_ms", "p99", (v) => fmtMs(v)],
];

function settings(query) {
  const period = PERIODS[query.period] ? query.period : "24h";
  const granularity = STEP[query.granularity] ? query.granularity : period === "24h" ? "hour" : "day";
  const metric = METRICS[query.metric] ? query.metric : "invocations";
  const step = STEP[granularity];
  const to = Math.ceil((Date.now() + 1) / step) * step; // the end of the current bucket (UTC)
  return { fn: query.function || "", period, granularity, metric, to, from: to - PERIODS[period] };
}

function form(cfg, names) {
  const select = (name, label, options, value) => h("label", {}, label, h("select", { name },
    options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))));
  const f = h("form", { class: "inline", id: "usage-form" },
    select("function", "Function", [["", "all functions"], ...names.map((n) => [n, n])], cfg.fn),
    select("period", "Period", [["24h", "last 24 hours"], ["7d", "last 7 days"], ["30d", "last 30 days"]], cfg.period),
    select("granularity", "Per", [["hour", "hour"], ["day", "day"]], cfg.granularity),
    select("metric", "Chart", Object.entries(METRICS).map(([k, m]) => [k, m.label]), cfg.metric));
  // a change applies at once (no submit button): the selection lives in the URL
  f.addEventListener("change", () => {
    location.hash = withQuery("#/usage", Object.fromEntries(new FormData(f)));
  });
  return f;
}

export async function page(ctx) {
  const cfg = settings(ctx.query);
  const body = h("div", { id: "usage" });
  const { functions } = await api("v1/functions");
  const names = functions.map((f) => f.name);
  if (cfg.fn && !names.includes(cfg.fn)) names.push(cfg.fn);
  clear(ctx.main, h("h1", {}, "Usage"), form(cfg, names), body);
  const load = async () => {
    Object.assign(cfg, settings(ctx.query));  // the period moves on: a new hour appears while open
    const query = { function: cfg.fn, from: new Date(cfg.from).toISOString(), to: new Date(cfg.to).toISOString(),
      granularity: cfg.granularity };
    let usage;
    try {
      usage = await api("v1/usage", { query });
    } catch (exc) {
      if (!ctx.alive()) return;
      // no such route (aiohttp's own 404): this hub has no usage metering
      if (exc.status === 404 && exc.body && exc.body.error === "Not Found") {
        return clear(body, h("p", { class: "usage-na" }, NA(), " usage metering is not available on this hub ",
          "(GET /v1/usage answered 404)."));
      }
      return clear(body, errorBox(exc));
    }
    if (!ctx.alive()) return;
    clear(body, cfg.fn ? functionUsage(cfg, usage) : allFunctions(cfg, usage));
  };
  await load();
  return load;
}

function sumBuckets(buckets) {
  const out = {};
  for (const b of buckets) {
    for (const key of ["invocations", "failures", "throttles", "billed_ms", "gb_seconds", "cold_starts"]) {
      out[key] = (out[key] || 0) + (Number(b[key]) || 0);
    }
  }
  return out;
}

function totalsBox(totals) {
  return h("div", { class: "totals" }, TOTALS.map(([key, label, fmt]) =>
    h("div", { "data-total": key }, h("strong", {}, totals[key] === undefined || totals[key] === null ? NA() : fmt(totals[key])),
      h("span", {}, label))));
}

function slotLabel(t, granularity) {
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, "0");
  // days are UTC days (the hub's buckets); hours are shown in local time
  const day = granularity === "hour" ? `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
    : `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
  return granularity === "hour" ? `${day} ${pad(d.getHours())}:00` : day;
}

function functionUsage(cfg, usage) {
  const step = STEP[cfg.granularity];
  const buckets = usage.buckets || [];
  // every slot of the period, empty ones included, so the time axis is even
  const slots = new Map();
  for (let t = Math.floor(cfg.from / step) * step; t < cfg.to; t += step) slots.set(t, null);
  for (const b of buckets) {
    const t = Math.floor(Date.parse(b.start) / step) * step;
    if (!Number.isNaN(t)) slots.set(t, b);
  }
  const times = [...slots.keys()].sort((a, b) => a - b);
  const metric = METRICS[cfg.metric];
  const rows = times.map((t) => ({ label: slotLabel(t, cfg.granularity), bucket: slots.get(t) || {} }));
  return [
    totalsBox(usage.totals || sumBuckets(buckets)),
    h("h2", {}, `${metric.label} per ${cfg.granularity}: ${cfg.fn}`),
    barChart(rows.map((r) => ({
      label: r.label, value: Number(r.bucket[cfg.metric]) || 0,
      overlay: metric.overlay ? Number(r.bucket[metric.overlay]) || 0 : 0,
    })), metric.fmt, `${metric.label} of ${cfg.fn} per ${cfg.granularity}`),
    buckets.length ? null : h("p", { class: "empty" }, "No invocations in this period."),
  ];
}

function allFunctions(cfg, usage) {
  const rows = usage.functions || [];
  const metric = METRICS[cfg.metric];
  const sums = sumBuckets(rows);
  return [
    totalsBox({ ...sums, ...(usage.totals || {}) }),
    h("h2", {}, `${metric.label} per function`),
    barChart(rows.map((r) => ({ label: r.function, value: Number(r[cfg.metric]) || 0,
      overlay: metric.overlay ? Number(r[metric.overlay]) || 0 : 0 })), metric.fmt, `${metric.label} per function`),
    table([
      ["Function", (r) => link(withQuery("#/usage", { function: r.function, period: cfg.period,
        granularity: cfg.granularity, metric: cfg.metric }), r.function)],
      ["Invocations", (r) => fmtNum(r.invocations)],
      ["Failures", (r) => fmtNum(r.failures)],
      ["Throttles", (r) => fmtNum(r.throttles)],
      ["Billed", (r) => fmtMs(r.billed_ms)],
      ["GB-seconds", (r) => fmtNum(r.gb_seconds, 4)],
      ["Cold starts", (r) => fmtNum(r.cold_starts)],
      ["p50", (r) => fmtMs(r.p50_ms)],
      ["p99", (r) => fmtMs(r.p99_ms)],
      ["", (r) => link(route("functions", r.function), "function")],
    ], rows, { empty: "No usage in this period." }),
  ];
}

/** An SVG bar chart: one bar per item (value, with an optional red overlay from the baseline). */
export function barChart(items, fmt, title) {
  const W = 960, H = 240, left = 64, right = 12, top = 12, bottom = 46;
  const plotW = W - left - right, plotH = H - top - bottom;
  const max = Math.max(0, ...items.map((i) => i.value));
  const scale = max > 0 ? niceMax(max) : 1;
  const y = (v) => top + plotH - (v / scale) * plotH;
  const slot = items.length ? plotW / items.length : plotW;
  const barW = Math.max(1, Math.min(slot * 0.78, 72));
  const every = Math.max(1, Math.ceil(items.length / 12)); // at most ~12 labels on the time axis
  return s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title },
    s("title", {}, title),
    [0, 0.5, 1].map((f) => [
      s("line", { class: "grid", x1: left, x2: W - right, y1: y(scale * f), y2: y(scale * f) }),
      s("text", { x: left - 6, y: y(scale * f) + 4, "text-anchor": "end" }, fmt(scale * f)),
    ]),
    items.map((item, i) => {
      const x = left + i * slot + (slot - barW) / 2;
      const tip = `${item.label}: ${fmt(item.value)}${item.overlay ? ` (${fmt(item.overlay)} failed)` : ""}`;
      return s("g", { "data-label": item.label, "data-value": item.value },
        s("rect", { class: "bar", x, width: barW, y: y(item.value), height: Math.max(0, y(0) - y(item.value)) },
          s("title", {}, tip)),
        item.overlay ? s("rect", { class: "bar-bad", x, width: barW, y: y(item.overlay),
          height: Math.max(0, y(0) - y(item.overlay)) }, s("title", {}, tip)) : null,
        i % every === 0 ? s("text", { x: x + barW / 2, y: H - bottom + 16, "text-anchor": "middle" },
          item.label.length > 14 ? `${item.label.slice(0, 13)}…` : item.label) : null);
    }),
    s("line", { class: "axis", x1: left, x2: W - right, y1: y(0), y2: y(0) }));
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
