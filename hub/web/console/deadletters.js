// Dead letters: list (by trigger), inspect (the event and every attempt's error), replay one or all
// of a trigger (one POST each), purge a trigger's. A replay is queued; a successful run removes the
// dead letter, so it leaves the list on a later refresh.

import { api, refreshNow } from "./api.js";
import {
  badge, clear, errorBox, errorDetails, facts, h, jsonBlock, link, route, section, table, time, withQuery,
} from "./dom.js";

async function replay(id) {
  return api(`v1/dead-letters/${encodeURIComponent(id)}/replay`, { method: "POST" });
}

function replayButton(d, out) {
  const button = h("button", { type: "button", class: "secondary", "data-replay": d.id, "data-needs": "invoke" },
    "Replay");
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await replay(d.id);
      clear(out, h("p", { class: "notice" }, `Dead letter ${d.id} queued for replay; it leaves this list once the run succeeds.`));
      await refreshNow();
    } catch (exc) {
      clear(out, errorBox(exc));
      button.disabled = false;
    }
  });
  return button;
}

/** A button that asks once more in the page (no browser dialog) before it acts. */
function confirmButton(label, question, action, out) {
  const holder = h("span", { class: "actions" });
  const first = h("button", { type: "button", class: "danger", "data-needs": "deploy" }, label);
  first.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger" }, `Yes, ${label.toLowerCase()}`);
    const no = h("button", { type: "button", class: "secondary" }, "Cancel");
    no.addEventListener("click", () => clear(holder, first));
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      try {
        clear(out, h("p", { class: "notice" }, await action()));
      } catch (exc) {
        clear(out, errorBox(exc));
      }
      clear(holder, first);
      await refreshNow();
    });
    clear(holder, h("span", {}, question), yes, no);
  });
  return clear(holder, first);
}

function triggerActions(trigger, letters, out) {
  if (!trigger) return h("p", { class: "muted" }, "Pick a trigger to replay or purge all of its dead letters.");
  const all = h("button", { type: "button", class: "secondary", disabled: !letters.length, "data-needs": "invoke" },
    letters.length >= 1000 ? "Replay all (1000+)" : `Replay all ${letters.length}`);
  all.addEventListener("click", async () => {
    all.disabled = true;
    try {
      // one request: the hub queues every dead letter of the trigger, however many
      const r = await api("v1/dead-letters/replay", { method: "POST", query: { trigger } });
      clear(out, h("p", { class: "notice" }, `${r.queued} dead letter(s) of ${trigger} queued for replay.`));
    } catch (exc) {
      clear(out, h("p", { class: "error" }, `Replay failed: ${exc.message}`));
    }
    await refreshNow();
  });
  const purge = confirmButton("Purge", `Delete every dead letter of ${trigger}? `, async () => {
    const r = await api("v1/dead-letters", { method: "DELETE", query: { trigger } });
    return `Deleted ${r.deleted} dead letter(s) of ${trigger}.`;
  }, out);
  return h("div", { class: "actions" }, all, letters.length ? purge : null);
}

export async function list(ctx) {
  const trigger = ctx.query.trigger || "";
  const out = h("div", { "aria-live": "polite" });
  const actions = h("div");
  const body = h("div");
  const select = h("select", { name: "trigger", id: "dl-trigger" }, h("option", { value: "" }, "all triggers"));
  const form = h("form", { class: "inline" }, h("label", {}, "Trigger", select));
  select.addEventListener("change", () => { location.hash = withQuery("#/dead-letters", { trigger: select.value }); });
  clear(ctx.main, h("h1", {}, "Dead letters"), form, actions, out, body);
  let names = null;
  const load = async () => {
    const [{ dead_letters: letters }, triggers] = await Promise.all([
      api("v1/dead-letters", { query: { trigger, limit: 1000 } }),
      names ? Promise.resolve(null) : api("v1/triggers"),
    ]);
    if (!ctx.alive()) return;
    if (triggers) {
      names = triggers.triggers.map((t) => t.name);
      if (trigger && !names.includes(trigger)) names.push(trigger);
      clear(select, h("option", { value: "" }, "all triggers"),
        names.map((n) => h("option", { value: n, selected: n === trigger }, n)));
    }
    clear(actions, triggerActions(trigger, letters, out));
    clear(body, table([
      ["Created", (d) => link(route("dead-letters", d.id), time(d.created_at))],
      ["Trigger", (d) => (d.trigger ? link(route("triggers", d.trigger), d.trigger) : "— (invoke)")],
      ["Function", (d) => link(route("functions", d.function), d.function)],
      ["Event", (d) => h("code", {}, (d.event || {}).id || "—")],
      ["Attempts", (d) => String((d.attempts || []).length)],
      ["Last error", (d) => (d.last_error ? `${d.last_error.type || "Error"}: ${d.last_error.message || ""}` : d.last_status || "—")],
      ["", (d) => h("span", { class: "actions" }, replayButton(d, out), link(route("dead-letters", d.id), "inspect"))],
    ], letters, { empty: trigger ? `No dead letters for ${trigger}.` : "No dead letters.",
      rowAttrs: (d) => ({ "data-dead-letter": d.id, "data-event-id": (d.event || {}).id || "" }) }));
  };
  await load();
  return load;
}

export async function detail(ctx) {
  const [id] = ctx.params;
  const out = h("div", { "aria-live": "polite" });
  const body = h("div");
  clear(ctx.main, h("p", { class: "muted" }, link("#/dead-letters", "Dead letters"), " / ", id),
    h("h1", {}, "Dead letter"), out, body);
  const load = async () => {
    let d;
    try {
      d = await api(`v1/dead-letters/${encodeURIComponent(id)}`);
    } catch (exc) {
      if (exc.status !== 404) throw exc;
      if (ctx.alive()) {
        clear(body, h("p", {}, "This dead letter is gone: replayed successfully or purged. ",
          link(withQuery("#/invocations", {}), "Invocations →")));
      }
      return;
    }
    if (!ctx.alive()) return;
    const remove = confirmButton("Delete", "Delete this dead letter? ", async () => {
      await api(`v1/dead-letters/${encodeURIComponent(id)}`, { method: "DELETE" });
      return "Deleted.";
    }, out);
    clear(body,
      facts([
        ["Id", h("code", {}, d.id)],
        ["Trigger", d.trigger ? link(route("triggers", d.trigger), d.trigger) : "— (a direct invoke)"],
        ["Function", h("span", {}, link(route("functions", d.function), d.function),
          d.qualifier && d.qualifier !== "latest" ? ` (${d.qualifier})` : "")],
        ["Created", time(d.created_at)],
        ["Last status", d.last_status ? badge(d.last_status) : "—"],
        ["Event id", h("code", {}, (d.event || {}).id || "—")],
        ["Runs of this event", link(withQuery("#/invocations", { event_id: (d.event || {}).id }), "invocations")],
      ]),
      h("div", { class: "actions" }, replayButton(d, out), remove),
      section("Event", jsonBlock(d.event, { id: "dead-letter-event" })),
      section(`Attempts (${(d.attempts || []).length})`, (d.attempts || []).map((a) => h("div", { class: "attempt" },
        h("h3", {}, `Attempt ${a.attempt ?? "?"} `, a.status ? badge(a.status) : null, " ", time(a.at),
          a.invocation_id ? [" · ", link(route("invocations", a.invocation_id), "invocation")] : null),
        errorDetails(a.error)))));
  };
  await load();
  return load;
}
