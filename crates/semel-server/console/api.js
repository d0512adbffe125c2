// The console's only way to the broker: the HTTP/JSON face, with the
// browser's client certificate (TLS) and the person's token (Bearer).
// The token is kept for the tab only (sessionStorage).

const TOKEN = "semel.token";

// The API is beside the console: `<root>/console/api.js` calls
// `<root>/v1/...`, so that a portal serving the broker under a prefix of
// its own address (`/semel/`) needs no change here.
const ROOT = new URL("../", import.meta.url);

export function token() {
  return sessionStorage.getItem(TOKEN) || "";
}

export function setToken(text) {
  if (text) sessionStorage.setItem(TOKEN, text.trim());
  else sessionStorage.removeItem(TOKEN);
}

/** The token's claims (read, not checked: the broker checks them). */
export function claims() {
  const parts = token().split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    return JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
  } catch {
    return null;
  }
}

/** A refusal or failure, as the broker explained it. */
export class ApiError extends Error {
  constructor(status, body, requestId) {
    const info = (body?.details || []).find((d) => d.reason) || {};
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.reason = info.reason || "";
    this.requestId = requestId || info.metadata?.request_id || "";
  }
}

export async function call(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(new URL(path.replace(/^\//, ""), ROOT), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, { message: e.message, details: [{ reason: "UNREACHABLE" }] });
  }
  const text = await resp.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = { message: text };
  }
  if (!resp.ok) throw new ApiError(resp.status, json, resp.headers.get("x-request-id"));
  return json;
}

/** A query string from the parameters that are set. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "" && v !== null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
