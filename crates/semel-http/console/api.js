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

/** Whether text is a well-formed authorisation reference (as the broker
 * checks them: letters, digits, '/', '.', '_' and '-', no part of it '.' or
 * '..'). One read from the log is looked up only if it is. */
export function isReference(text) {
  return typeof text === "string" && /^[A-Za-z0-9/._-]{1,64}$/.test(text) &&
    text.split("/").every((part) => part !== "." && part !== "..");
}

/** A request path from a template whose literal parts are the console's
 * own and whose values (`${…}`) are not: each value becomes exactly one
 * path segment, fully percent-encoded (a '/' in it included), and a value
 * that is empty or a dot segment is refused rather than sent:
 * path`/v1/authorisationVersions/${reference}`. */
export function path(literals, ...values) {
  let out = literals[0];
  values.forEach((v, i) => {
    const text = String(v);
    if (text === "" || text === "." || text === "..") throw new Error(`not a path segment: "${text}"`);
    out += encodeURIComponent(text) + literals[i + 1];
  });
  return out;
}

/** The URL of an API path, which must stay under `<root>/v1/`: a path
 * that would lead elsewhere once resolved is refused, not requested. */
export function apiUrl(path) {
  const url = new URL(path.replace(/^\//, ""), ROOT);
  const api = new URL("v1/", ROOT);
  if (url.origin !== api.origin || !url.pathname.startsWith(api.pathname)) {
    throw new Error(`not a path of the API: ${path}`);
  }
  return url;
}

export async function call(method, path, body) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const url = apiUrl(path);
  let resp;
  try {
    resp = await fetch(url, {
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
