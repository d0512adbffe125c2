// The auditor's console: search, entry with its proof checked here,
// checkpoints and their consistency, export, overview. Every datum comes
// from the HTTP/JSON face; every proof is checked in this browser.

import { call, claims, setToken, token, query, path, ApiError, isReference } from "./api.js";
import { $, el, showError, skipLink, languageSelector } from "./ui.js";
import { t, formatTime, formatNumber } from "./i18n.js";
import {
  b64decode, b64encode, hex, unhex, leafHash, verifyInclusion, verifyConsistency,
  parseVerifierKey, parseWitnessKey, verifyNote, cosignedBy, decodeEntry, differences,
} from "./verify.js";

const PAGE = 50;
const EXPORT_MAX = 10000;
const VKEY = "semel.verifierKey";
const WKEYS = "semel.witnessKeys";
const QUORUM = "semel.witnessQuorum";
const SEEN = "semel.seen";

const state = { filter: {}, pages: [""], page: 0, orgs: new Map(), total: null };


function orgName(kbo) {
  const name = state.orgs.get(kbo);
  return name ? `${name} (${kbo})` : kbo || "";
}


// ---- sign-in -------------------------------------------------------------

function showWho() {
  const c = claims();
  $("signout").hidden = !c;
  $("who").textContent = c
    ? t("signin.done", c.sub, c.org || "", (c.roles || []).join(", "))
    : t("signin.none");
}

async function signIn(ev) {
  ev.preventDefault();
  let text = $("token").value.trim();
  const file = $("token-file").files[0];
  if (!text && file) text = (await file.text()).trim();
  setToken(text);
  const vkey = $("vkey").value.trim();
  if (vkey) {
    try {
      await parseVerifierKey(vkey);
      localStorage.setItem(VKEY, vkey);
    } catch (e) {
      showError(new Error(`${t("signin.vkey")}: ${e.message}`));
      return;
    }
  } else {
    localStorage.removeItem(VKEY);
  }
  // The witnesses whose cosignatures a checkpoint must carry, and how many
  // of them, as `semel audit verify --witness-key --witness-quorum` takes
  // them: without them, the log's own key could have signed a rewritten
  // log, and nothing is called verified.
  const wkeys = $("wkeys").value.split("\n").map((l) => l.trim()).filter(Boolean);
  for (const w of wkeys) {
    try {
      await parseWitnessKey(w);
    } catch (e) {
      showError(new Error(`${t("signin.wkeys")}: ${w.split("+")[0]}: ${e.message}`));
      return;
    }
  }
  const quorumText = $("quorum").value.trim();
  const quorum = quorumText === "" ? wkeys.length : Number(quorumText);
  if (wkeys.length && (!Number.isInteger(quorum) || quorum < 1 || quorum > wkeys.length)) {
    showError(new Error(t("signin.quorumBad", wkeys.length)));
    return;
  }
  if (wkeys.length) {
    localStorage.setItem(WKEYS, wkeys.join("\n"));
    localStorage.setItem(QUORUM, String(quorum));
  } else {
    localStorage.removeItem(WKEYS);
    localStorage.removeItem(QUORUM);
  }
  showWho();
  // Signing in asks the broker once, so that a certificate or token it
  // does not accept is said here rather than on the first search.
  try {
    await loadOrganisations(true);
  } catch (e) {
    showError(e);
    return;
  }
  location.hash = "#/search";
}

async function loadOrganisations(strict = false) {
  if (!token()) return;
  try {
    const r = await call("GET", "/v1/organisations");
    for (const o of r.organisations || []) state.orgs.set(o.kbo, o.name);
  } catch (e) {
    // Names are a comfort: numbers are shown without them.
    if (strict) throw e;
  }
}

// ---- search --------------------------------------------------------------

function readFilter(form) {
  const f = {};
  for (const input of form.querySelectorAll("input[name], select[name]")) {
    const v = input.value.trim();
    if (!v) continue;
    if (input.name === "since") f.since = `${v}T00:00:00Z`;
    else if (input.name === "until") {
      const d = new Date(`${v}T00:00:00Z`);
      d.setUTCDate(d.getUTCDate() + 1);
      f.until = d.toISOString().replace(".000", "");
    } else f[input.name] = v;
  }
  return f;
}

async function search(ev) {
  ev?.preventDefault();
  showError(null);
  state.filter = readFilter($("search-form"));
  state.page = 0;
  state.total = null;
  $("search-count").textContent = t("loading");
  $("search-results").replaceChildren();
  try {
    // The count and the pages are of the log as it stood at this moment:
    // the console's own reads (recorded too) come after it.
    const head = await call("GET", "/v1/audit/head");
    const asOf = String(head.size || "0");
    state.pages = [asOf === "0" ? "" : asOf];
    const summary = await call("POST", "/v1/auditEntries:summarise", { ...state.filter, beforeSequence: asOf });
    state.total = Number(summary.total || 0);
    $("search-count").textContent = summary.truncated
      ? t("countTruncated", formatNumber(state.total))
      : state.total === 0 ? t("none") : t("count", formatNumber(state.total));
    await showPage();
  } catch (e) {
    $("search-count").textContent = "";
    showError(e);
  }
}

async function showPage() {
  // One call reads at most a budget of entries: a page it cut short
  // carries a token to keep going. A few calls fill the page; past them,
  // the page shows what was found and "older" goes on.
  const entries = [];
  let pageToken = state.pages[state.page];
  for (let round = 0; round < 10; round++) {
    const r = await call("POST", "/v1/auditEntries:search", {
      ...state.filter,
      pageSize: PAGE - entries.length,
      pageToken,
    });
    entries.push(...(r.entries || []));
    pageToken = r.nextPageToken || "";
    if (!pageToken || entries.length >= PAGE) break;
  }
  state.pages[state.page + 1] = pageToken;
  const table = el("table", { class: "results" });
  table.append(el("caption", { class: "sr-only", text: $("search-count").textContent }));
  const head = el("tr");
  for (const k of ["col.seq", "col.time", "col.consumer", "col.person", "col.dataset", "col.purpose", "col.decision", "col.reason"]) {
    head.append(el("th", { scope: "col", text: t(k) }));
  }
  table.append(el("thead", {}, head));
  const body = el("tbody");
  for (const e of entries) {
    const seq = e.sequence || "0";
    const refused = e.decision === "AUDIT_DECISION_REFUSED";
    body.append(el("tr", {},
      el("td", {}, el("a", { href: `#/entry/${seq}`, text: seq })),
      el("td", { text: formatTime(e.time) }),
      el("td", { text: orgName(e.consumerKbo) }),
      el("td", { text: e.endUser || "" }),
      el("td", { text: e.dataset || "" }),
      el("td", { text: e.purpose || "" }),
      el("td", { class: refused ? "refused" : "allowed", text: refused ? t("refused") : t("allowed") }),
      el("td", { text: e.reason || "" }),
    ));
  }
  table.append(body);
  $("search-results").replaceChildren(entries.length ? table : "");
  $("newer").hidden = state.page === 0;
  $("older").hidden = !state.pages[state.page + 1];
  $("export-jsonl").disabled = $("export-csv").disabled = !state.total;
}

// ---- verification --------------------------------------------------------

/** The witnesses the auditor gave at sign-in, their keys imported, and
 * the quorum of them a checkpoint must carry the cosignatures of. */
async function witnessPolicy() {
  const lines = (localStorage.getItem(WKEYS) || "").split("\n").filter(Boolean);
  const parsed = await Promise.all(lines.map(parseWitnessKey));
  // The same witness given twice is one witness: a quorum counts witnesses.
  const keys = parsed.filter((k, i) => parsed.findIndex((o) => o.pub === k.pub) === i);
  const quorum = Number(localStorage.getItem(QUORUM) || keys.length);
  // Not lowered to the witnesses left: a quorum of two met by one witness
  // given twice is not met.
  return { keys, quorum: Math.max(quorum || 1, 1) };
}

/** The checkpoint to prove against: the newest whose signature checks with
 * the published key the auditor gave (or, failing that, the served one)
 * and, when the auditor gave witnesses, that carries the cosignatures of
 * their quorum. The log's own signature proves nothing against an
 * operator holding its key, who could rewrite and re-sign the log: only
 * witnesses, who cosign a checkpoint only if it extends what they cosigned
 * before, make a checkpoint one to call verified (`verified`). */
async function trustedCheckpoint() {
  const latest = await call("GET", "/v1/audit/checkpoints/latest");
  const pinned = localStorage.getItem(VKEY);
  const served = latest.verifierKey || "";
  const key = await parseVerifierKey(pinned || served);
  const witnesses = await witnessPolicy();
  const notes = [];
  notes.push(pinned ? t("v.keyPinned") : t("v.keyServed"));
  if (pinned && served && served.trim() !== pinned.trim()) notes.push(t("v.keyDiffers"));
  const base = { checkpoint: null, notes, key, pinned: !!pinned, witnesses, cosigned: [], verified: false };
  if (!latest.checkpoint) return base;
  const latestNote = latest.checkpoint.signedNote;
  const newest = await verifyNote(latestNote, key);
  if (pinned) {
    const seen = await stillConsistent(key, newest);
    if (seen) notes.push(t("v.sinceSeen", formatNumber(seen.size)));
  }
  let [note, checkpoint] = [latestNote, newest];
  let cosigned = await cosignedBy(note, witnesses.keys);
  if (witnesses.keys.length && cosigned.length < witnesses.quorum) {
    // The newest checkpoint is sent to the witnesses once it is signed:
    // until they have cosigned it, the newest they did cosign is proven
    // against (an entry newer than it shows a moment later).
    const r = await call("GET", `/v1/audit/checkpoints${query({ pageSize: 10 })}`);
    for (const c of r.checkpoints || []) {
      if (c.signedNote === note) continue;
      let older;
      try {
        older = await verifyNote(c.signedNote, key);
      } catch {
        continue; // signed with another key (before a rotation)
      }
      // A forged cosignature throws here: the checkpoint is not used.
      const by = await cosignedBy(c.signedNote, witnesses.keys);
      if (by.length >= witnesses.quorum) {
        [note, checkpoint, cosigned] = [c.signedNote, older, by];
        break;
      }
    }
    // The latest must extend what the witnesses cosigned: a log rewritten
    // since is said so, not merely proven against its older part.
    if (checkpoint.size < newest.size && cosigned.length >= witnesses.quorum) {
      const p = await call("GET", `/v1/audit/consistencyProof${query({ firstTreeSize: checkpoint.size.toString(), secondTreeSize: newest.size.toString() })}`);
      const ok = checkpoint.size === 0n ||
        (await verifyConsistency(checkpoint.size, newest.size, checkpoint.root, newest.root, (p.proof || []).map(b64decode)));
      if (!ok) throw new Error(t("v.notExtension", formatNumber(checkpoint.size)));
    }
  }
  const witnessed = witnesses.keys.length > 0 && cosigned.length >= witnesses.quorum;
  if (witnesses.keys.length) {
    notes.push(witnessed
      ? t("v.cosigned", cosigned.join(", "), witnesses.quorum, witnesses.keys.length)
      : t("v.notCosigned", cosigned.length, witnesses.quorum));
  } else {
    notes.push(t("v.noWitnesses"));
  }
  return { ...base, checkpoint, note, cosigned, witnessed, verified: !!pinned && witnessed };
}

/** Why a proof that holds is still not called verified. */
function notVerified(trusted) {
  if (!trusted.pinned) return t("v.unpinned");
  if (!trusted.witnesses.keys.length) return t("v.unwitnessed");
  return t("v.uncosigned", trusted.cosigned.length, trusted.witnesses.quorum);
}

/** Checks that the log only grew since the newest checkpoint this browser
 * verified before (kept per verifier key), then remembers the new one: a
 * log cut short or rewritten between two visits is caught here, with no
 * trust in the broker. Throws when it was. */
async function stillConsistent(key, checkpoint) {
  const all = JSON.parse(localStorage.getItem(SEEN) || "{}");
  const seen = all[key.text];
  if (seen) {
    const size = BigInt(seen.size);
    const root = unhex(seen.root);
    if (checkpoint.size < size) throw new Error(t("v.rollback", formatNumber(seen.size), formatNumber(checkpoint.size)));
    let ok;
    if (checkpoint.size === size) ok = hex(checkpoint.root) === seen.root;
    else if (size === 0n) ok = true;
    else {
      const r = await call("GET", `/v1/audit/consistencyProof${query({ firstTreeSize: seen.size, secondTreeSize: checkpoint.size.toString() })}`);
      ok = await verifyConsistency(size, checkpoint.size, root, checkpoint.root, (r.proof || []).map(b64decode));
    }
    if (!ok) throw new Error(t("v.rewritten", formatNumber(seen.size)));
  }
  if (!seen || checkpoint.size > BigInt(seen.size)) {
    all[key.text] = { size: checkpoint.size.toString(), root: hex(checkpoint.root) };
    localStorage.setItem(SEEN, JSON.stringify(all));
  }
  return seen;
}

async function proveEntry(sequence, checkpoint) {
  const r = await call("GET", path`/v1/auditEntries/${sequence}/inclusionProof` + query({ treeSize: checkpoint.size.toString() }));
  const entry = r.entry || {};
  const encoding = b64decode(entry.encoding || "");
  const proof = (r.proof || []).map(b64decode);
  const leaf = await leafHash(encoding);
  const proven = decodeEntry(encoding);
  const result = { entry, encoding, proof, proven, leaf, failure: null };
  if (b64encode(leaf) !== (entry.entryHash || "")) result.failure = t("v.badLeaf");
  else if (!(await verifyInclusion(leaf, BigInt(sequence), checkpoint.size, proof, checkpoint.root))) {
    result.failure = t("v.badPath");
  } else if (proven.sequence !== String(sequence)) result.failure = t("v.differs", "sequence");
  else {
    const diff = differences(entry, proven);
    if (diff.length) result.failure = t("v.differs", diff.join(", "));
  }
  return result;
}

/** One check's line: passed, failed, or not reached (after a failure). */
function step(state, text) {
  const mark = { ok: "✓", bad: "✗", skipped: "–" }[state];
  return el("li", { class: state },
    el("span", { class: "mark", "aria-hidden": "true", text: mark }),
    ` ${text} `,
    el("span", { class: "sr-only", text: `(${t(`v.state.${state}`)})` }));
}

async function showEntry(sequence) {
  $("h-entry").textContent = t("entry.title", sequence);
  const verdict = $("verdict");
  verdict.className = "verdict pending";
  verdict.textContent = t("v.pending");
  $("steps").replaceChildren();
  $("entry-fields").replaceChildren();
  $("entry-authorisation").replaceChildren();
  $("key-note").textContent = "";
  let trusted;
  try {
    trusted = await trustedCheckpoint();
  } catch (e) {
    verdict.className = "verdict bad";
    verdict.textContent = t("v.failed", e.message);
    $("steps").replaceChildren(step("bad", t("v.step.note")));
    return;
  }
  $("key-note").textContent = trusted.notes.join(" ");
  if (!trusted.checkpoint || BigInt(sequence) >= trusted.checkpoint.size) {
    verdict.className = "verdict pending";
    verdict.textContent = t("v.notYet");
    $("entry-fields").replaceChildren(el("dd", { text: t("entry.onceProven") }));
    return;
  }
  let result;
  try {
    result = await proveEntry(sequence, trusted.checkpoint);
  } catch (e) {
    verdict.className = "verdict bad";
    verdict.textContent = t("v.failed", e.message);
    showError(e instanceof ApiError ? e : null);
    return;
  }
  // The checks in order; after the first that fails, the rest are not
  // reached.
  const failedAt = result.failure === t("v.badLeaf") ? 1 : result.failure === t("v.badPath") ? 2 : result.failure ? 3 : 4;
  const labels = [t("v.step.note"), t("v.step.leaf"), t("v.step.path", result.proof.length), t("v.step.fields")];
  $("steps").replaceChildren(...labels.map((label, i) => step(i < failedAt ? "ok" : i === failedAt ? "bad" : "skipped", label)));
  if (result.failure) {
    verdict.className = "verdict bad";
    verdict.textContent = t("v.failed", result.failure);
  } else if (!trusted.verified) {
    // Signed by the key the broker serves, or by the log's key alone: the
    // broker, or an operator holding the key, could have signed anything.
    // Not a verification until the published key and the quorum of the
    // witnesses' cosignatures are there.
    verdict.className = "verdict warn";
    verdict.textContent = notVerified(trusted);
  } else {
    verdict.className = "verdict ok";
    verdict.textContent = t("v.ok", sequence, trusted.checkpoint.size.toString());
  }
  // What is shown is the proven encoding, not the broker's JSON.
  const p = result.proven;
  const time = new Date(Number(p.timeMicros / 1000n)).toISOString();
  const rows = [
    ["col.time", formatTime(time)],
    ["operation", p.operation],
    ["col.consumer", orgName(p.consumerKbo)],
    ["col.person", p.endUser || ""],
    ["f.citizen", p.citizen || ""],
    ["citizenAsGiven", p.citizenAsGiven || ""],
    ["col.dataset", p.dataset],
    ["fieldsRequested", p.fieldsRequested.join(", ")],
    ["fieldsReturned", p.fieldsReturned.join(", ")],
    ["checks", p.checks.join(", ")],
    ["col.purpose", p.purpose],
    ["f.authorisation", p.authorisationReference ? `${p.authorisationReference} v${p.authorisationVersion ?? "?"}` : ""],
    ["col.decision", p.decision === "AUDIT_DECISION_ALLOWED" ? t("allowed") : t("refused")],
    ["col.reason", p.reason || ""],
    ["outcome", p.outcome.replace("AUDIT_OUTCOME_", "")],
    ["source", orgName(p.sourceKbo || "")],
    ["consumerReference", p.consumerReference],
    ["referenceDate", p.referenceDate || ""],
    ["detail", p.detail],
    ["requestId", p.requestId],
    ["entryHash", hex(result.leaf)],
    ["previousHash", hex(p.previousHash)],
    ["format", String(p.format)],
  ];
  const dl = $("entry-fields");
  for (const [k, v] of rows) {
    if (v === "") continue;
    dl.append(el("dt", { text: t(k) }), el("dd", { text: v }));
  }
  await showAuthorisation(p.authorisationReference, p.authorisationVersion);
}

async function showAuthorisation(reference, version) {
  const dl = $("entry-authorisation");
  if (!reference) {
    dl.replaceChildren(el("dd", { text: t("entry.noAuthorisation") }));
    return;
  }
  // The reference comes from the log: one that is not well formed (a dot
  // segment would lead the request elsewhere) is shown, never looked up.
  if (!isReference(reference)) {
    dl.replaceChildren(el("dd", { text: t("entry.badReference") }));
    return;
  }
  try {
    // The whole reference is one path segment (its slashes encoded), as
    // the route `/v1/authorisationVersions/{reference=**}` reads it.
    const r = await call("GET", path`/v1/authorisationVersions/${reference}`);
    const versions = r.versions || [];
    const a = versions.find((v) => Number(v.version) === Number(version));
    // From the registry, not part of the proof: said so.
    dl.append(el("dt", { text: t("entry.authSource") }), el("dd", { text: t("entry.authNotProven") }));
    if (!a) {
      dl.append(el("dt", { text: t("f.authorisation") }), el("dd", { text: t("entry.versionUnknown", reference) }));
      return;
    }
    const rows = [
      ["f.authorisation", `${a.reference} v${a.version}`],
      ["col.purpose", a.purpose],
      ["legalBasis", a.legalBasis],
      ["issuingBody", a.issuingBody],
      ["valid", `${a.validFrom || ""} – ${a.validUntil || ""}`],
      ["fields", (a.fields || []).join(", ")],
      ["consent", a.consentRequired ? "✓" : "—"],
      ["status", (a.status || "").replace("AUTHORISATION_STATUS_", "")],
    ];
    for (const [k, v] of rows) if (v) dl.append(el("dt", { text: t(k) }), el("dd", { text: v }));
  } catch (e) {
    dl.replaceChildren(el("dd", { text: e.message }));
  }
}

// ---- checkpoints ---------------------------------------------------------

async function showCheckpoints(more = false) {
  showError(null);
  try {
    const r = await call("GET", `/v1/audit/checkpoints${query({ pageSize: 100, pageToken: more ? state.cpToken : "" })}`);
    state.cpToken = r.nextPageToken || "";
    $("cp-more").hidden = !state.cpToken;
    const pinned = localStorage.getItem(VKEY);
    const key = await parseVerifierKey(pinned || r.verifierKey);
    const witnesses = await witnessPolicy();
    state.pinned = !!pinned;
    state.witnesses = witnesses;
    $("cp-vkey").textContent = key.text;
    const notes = [pinned ? t("v.keyPinned") : t("v.keyServed")];
    if (pinned && !more) {
      try {
        const trusted = await trustedCheckpoint();
        notes.push(...trusted.notes.slice(1));
      } catch (e) {
        notes.push(t("v.failed", e.message));
      }
    }
    $("cp-key").textContent = notes.join(" ");
    let table = $("cp-list").querySelector("table");
    if (!more || !table) {
      table = el("table", { class: "results" });
      table.append(el("caption", { class: "sr-only", text: t("cp.title") }));
      table.append(el("thead", {}, el("tr", {},
        el("th", { scope: "col", text: t("cp.size") }),
        el("th", { scope: "col", text: t("cp.root") }),
        el("th", { scope: "col", text: t("cp.signature") }),
        el("th", { scope: "col", text: t("cp.witnesses") }))));
      table.append(el("tbody"));
      state.checkpoints = [];
    }
    const body = table.querySelector("tbody");
    const verified = state.checkpoints;
    for (const c of r.checkpoints || []) {
      let ok = true;
      let cp = null;
      let by = null;
      try {
        // What is shown is what the signature covers; the served size and
        // root must be the note's.
        cp = await verifyNote(c.signedNote, key);
        ok = cp.size.toString() === String(c.treeSize) && hex(cp.root) === hex(b64decode(c.rootHash || ""));
        by = await cosignedBy(c.signedNote, witnesses.keys).catch(() => null);
      } catch {
        ok = false;
      }
      const witnessed = ok && by !== null && witnesses.keys.length > 0 && by.length >= witnesses.quorum;
      if (ok) verified.push({ ...cp, witnessed });
      const word = !ok ? t("cp.sigBad") : pinned ? t("cp.sigOk") : t("cp.sigServed");
      const cosigned = !ok ? "" : by === null ? t("cp.cosigBad")
        : !witnesses.keys.length ? t("cp.noWitnesses") : t("cp.cosigned", by.length, witnesses.quorum);
      body.append(el("tr", {},
        el("td", { text: cp ? formatNumber(cp.size) : formatNumber(c.treeSize) }),
        el("td", { class: "hash", text: cp ? hex(cp.root) : hex(b64decode(c.rootHash || "")) }),
        el("td", { class: !ok ? "refused" : pinned ? "allowed" : "", text: word }),
        el("td", { class: by === null && ok ? "refused" : witnessed ? "allowed" : "", text: cosigned })));
    }
    $("cp-list").replaceChildren(table);
    for (const [id, pick] of [["cp-older", verified.length - 1], ["cp-newer", 0]]) {
      const select = $(id);
      select.replaceChildren(...verified.map((c, i) => el("option", { value: String(i), text: formatNumber(c.size) })));
      select.value = String(Math.max(pick, 0));
    }
  } catch (e) {
    showError(e);
  }
}

async function checkConsistency(ev) {
  ev.preventDefault();
  const out = $("consistency");
  const older = state.checkpoints?.[Number($("cp-older").value)];
  const newer = state.checkpoints?.[Number($("cp-newer").value)];
  if (!older || !newer) return;
  const [a, b] = older.size <= newer.size ? [older, newer] : [newer, older];
  try {
    const r = await call("GET", `/v1/audit/consistencyProof${query({ firstTreeSize: a.size.toString(), secondTreeSize: b.size.toString() })}`);
    const ok = await verifyConsistency(a.size, b.size, a.root, b.root, (r.proof || []).map(b64decode));
    // Consistent checkpoints the log's key alone signed could all be of a
    // rewritten log: verified only when the newer one is witnessed.
    const verified = state.pinned && b.witnessed;
    out.className = !ok ? "verdict bad" : verified ? "verdict ok" : "verdict warn";
    out.textContent = !ok
      ? t("cp.failed", formatNumber(a.size), formatNumber(b.size))
      : verified
        ? t("cp.ok", formatNumber(a.size), formatNumber(b.size))
        : state.pinned
          ? t("cp.unwitnessed", formatNumber(a.size), formatNumber(b.size))
          : t("cp.unpinned", formatNumber(a.size), formatNumber(b.size));
  } catch (e) {
    out.className = "verdict bad";
    out.textContent = e.message;
  }
}

// ---- export --------------------------------------------------------------

function download(name, parts, type) {
  const url = URL.createObjectURL(new Blob(parts, { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

/** Every entry of the current query, newest first, page by page. */
async function* allEntries() {
  let pageToken = "";
  do {
    const r = await call("POST", "/v1/auditEntries:search", { ...state.filter, pageSize: 1000, pageToken });
    for (const e of r.entries || []) yield e;
    pageToken = r.nextPageToken || "";
  } while (pageToken);
}

function progress(done, total) {
  $("export").hidden = false;
  $("export-progress").max = Math.max(total, 1);
  $("export-progress").value = done;
  $("export-status").textContent = t("export.progress", formatNumber(done), formatNumber(total));
}

const CSV = ["sequence", "time", "operation", "consumer_kbo", "end_user", "citizen", "dataset", "fields_returned",
  "purpose", "authorisation", "authorisation_version", "decision", "reason", "source_kbo", "checks", "detail"];

function csvCell(v) {
  const s = Array.isArray(v) ? v.join(";") : String(v ?? "");
  // A cell a spreadsheet would run as a formula is quoted as text.
  const safe = /^[=+\-@\t\r]/.test(s) ? `'${s}` : s;
  return /[",\n\r;]/.test(safe) || safe !== s ? `"${safe.replace(/"/g, '""')}"` : safe;
}

async function exportCsv() {
  showError(null);
  const total = state.total || 0;
  const lines = [CSV.join(",") + "\n"];
  let done = 0;
  try {
    for await (const e of allEntries()) {
      const row = [e.sequence || "0", e.time, e.operation, e.consumerKbo, e.endUser, e.citizen, e.dataset,
        e.fieldsReturned, e.purpose, e.authorisationReference, e.authorisationVersion || "",
        e.decision === "AUDIT_DECISION_REFUSED" ? "refused" : "allowed", e.reason, e.sourceKbo, e.checks, e.detail];
      lines.push(row.map(csvCell).join(",") + "\n");
      progress(++done, total);
    }
    const name = `semel-audit-${new Date().toISOString().slice(0, 10)}.csv`;
    download(name, lines, "text/csv");
    $("export-status").textContent = t("export.done", formatNumber(done), name);
  } catch (e) {
    showError(e);
  }
}

/** An excerpt `semel audit verify --export` checks: the signed checkpoint,
 * and each entry with its encoding and inclusion proof, each proof checked
 * here first. */
async function exportJsonl() {
  showError(null);
  const total = state.total || 0;
  if (total > EXPORT_MAX) {
    showError(new Error(t("export.tooMany", formatNumber(total), formatNumber(EXPORT_MAX))));
    return;
  }
  try {
    const trusted = await trustedCheckpoint();
    if (!trusted.checkpoint) throw new Error(t("v.notYet"));
    const lines = [JSON.stringify({
      format: "semel-audit-excerpt/1",
      origin: trusted.checkpoint.origin,
      verifier_key: trusted.key.text,
      checkpoint: trusted.note,
      query: state.filter,
    }) + "\n"];
    let done = 0;
    let newer = 0;
    for await (const e of allEntries()) {
      const seq = BigInt(e.sequence || "0");
      if (seq >= trusted.checkpoint.size) {
        newer += 1;
        progress(++done, total);
        continue;
      }
      const r = await proveEntry(e.sequence || "0", trusted.checkpoint);
      if (r.failure) throw new Error(t("v.failed", `${e.sequence}: ${r.failure}`));
      lines.push(excerptLine(r) + "\n");
      progress(++done, total);
    }
    const name = `semel-audit-${new Date().toISOString().slice(0, 10)}.jsonl`;
    download(name, lines, "application/jsonl");
    $("export-status").textContent = t("export.done", formatNumber(lines.length - 1), name) +
      (newer ? ` ${t("export.newer", formatNumber(newer))}` : "") +
      (trusted.verified ? "" : ` ${notVerified(trusted)}`);
  } catch (e) {
    showError(e);
  }
}

function excerptLine({ proven: p, encoding, proof }) {
  const v = {
    type: "entry",
    sequence: "@SEQ@",
    time_micros: "@TIME@",
    operation: p.operation,
    consumer_kbo: p.consumerKbo,
    end_user: p.endUser,
    citizen: p.citizen,
    dataset: p.dataset,
    fields_requested: p.fieldsRequested,
    fields_returned: p.fieldsReturned,
    purpose: p.purpose,
    authorisation: p.authorisationReference,
    authorisation_version: p.authorisationVersion,
    decision: p.decision === "AUDIT_DECISION_ALLOWED" ? "allowed" : "refused",
    reason: p.reason,
    source_kbo: p.sourceKbo,
    consumer_reference: p.consumerReference,
    reference_date: p.referenceDate,
    checks: p.checks,
    detail: p.detail,
    encoding: b64encode(encoding),
    proof: proof.map(b64encode),
  };
  // 64-bit numbers, written as JSON numbers.
  return JSON.stringify(v)
    .replace('"@SEQ@"', p.sequence)
    .replace('"@TIME@"', p.timeMicros.toString());
}

// ---- overview ------------------------------------------------------------

/** Every day from `since` to `until` (YYYY-MM-DD, UTC), at most a year. */
function daysBetween(since, until) {
  const out = [];
  const d = new Date(`${since}T00:00:00Z`);
  const end = new Date(`${until}T00:00:00Z`);
  while (d <= end && out.length < 366) {
    out.push(d.toISOString().slice(0, 10));
    d.setUTCDate(d.getUTCDate() + 1);
  }
  return out;
}

const LOOKUPS = "semel.v1.LookupService/";

function svgBars(days, since, until) {
  const NS = "http://www.w3.org/2000/svg";
  const byDay = new Map(daysBetween(since, until).map((d) => [d, { allowed: 0, refused: 0 }]));
  for (const d of days) {
    if (!(d.operation || "").startsWith(LOOKUPS)) continue;
    const v = byDay.get(d.day) || { allowed: 0, refused: 0 };
    v.allowed += Number(d.allowed || 0);
    v.refused += Number(d.refused || 0);
    byDay.set(d.day, v);
  }
  const list = [...byDay.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  const max = Math.max(1, ...list.map(([, v]) => v.allowed + v.refused));
  const step = 24;
  const left = 40;
  const w = left + Math.max(list.length, 7) * step;
  const h = 150;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 36}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", t("ov.chartLabel", formatNumber(list.reduce((a, [, v]) => a + v.allowed + v.refused, 0)), list.length));
  svg.setAttribute("class", "chart");
  const text = (x, y, content, anchor = "middle") => {
    const e = document.createElementNS(NS, "text");
    e.setAttribute("x", x);
    e.setAttribute("y", y);
    e.setAttribute("text-anchor", anchor);
    e.textContent = content;
    svg.append(e);
  };
  const axis = document.createElementNS(NS, "line");
  for (const [k, v] of [["x1", left - 4], ["y1", h], ["x2", w], ["y2", h], ["class", "axis"]]) axis.setAttribute(k, v);
  svg.append(axis);
  text(left - 8, 10, formatNumber(max), "end");
  text(left - 8, h, "0", "end");
  list.forEach(([day, v], i) => {
    const x = left + i * step + 2;
    const ha = (v.allowed / max) * h;
    const hr = (v.refused / max) * h;
    for (const [cls, y, height] of [["bar-allowed", h - ha, ha], ["bar-refused", h - ha - hr, hr]]) {
      if (height <= 0) continue;
      const r = document.createElementNS(NS, "rect");
      r.setAttribute("x", x);
      r.setAttribute("y", y);
      r.setAttribute("width", step - 6);
      r.setAttribute("height", height);
      r.setAttribute("class", cls);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${day}: ${v.allowed} ${t("allowed")}, ${v.refused} ${t("refused")}`;
      r.append(title);
      svg.append(r);
    }
    if (i % Math.ceil(list.length / 16) === 0) text(x + (step - 6) / 2, h + 14, day.slice(5));
  });
  const legend = el("p", { class: "legend" },
    el("span", { class: "key key-allowed", "aria-hidden": "true" }), ` ${t("ov.allowed")} `,
    el("span", { class: "key key-refused", "aria-hidden": "true" }), ` ${t("ov.refused")}`);
  // The same numbers as a table, for those who would rather read.
  const table = el("table", { class: "results" });
  table.append(el("caption", { class: "sr-only", text: t("ov.perDay") }));
  table.append(el("thead", {}, el("tr", {},
    el("th", { scope: "col", text: t("ov.day") }),
    el("th", { scope: "col", text: t("ov.allowed") }),
    el("th", { scope: "col", text: t("ov.refused") }))));
  const body = el("tbody");
  for (const [day, v] of list.slice().reverse().filter(([, v]) => v.allowed + v.refused > 0)) {
    body.append(el("tr", {}, el("td", { text: day }), el("td", { text: formatNumber(v.allowed) }), el("td", { text: formatNumber(v.refused) })));
  }
  table.append(body);
  const details = el("details", {}, el("summary", { text: t("ov.asTable") }), table);
  return [svg, legend, details];
}

async function overview(ev) {
  ev?.preventDefault();
  showError(null);
  const f = readFilter($("overview-form"));
  const since = $("o-since").value;
  const until = $("o-until").value;
  const body = {};
  if (f.since) body.since = f.since;
  if (f.until) body.until = f.until;
  const consumer = $("o-consumer").value.trim();
  if (consumer) body.consumerKbo = consumer;
  if (!since) {
    const d = new Date();
    d.setUTCDate(d.getUTCDate() - 30);
    $("o-since").value = d.toISOString().slice(0, 10);
    body.since = `${$("o-since").value}T00:00:00Z`;
  }
  try {
    const s = await call("POST", "/v1/auditEntries:summarise", body);
    $("ov-total").textContent = t("ov.total", formatNumber(s.total || 0), formatNumber(s.allowed || 0), formatNumber(s.refused || 0));
    // A summary reads at most a budget of entries: say when it stopped.
    if (s.truncated) $("ov-total").textContent += ` ${t("countTruncated", formatNumber(s.total || 0))}`;
    const patterns = s.patterns || [];
    $("ov-patterns").replaceChildren(...(patterns.length ? patterns.map((p) => {
      const who = p.endUser || "—";
      const text = t(`pat.${p.kind}`, who, orgName(p.consumerKbo), formatNumber(p.count), formatNumber(p.citizens || 0));
      const link = el("a", { href: "#/search", text: t("ov.look") });
      link.addEventListener("click", () => {
        $("search-form").reset();
        $("q-person").value = p.endUser || "";
        $("q-consumer").value = p.consumerKbo;
        $("q-decision").value = "AUDIT_DECISION_REFUSED";
        if (p.kind === "NO_ACTIVE_FILE_FISHING") $("q-reason").value = "NO_ACTIVE_FILE";
        state.pending = true;
      });
      return el("li", { class: "pattern" }, el("span", { text: `${text} ` }), link);
    }) : [el("li", { text: t("ov.noPatterns") })]));
    const today = new Date().toISOString().slice(0, 10);
    const last = until ? until : today;
    $("ov-chart").replaceChildren(...svgBars(s.days || [], $("o-since").value, last < today ? last : today));
    const reasons = s.reasons || [];
    const max = Math.max(1, ...reasons.map((r) => Number(r.count)));
    $("ov-reasons").replaceChildren(el("ul", { class: "reasons" }, ...reasons.map((r) =>
      el("li", {},
        el("span", { class: "reason-name", text: r.reason }),
        el("meter", { min: "0", max: String(max), value: String(r.count), "aria-label": r.reason }),
        el("span", { text: ` ${formatNumber(r.count)}` })))));
    const table = el("table", { class: "results" });
    table.append(el("thead", {}, el("tr", {},
      el("th", { scope: "col", text: t("ov.day") }),
      el("th", { scope: "col", text: t("col.consumer") }),
      el("th", { scope: "col", text: t("col.dataset") }),
      el("th", { scope: "col", text: t("operation") }),
      el("th", { scope: "col", text: t("ov.allowed") }),
      el("th", { scope: "col", text: t("ov.refused") }))));
    const tbody = el("tbody");
    for (const d of s.days || []) {
      tbody.append(el("tr", {},
        el("td", { text: d.day }),
        el("td", { text: orgName(d.consumerKbo) }),
        el("td", { text: d.dataset || "" }),
        el("td", { text: (d.operation || "").replace(/^semel\.v1\./, "") }),
        el("td", { text: formatNumber(d.allowed || 0) }),
        el("td", { text: formatNumber(d.refused || 0) })));
    }
    table.append(tbody);
    $("ov-table").replaceChildren(table);
  } catch (e) {
    showError(e);
  }
}

// ---- routing -------------------------------------------------------------

const VIEWS = ["signin", "search", "entry", "checkpoints", "overview"];

async function route() {
  const [, view = "search", arg] = location.hash.split("/");
  const name = !token() ? "signin" : VIEWS.includes(view) ? view : "search";
  for (const v of VIEWS) $(`view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  showError(null);
  const heading = document.querySelector(`#view-${name} h1`);
  heading?.focus();
  if (name === "signin") {
    $("vkey").value = localStorage.getItem(VKEY) || "";
    $("wkeys").value = localStorage.getItem(WKEYS) || "";
    $("quorum").value = localStorage.getItem(WKEYS) ? localStorage.getItem(QUORUM) || "" : "";
  }
  // An entry's number is all digits: anything else in the address (which
  // anyone can link to) is not put in a request.
  if (name === "entry" && arg) {
    if (/^[0-9]{1,20}$/.test(arg)) await showEntry(arg);
    else showError(new Error(t("entry.badNumber")));
  }
  if (name === "checkpoints") await showCheckpoints();
  if (name === "overview") await overview();
  if (name === "search" && state.pending) {
    state.pending = false;
    await search();
  }
  document.title = `${heading?.textContent || ""} · ${t("title")}`;
}

function start() {
  languageSelector(() => {
    showWho();
    route();
    if (state.total !== null && !$("view-search").hidden) search();
  });
  skipLink();
  $("signin-form").addEventListener("submit", signIn);
  // Signing out forgets the token and everything shown: the page is
  // loaded afresh.
  $("signout").addEventListener("click", () => {
    setToken("");
    location.hash = "#/signin";
    location.reload();
  });
  $("search-form").addEventListener("submit", search);
  // After a page turn the focus goes to the count above the new page
  // (the button pressed may have gone).
  const turn = (by) => {
    state.page += by;
    showPage().then(() => $("search-count").focus()).catch(showError);
  };
  $("newer").addEventListener("click", () => turn(-1));
  $("older").addEventListener("click", () => turn(1));
  $("export-csv").addEventListener("click", exportCsv);
  $("export-jsonl").addEventListener("click", exportJsonl);
  $("consistency-form").addEventListener("submit", checkConsistency);
  $("cp-more").addEventListener("click", () => showCheckpoints(true));
  $("overview-form").addEventListener("submit", overview);
  window.addEventListener("hashchange", route);
  showWho();
  loadOrganisations().then(route);
}

start();
