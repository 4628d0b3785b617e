// Triggers: source, filter, state, enabled and the cursor (where each subscription stands: Kafka
// committed offsets and lag, a change stream's resume position against the oplog window, an S3
// inbox's depth, a schedule's next fire). The cursor comes from the trigger's "cursor" field; a
// hub without it shows "n/a".

import { api, refreshNow } from "./api.js";
import {
  NA, badge, clear, errorBox, facts, fmtNum, h, jsonBlock, link, route, section, table, time, withQuery,
} from "./dom.js";
import { invocationRows } from "./invocations.js";

// what PUT /v1/triggers/NAME accepts (everything else in a GET is the hub's own)
const SPEC_KEYS = ["function", "source", "filter", "retry", "batch", "ordering", "description", "enabled"];

export function describeSource(src) {
  switch (src.type) {
    case "s3": return `s3://${src.bucket}/${src.prefix || ""}${src.suffix ? `*${src.suffix}` : ""}`;
    case "mongodb": return `mongodb ${src.database}.${src.collection}`;
    case "kafka": return `kafka ${src.topic}`;
    case "http": return `http /fn${src.path}`;
    case "schedule": return `schedule ${src.cron || `rate ${src.rate}`}${src.timezone ? ` (${src.timezone})` : ""}`;
    default: return src.type;
  }
}

function filterText(filter) {
  const text = filter && Object.keys(filter).length ? JSON.stringify(filter) : "";
  if (!text) return h("span", { class: "muted" }, "everything");
  return h("code", { title: text }, text.length > 60 ? `${text.slice(0, 57)}…` : text);
}

function secs(s) {
  if (s === null || s === undefined) return "—";
  if (s < 120) return `${fmtNum(s, 1)} s`;
  if (s < 7200) return `${fmtNum(s / 60, 1)} min`;
  return `${fmtNum(s / 3600, 1)} h`;
}

/** The cursor in one cell: the headline figure, with the parts beneath. */
export function cursorCell(t) {
  const type = t.source.type;
  const c = t.cursor && typeof t.cursor === "object" ? t.cursor : null;
  const elsewhere = (what) => (c && c.held_elsewhere ? h("div", { class: "cursor-parts" }, what) : null);
  if (type === "schedule") {
    return h("span", { class: "cursor" }, "next ", time(t.next_fire),
      h("div", { class: "cursor-parts" }, "last fired ", time(t.last_fired),
        c && c.inbox_depth !== undefined ? ` · inbox ${c.inbox_depth ?? "—"}` : ""));
  }
  if (type === "http") return h("span", { class: "muted" }, "— (runs per request)");
  if (!c) return NA();
  if (type === "kafka") {
    const parts = (c.partitions || []).map((p) => `p${p.partition}: ${p.committed ?? "—"}/${p.end ?? "—"} lag ${p.lag ?? "—"}`);
    const unknown = c.lag === null || c.lag === undefined;
    return h("span", { class: "cursor", "data-lag": unknown ? "" : c.lag },
      h("span", { class: "lag" }, unknown ? "lag —" : `lag ${c.lag}`),
      unknown && !c.held_elsewhere ? h("div", { class: "cursor-parts" }, t.enabled ? "not consuming yet" : "not consuming (disabled)") : null,
      elsewhere("all partitions held by other instances"),
      c.group ? h("div", { class: "cursor-parts" }, `group ${c.group}`) : null,
      parts.length ? h("div", { class: "cursor-parts" }, parts.join(" · ")) : null);
  }
  if (type === "mongodb") {
    return h("span", { class: "cursor" },
      c.resume_token_at ? ["resumes at ", time(c.resume_token_at)] : "no resume position yet",
      h("div", { class: "cursor-parts" }, `age ${secs(c.age_s)} of a ${secs(c.oplog_window_s)} oplog window`),
      elsewhere("read by another instance"),
      c.at_risk ? h("div", {}, badge("at risk: the oplog may roll past the resume position", "at_risk")) : null);
  }
  if (type === "s3") return h("span", { class: "cursor" }, `inbox ${c.inbox_depth ?? "—"}`);
  return jsonBlock(c);
}

function stateCell(t) {
  const state = String(t.state || "n/a");
  const kind = state.startsWith("error") ? "error" : state;
  return badge(state.length > 40 ? `${state.slice(0, 37)}…` : state, kind);
}

async function setEnabled(name, enabled) {
  const doc = await api(`v1/triggers/${encodeURIComponent(name)}`);
  const spec = Object.fromEntries(SPEC_KEYS.filter((k) => k in doc).map((k) => [k, doc[k]]));
  spec.enabled = enabled;
  await api(`v1/triggers/${encodeURIComponent(name)}`, { method: "PUT", body: JSON.stringify(spec) });
}

function toggleButton(t, out) {
  const button = h("button", { type: "button", class: "secondary", "data-toggle": t.name, "data-needs": "deploy" },
    t.enabled ? "Disable" : "Enable");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await setEnabled(t.name, !t.enabled);
      clear(out, h("p", { class: "notice" }, `Trigger ${t.name} ${t.enabled ? "disabled" : "enabled"}.`));
      await refreshNow();
    } catch (exc) {
      clear(out, errorBox(exc));
      button.disabled = false;
    }
  });
  return button;
}

export async function list(ctx) {
  const body = h("div");
  const out = h("div", { "aria-live": "polite" });
  clear(ctx.main, h("h1", {}, "Triggers"), out, body);
  const load = async () => {
    const { triggers } = await api("v1/triggers");
    if (!ctx.alive()) return;
    clear(body, table([
      ["Name", (t) => link(route("triggers", t.name), t.name)],
      ["Function", (t) => link(route("functions", t.function.split(":")[0]), t.function)],
      ["Source", (t) => describeSource(t.source)],
      ["Filter", (t) => filterText(t.filter)],
      ["State", stateCell],
      ["Enabled", (t) => (t.enabled ? badge("enabled") : badge("disabled"))],
      ["Cursor", cursorCell],
      ["", (t) => h("span", { class: "actions" }, toggleButton(t, out),
        link(withQuery("#/dead-letters", { trigger: t.name }), "dead letters"))],
    ], triggers, { empty: "No triggers yet: PUT /v1/triggers/NAME, or a [[triggers]] table in function.toml.",
      rowAttrs: (t) => ({ "data-trigger": t.name }) }));
  };
  await load();
  return load;
}

function kafkaPartitions(c) {
  return table([
    ["Partition", (p) => String(p.partition)],
    ["Committed", (p) => String(p.committed ?? "—")],
    ["End", (p) => String(p.end ?? "—")],
    ["Lag", (p) => String(p.lag ?? "—")],
  ], c.partitions || [], { empty: "No partitions assigned yet." });
}

export async function detail(ctx) {
  const [name] = ctx.params;
  const out = h("div", { "aria-live": "polite" });
  const body = h("div");
  const recent = h("div");
  clear(ctx.main, h("p", { class: "muted" }, link("#/triggers", "Triggers"), " / ", name),
    h("h1", {}, name), out, body,
    section("Recent invocations", recent,
      h("p", {}, link(withQuery("#/invocations", { trigger: name }), "All invocations of this trigger →"))));
  const load = async () => {
    const [t, invs, dls] = await Promise.all([
      api(`v1/triggers/${encodeURIComponent(name)}`),
      api("v1/invocations", { query: { trigger: name, limit: 20 } }),
      api("v1/dead-letters", { query: { trigger: name, limit: 1000 } }),
    ]);
    if (!ctx.alive()) return;
    const c = t.cursor;
    clear(body,
      facts([
        ["Function", link(route("functions", t.function.split(":")[0]), t.function)],
        ["Source", describeSource(t.source)],
        ["State", stateCell(t)],
        ["Enabled", h("span", { class: "actions" }, t.enabled ? badge("enabled") : badge("disabled"), toggleButton(t, out))],
        ["Cursor", cursorCell(t)],
        ["Dead letters", link(withQuery("#/dead-letters", { trigger: name }), String(dls.dead_letters.length))],
        ["Description", t.description || "—"],
        ["Updated", time(t.updated_at)],
      ]),
      t.source.type === "kafka" && c && typeof c === "object" ? section("Partitions", kafkaPartitions(c)) : null,
      section("Source", jsonBlock(t.source)),
      section("Filter", jsonBlock(t.filter || {})),
      section("Retry, batch, ordering", jsonBlock({ retry: t.retry, batch: t.batch, ordering: t.ordering })));
    clear(recent, invocationRows(invs.invocations, { showFunction: false }));
  };
  await load();
  return load;
}
