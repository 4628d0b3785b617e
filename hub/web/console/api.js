// The one way the console talks to the hub: fetch() to /v1 with the operator's token.

const TOKEN_KEY = "trigger-hub-token";
const hooks = { unauthorized: () => {}, refresh: async () => {} };

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/** app.js wires these: what a 401 does (back to the login) and how a page refreshes now. */
export function setHooks(values) {
  Object.assign(hooks, values);
}

/** Pages call this after an action (replay, enable, invoke) to show its effect at once. */
export const refreshNow = () => hooks.refresh();

/** One API call. ``path`` is relative to the page (the hub may sit behind a path prefix);
 *  ``body`` is a string sent as JSON. Answers the parsed JSON; throws ApiError otherwise. */
export async function api(path, { method = "GET", query = null, body = undefined, auth = true, okStatuses = [] } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = {};
  if (auth) headers.Authorization = `Bearer ${token.get() || ""}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, { method, headers, body, cache: "no-store" });
  } catch (exc) {
    throw new ApiError(0, `the hub is unreachable (${exc.message})`, null);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (response.status === 401 && auth) {
    hooks.unauthorized("The hub refused the token (401). Log in again.");
    throw new ApiError(401, "not logged in", data);
  }
  if (!response.ok && !okStatuses.includes(response.status)) {
    const said = data && typeof data === "object" && data.error ? data.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, `${method} ${url.pathname}: ${said}`, data);
  }
  return data;
}

/** What the token may do ({name, scope, scopes}): the page hides what it cannot use. */
export async function whoami() {
  return api("v1/tokens/self");
}

/** Does the token open the API? (the login form checks before keeping it) */
export async function checkToken(value) {
  const response = await fetch(new URL("v1/functions", document.baseURI),
    { headers: { Authorization: `Bearer ${value}` }, cache: "no-store" });
  return response.status;
}
