// The Trigger Hub console: a small static app. The page holds no data; everything comes from the
// hub's /v1 API with the token the operator pastes (kept in sessionStorage: gone with the tab).
// Hash routes (#/functions, #/triggers, ...) map to page modules; each page renders into <main>
// and may return a refresh() that the app calls every few seconds while nobody is editing a form.

import { ApiError, checkToken, setHooks, token, whoami } from "./api.js";
import { clear, errorBox, h } from "./dom.js";
import * as functions from "./functions.js";
import * as triggers from "./triggers.js";
import * as invocations from "./invocations.js";
import * as deadLetters from "./deadletters.js";
import * as usage from "./usage.js";

const REFRESH_MS = 3000;

// -- routes ------------------------------------------------------------------------------------
const ROUTES = [
  [/^functions$/, functions.list, "functions"],
  [/^functions\/([^/]+)$/, functions.detail, "functions"],
  [/^triggers$/, triggers.list, "triggers"],
  [/^triggers\/([^/]+)$/, triggers.detail, "triggers"],
  [/^invocations$/, invocations.list, "invocations"],
  [/^invocations\/([^/]+)$/, invocations.detail, "invocations"],
  [/^dead-letters$/, deadLetters.list, "dead-letters"],
  [/^dead-letters\/([^/]+)$/, deadLetters.detail, "dead-letters"],
  [/^usage$/, usage.page, "usage"],
];

let generation = 0; // bumped on every navigation: late answers for an old page are dropped
let refresher = null;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?", 2);
  return { path: path || "functions", query: Object.fromEntries(new URLSearchParams(query)) };
}

async function show() {
  const main = document.getElementById("main");
  if (!token.get()) return showLogin();
  document.body.classList.add("logged-in");
  if (!document.body.dataset.scope) await learnScope();
  document.getElementById("login").hidden = true;
  const { path, query } = parseHash();
  const mine = ++generation;
  refresher = null;
  const match = ROUTES.map(([re, render, tab]) => [path.match(re), render, tab]).find(([m]) => m);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", !!match && a.dataset.tab === match[2]);
    if (match && a.dataset.tab === match[2]) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!match) {
    clear(main, h("h1", {}, "Not found"), h("p", {}, "No page here. ", h("a", { href: "#/functions" }, "Functions")));
    return;
  }
  const [m, render] = match;
  let params;
  try {
    params = m.slice(1).map(decodeURIComponent);
  } catch {  // a malformed %-escape in a hand-typed link
    clear(main, h("h1", {}, "Not found"), h("p", {}, "This link is malformed. ", h("a", { href: "#/functions" }, "Functions")));
    return;
  }
  const ctx = { main, params, query, alive: () => mine === generation };
  clear(main, h("p", { class: "loading" }, "loading…"));
  try {
    const refresh = await render(ctx);
    if (mine === generation && typeof refresh === "function") refresher = refresh;
  } catch (exc) {
    if (mine === generation && !(exc instanceof ApiError && exc.status === 401)) {
      clear(main, errorBox(exc));
      refresher = show; // try again on the next tick (the hub may be restarting)
    }
  }
  markRefreshed();
}

// -- auto-refresh: the visible page's data, paused while a form is being edited ----------------
function editing() {
  const el = document.activeElement;
  if (el && el.closest("#main") && el.matches("input, textarea, select")) return true;
  return !!document.querySelector("#main form.dirty");
}

function markRefreshed(note = "") {
  const el = document.getElementById("refreshed");
  if (el) el.textContent = note || `updated ${new Date().toLocaleTimeString()}`;
}

async function tick(force = false) {
  if (!refresher || !token.get() || (!force && document.hidden)) return;
  if (!force && editing()) return markRefreshed("auto-refresh paused while you edit");
  const mine = generation;
  try {
    await refresher();
    if (mine === generation) markRefreshed();
  } catch (exc) {
    if (mine === generation && !(exc instanceof ApiError && exc.status === 401)) {
      markRefreshed(`refresh failed: ${exc.message}`);
    }
  }
}

// -- login -------------------------------------------------------------------------------------
function showLogin(message = "") {
  document.body.classList.remove("logged-in");
  clear(document.getElementById("main"));
  const login = document.getElementById("login");
  login.hidden = false;
  const error = document.getElementById("login-error");
  error.textContent = message;
  error.hidden = !message;
  document.getElementById("token").focus();
}

/** The token's scope on <body data-scope>: app.css hides every [data-needs] control above it
 * (the hub refuses those calls anyway, with a 403; the page just does not offer them). */
async function learnScope() {
  try {
    document.body.dataset.scope = (await whoami()).scope;
  } catch (exc) {
    if (!(exc instanceof ApiError)) throw exc;  // a 401 logs out through the hook
  }
}

function logout(message = "") {
  delete document.body.dataset.scope;
  token.clear();
  refresher = null;
  generation++;
  showLogin(message);
}

async function login(event) {
  event.preventDefault();
  const input = document.getElementById("token");
  const error = document.getElementById("login-error");
  const value = input.value.trim();
  if (!value) return;
  // The token is checked before it is kept: a wrong one is said here, not on the next page.
  let status;
  try {
    status = await checkToken(value);
  } catch (exc) {
    status = `unreachable (${exc.message})`;
  }
  if (status !== 200) {
    error.textContent = status === 401 ? "Wrong token: the hub answered 401 Unauthorized."
      : `The hub could not be asked: ${status}.`;
    error.hidden = false;
    input.select();
    return;
  }
  token.set(value);
  input.value = "";
  if (!location.hash || location.hash === "#/") location.hash = "#/functions";
  else show();
}

function start() {
  setHooks({ unauthorized: logout, refresh: () => tick(true) });
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", () => logout("Logged out."));
  document.getElementById("refresh").addEventListener("click", () => tick(true));
  const main = document.getElementById("main");
  // a form counts as being edited from its first change until it is submitted
  main.addEventListener("input", (e) => e.target.form?.classList.add("dirty"));
  main.addEventListener("submit", (e) => e.target.classList.remove("dirty"));
  window.addEventListener("hashchange", show);
  setInterval(tick, REFRESH_MS);
  show();
}

start();
