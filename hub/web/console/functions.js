// Functions: the list (with warm workers from /readyz) and one function's page: limits, versions,
// aliases, workers, recent invocations and an Invoke form.

import { api, refreshNow } from "./api.js";
import {
  badge, clear, errorBox, errorDetails, facts, fmtBytes, fmtMs, h, jsonBlock, link, route, section,
  shortVersion, table, textBlock, time, withQuery,
} from "./dom.js";
import { invocationRows } from "./invocations.js";

async function poolRows() {
  // /readyz is public and answers 503 (with the same body) when the hub is not ready
  const ready = await api("readyz", { auth: false }).catch(() => null);
  return (ready && ready.pool && ready.pool.functions) || null;
}

function workers(pool, name) {
  if (!pool) return "n/a";
  const row = pool[name];
  return row ? `${row.warm} warm, ${row.busy} busy${row.queued ? `, ${row.queued} queued` : ""}` : "0 warm";
}

export async function list(ctx) {
  const body = h("div");
  clear(ctx.main, h("h1", {}, "Functions"), body);
  const load = async () => {
    const [fns, pool] = await Promise.all([api("v1/functions"), poolRows()]);
    if (!ctx.alive()) return;
    clear(body, table([
      ["Name", (f) => link(route("functions", f.name), f.name)],
      ["Version", (f) => shortVersion(f.version)],
      ["Handler", (f) => h("code", {}, f.handler)],
      ["Timeout", (f) => `${f.timeout_s} s`],
      ["Memory", (f) => `${f.memory_mb} MB`],
      ["Concurrency", (f) => String(f.max_concurrency)],
      ["Network", (f) => (f.network ? "yes" : "no")],
      ["Aliases", (f) => (f.aliases || []).map((a) => a.name).join(", ") || "—"],
      ["Workers", (f) => workers(pool, f.name)],
      ["Updated", (f) => time(f.updated_at)],
    ], fns.functions, { empty: "No functions yet: PUT /v1/functions/NAME or trigger-hub deploy DIR.",
      rowAttrs: (f) => ({ "data-function": f.name }) }));
  };
  await load();
  return load;
}

export async function detail(ctx) {
  const [name] = ctx.params;
  const head = h("div");
  const recent = h("div");
  const form = invokeForm(name);
  clear(ctx.main,
    h("p", { class: "muted" }, link("#/functions", "Functions"), " / ", name),
    h("h1", {}, name), head,
    section("Invoke", form),
    section("Recent invocations", recent,
      h("p", {}, link(withQuery("#/invocations", { function: name }), "All invocations of this function →"))));
  const load = async () => {
    const [fn, aliases, pool, invs] = await Promise.all([
      api(`v1/functions/${encodeURIComponent(name)}`),
      api(`v1/functions/${encodeURIComponent(name)}/aliases`),
      poolRows(),
      api("v1/invocations", { query: { function: name, limit: 20 } }),
    ]);
    if (!ctx.alive()) return;
    clear(head, renderHead(fn, aliases, pool));
    clear(recent, invocationRows(invs.invocations, { showFunction: false }));
  };
  await load();
  return load;
}

function renderHead(fn, aliases, pool) {
  const row = pool ? pool[fn.name] : null;
  return [
    fn.description ? h("p", {}, fn.description) : null,
    facts([
      ["Current version", h("code", {}, fn.version)],
      ["Handler", h("code", {}, fn.handler)],
      ["Timeout", `${fn.timeout_s} s`],
      ["Memory", `${fn.memory_mb} MB`],
      ["Max concurrency", String(fn.max_concurrency)],
      ["Network", fn.network ? "allowed" : "none"],
      ["Environment", Object.keys(fn.env || {}).length ? Object.keys(fn.env).join(", ") : "—"],
      ["Code size", fmtBytes(fn.code_size)],
      ["Dependencies", fn.deps ? (fn.deps.packages || []).join(", ") || "—" : "—"],
      ["Workers", workers(pool, fn.name)],
      ["Triggers", (fn.triggers || []).length
        ? (fn.triggers || []).flatMap((t, i) => [i ? ", " : "", link(route("triggers", t), t)]) : "none"],
      ["Updated", time(fn.updated_at)],
    ]),
    section("Versions", table([
      ["Version", (v) => h("code", {}, v.version)],
      ["Created", (v) => time(v.created_at)],
      ["Size", (v) => fmtBytes(v.code_size)],
      ["Current", (v) => (v.latest ? badge("latest", "ok") : "")],
      ["Aliases", (v) => (v.aliases || []).join(", ") || "—"],
      ["Warm workers", (v) => {
        const w = row && row.versions ? row.versions[v.version] : null;
        return w ? `${w.warm} warm, ${w.busy} busy` : "0";
      }],
    ], fn.versions || [])),
    section("Aliases", table([
      ["Alias", (a) => a.name],
      ["Version", (a) => h("code", {}, a.version)],
      ["Description", (a) => a.description || "—"],
      ["Updated", (a) => time(a.updated_at || a.created_at)],
    ], aliases.aliases || [], { empty: `No aliases (latest is ${aliases.latest}).` })),
  ];
}

function invokeForm(name) {
  const payload = h("textarea", { id: "invoke-body", name: "body", spellcheck: "false" }, "{}");
  const qualifier = h("input", { id: "invoke-qualifier", name: "qualifier", placeholder: "latest", size: 18 });
  const mode = h("select", { name: "mode", "aria-label": "mode" },
    h("option", { value: "sync" }, "sync (wait for the result)"), h("option", { value: "async" }, "async (queue it)"));
  const out = h("div", { id: "invoke-result", "aria-live": "polite" });
  const button = h("button", { type: "submit" }, "Invoke");
  const form = h("form", { id: "invoke-form", "data-needs": "invoke" },
    h("label", { for: "invoke-body" }, "Event (JSON, sent as the request body)"), payload,
    h("div", { class: "actions" },
      h("label", {}, "Version or alias ", qualifier), mode, button));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = payload.value.trim();
    if (text) {
      try { JSON.parse(text); } catch (exc) { return clear(out, errorBox(`The event is not valid JSON: ${exc.message}`)); }
    }
    const q = qualifier.value.trim();
    const query = { mode: mode.value === "async" ? "async" : null };
    if (q) query[/^[0-9a-f]{16}$/.test(q) ? "version" : "alias"] = q;
    button.disabled = true;
    clear(out, h("p", { class: "loading" }, "running…"));
    try {
      const rec = await api(`v1/functions/${encodeURIComponent(name)}/invoke`,
        { method: "POST", query, body: text || undefined });
      clear(out, renderInvokeResult(rec));
      refreshNow().catch(() => {});
    } catch (exc) {
      clear(out, errorBox(exc));
    } finally {
      button.disabled = false;
    }
  });
  return h("div", {}, form, out);
}

export function renderInvokeResult(rec) {
  if (rec.status === "queued") {
    return h("div", { class: "result" }, h("p", {}, "Queued as ",
      link(route("invocations", rec.invocation_id), rec.invocation_id), "."));
  }
  const ok = rec.status === "succeeded";
  return h("div", { class: `result ${ok ? "ok" : "bad"}` },
    h("p", {}, badge(rec.status), " ", fmtMs(rec.duration_ms), ` · billed ${fmtMs(rec.billed_ms)}`,
      rec.cold_start ? " · cold start" : " · warm", " · ",
      link(route("invocations", rec.invocation_id), "record")),
    ok ? [h("h3", {}, "Result"), jsonBlock(rec.result, { class: "json invoke-output" })] : errorDetails(rec.error),
    rec.stdout ? [h("h3", {}, "stdout"), textBlock(rec.stdout)] : null,
    rec.stderr ? [h("h3", {}, "stderr"), textBlock(rec.stderr)] : null);
}
