// Checking the audit log in the browser, trusting nothing the broker says:
// signed checkpoints (C2SP signed note, Ed25519) and their witnesses'
// cosignatures (C2SP tlog-cosignature), RFC 6962 / RFC 9162
// inclusion and consistency proofs (SHA-256), and the canonical encoding of
// an entry, decoded here so that what is shown is what was proven.
// WebCrypto does the hashing and the signature checks.

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

export function b64decode(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function b64encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function unhex(text) {
  return Uint8Array.from(text.match(/../g) || [], (h) => parseInt(h, 16));
}

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(...parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

/** The RFC 6962 leaf hash of an entry's encoding. */
export function leafHash(encoding) {
  return sha256(concat(Uint8Array.of(0), encoding));
}

function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

/** Whether `leaf` is leaf `index` of the tree of `size` leaves with `root`
 * (RFC 9162 2.1.3.2). index and size are BigInts. */
export async function verifyInclusion(leaf, index, size, proof, root) {
  if (index >= size) return false;
  let f = index;
  let s = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (s === 0n) return false;
    if ((f & 1n) === 1n || f === s) {
      r = await nodeHash(p, r);
      if ((f & 1n) === 0n) {
        while ((f & 1n) === 0n && f !== 0n) {
          f >>= 1n;
          s >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    f >>= 1n;
    s >>= 1n;
  }
  return s === 0n && equal(r, root);
}

/** Whether the tree of `older` leaves (oldRoot) is a prefix of the tree of
 * `newer` leaves (newRoot) (RFC 9162 2.1.4.2). Sizes are BigInts. */
export async function verifyConsistency(older, newer, oldRoot, newRoot, proof) {
  if (older > newer) return false;
  if (older === newer) return proof.length === 0 && equal(oldRoot, newRoot);
  if (older === 0n) return proof.length === 0;
  const path = [...proof];
  if ((older & (older - 1n)) === 0n) path.unshift(oldRoot);
  if (path.length === 0) return false;
  let f = older - 1n;
  let s = newer - 1n;
  while ((f & 1n) === 1n) {
    f >>= 1n;
    s >>= 1n;
  }
  let fr = path[0];
  let sr = path[0];
  for (const c of path.slice(1)) {
    if (s === 0n) return false;
    if ((f & 1n) === 1n || f === s) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      if ((f & 1n) === 0n) {
        while ((f & 1n) === 0n && f !== 0n) {
          f >>= 1n;
          s >>= 1n;
        }
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    f >>= 1n;
    s >>= 1n;
  }
  return s === 0n && equal(fr, oldRoot) && equal(sr, newRoot);
}

/** The signature type byte of Ed25519 in signed notes. */
const ED25519 = 0x01;
/** The type byte of Ed25519 witness cosignatures (c2sp.org/tlog-cosignature). */
const COSIGNATURE_V1 = 0x04;

/** A key `name+hash+base64(type || Ed25519 public key)`, checked (the hash
 * must be that of the name, type and key) and imported. */
async function parseKey(text, type) {
  const parts = text.trim().split("+");
  if (parts.length < 3) throw new Error("expected name+hash+key");
  const [name, hash] = parts;
  const typed = b64decode(parts.slice(2).join("+"));
  if (typed[0] !== type || typed.length !== 33) {
    throw new Error(type === COSIGNATURE_V1 ? "not a cosignature/v1 (Ed25519) witness key" : "not an Ed25519 verifier key");
  }
  const pub = typed.slice(1);
  const digest = await sha256(concat(enc.encode(name + "\n"), Uint8Array.of(type), pub));
  const id = digest.slice(0, 4);
  if (hex(id) !== hash.toLowerCase()) throw new Error("the key hash does not match the key");
  const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
  return { name, id, key, pub: hex(pub), text: text.trim() };
}

/** A verifier key `name+hash+base64(0x01 || Ed25519 public key)`, checked
 * (the hash must be that of the name and key) and imported. */
export function parseVerifierKey(text) {
  return parseKey(text, ED25519);
}

/** A witness's verifier key `name+hash+base64(0x04 || Ed25519 public key)`,
 * checked and imported, as `semel audit verify --witness-key` takes it. */
export function parseWitnessKey(text) {
  return parseKey(text, COSIGNATURE_V1);
}

/** A note's body (the text its signatures cover, newline included) and its
 * signature lines, each {name, blob}. Throws when it is malformed. */
function splitNote(note) {
  const cut = note.indexOf("\n\n");
  if (cut < 0) throw new Error("the note has no empty line before its signatures");
  const body = note.slice(0, cut + 1);
  const lines = [];
  for (const line of note.slice(cut + 2).split("\n")) {
    if (line === "") continue;
    if (!line.startsWith("\u2014 ")) throw new Error("a signature line does not start with an em dash");
    const rest = line.slice(2);
    const space = rest.lastIndexOf(" ");
    if (space < 0) throw new Error("a signature line has no signature");
    lines.push({ name: rest.slice(0, space), blob: b64decode(rest.slice(space + 1)) });
  }
  return { body, lines };
}

/** Checks a signed note with a verifier key; returns its checkpoint
 * {origin, size (BigInt), root}. Throws with the reason otherwise.
 * Signatures by other keys are ignored, as the signed-note format intends. */
export async function verifyNote(note, vkey) {
  const { body, lines } = splitNote(note);
  for (const { name, blob } of lines) {
    if (name !== vkey.name || blob.length !== 4 + 64 || !equal(blob.slice(0, 4), vkey.id)) continue;
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, vkey.key, blob.slice(4), enc.encode(body));
    if (!ok) throw new Error(`the signature by ${vkey.name} does not verify`);
    const [origin, size, root] = body.split("\n");
    if (!/^[0-9]+$/.test(size)) throw new Error("the tree size is not a number");
    const rootBytes = b64decode(root);
    if (rootBytes.length !== 32) throw new Error("the root is not 32 bytes");
    return { origin, size: BigInt(size), root: rootBytes };
  }
  throw new Error(`no signature by ${vkey.name}`);
}

/** The time (seconds since the epoch, BigInt) of a witness's cosignature
 * on the note, once checked (c2sp.org/tlog-cosignature, cosignature/v1: an
 * Ed25519 signature over "cosignature/v1\ntime <t>\n" and the note's body;
 * the blob is the key hash, the time as 8 big-endian bytes, the
 * signature), as `semel audit verify --witness-key` checks it. Null when
 * the note carries no cosignature by this witness; throws when it carries
 * one that does not verify. */
export async function verifyCosignature(note, wkey) {
  const { body, lines } = splitNote(note);
  for (const { name, blob } of lines) {
    if (name !== wkey.name || blob.length !== 4 + 8 + 64 || !equal(blob.slice(0, 4), wkey.id)) continue;
    const time = new DataView(blob.buffer, blob.byteOffset + 4, 8).getBigUint64(0);
    const message = enc.encode(`cosignature/v1\ntime ${time}\n${body}`);
    const ok = await crypto.subtle.verify({ name: "Ed25519" }, wkey.key, blob.slice(12), message);
    if (!ok) throw new Error(`the cosignature by witness ${wkey.name} does not verify`);
    return time;
  }
  return null;
}

/** The names of the witnesses (of `wkeys`) whose cosignature on the note
 * verifies. Throws when one the note carries does not verify: a forged
 * cosignature is a forged checkpoint, not a missing one. */
export async function cosignedBy(note, wkeys) {
  const out = [];
  // One witness counts once toward a quorum, however often its public key
  // was given (under one name or several).
  const counted = new Set();
  for (const w of wkeys) {
    if (counted.has(w.pub)) continue;
    if ((await verifyCosignature(note, w)) !== null) {
      counted.add(w.pub);
      out.push(w.name);
    }
  }
  return out;
}

const OUTCOMES = [
  "AUDIT_OUTCOME_ANSWERED",
  "AUDIT_OUTCOME_NO_DATA",
  "AUDIT_OUTCOME_NOT_FORWARDED",
  "AUDIT_OUTCOME_SOURCE_UNAVAILABLE",
  "AUDIT_OUTCOME_SOURCE_TIMEOUT",
  "AUDIT_OUTCOME_SOURCE_ERROR",
];

/** Decodes an entry's canonical encoding (formats 1 to 4), strictly. */
export function decodeEntry(bytes) {
  let at = 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const take = (n) => {
    if (at + n > bytes.length) throw new Error("the encoding is truncated");
    const out = bytes.subarray(at, at + n);
    at += n;
    return out;
  };
  const u8 = () => take(1)[0];
  const u16 = () => {
    take(2);
    return view.getUint16(at - 2);
  };
  const str = () => dec.decode(take(u16()));
  const ascii = (n) => String.fromCharCode(...take(n));
  const list = () => Array.from({ length: u16() }, str);
  const opt = (f) => {
    const tag = u8();
    if (tag === 0) return null;
    if (tag === 1) return f();
    throw new Error("bad option tag");
  };
  const format = u8();
  if (format < 1 || format > 4) throw new Error("unknown encoding version");
  take(8);
  const sequence = view.getBigUint64(at - 8).toString();
  const requestId = hex(take(16)).replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, "$1-$2-$3-$4-$5");
  take(8);
  const timeMicros = view.getBigInt64(at - 8);
  const operation = format >= 2 ? str() : "semel.v1.LookupService/Lookup";
  const e = { format, sequence, requestId, timeMicros, operation };
  e.consumerKbo = ascii(10);
  e.endUser = opt(str);
  e.citizen = opt(() => ascii(11));
  e.dataset = str();
  e.fieldsRequested = list();
  e.fieldsReturned = list();
  e.purpose = str();
  e.authorisationReference = opt(str);
  const decision = u8();
  if (decision !== 1 && decision !== 2) throw new Error("bad decision");
  e.decision = decision === 1 ? "AUDIT_DECISION_ALLOWED" : "AUDIT_DECISION_REFUSED";
  e.reason = opt(str);
  const outcome = u8();
  if (outcome < 1 || outcome > OUTCOMES.length) throw new Error("bad outcome");
  e.outcome = OUTCOMES[outcome - 1];
  e.sourceKbo = opt(() => ascii(10));
  e.consumerReference = str();
  e.referenceDate = opt(str);
  e.citizenAsGiven = format >= 3 ? opt(() => ascii(11)) : null;
  e.checks = format >= 3 ? list() : [];
  e.detail = format >= 3 ? str() : "";
  if (format >= 4) {
    e.authorisationVersion = opt(() => {
      take(4);
      return view.getUint32(at - 4);
    });
  } else {
    e.authorisationVersion = null;
  }
  e.previousHash = take(32);
  if (at !== bytes.length) throw new Error("trailing bytes after the entry");
  return e;
}

/** The fields where the broker's JSON of an entry differs from its proven
 * encoding (empty when they agree). */
export function differences(served, proven) {
  const out = [];
  const same = (name, a, b) => {
    if (JSON.stringify(a) !== JSON.stringify(b)) out.push(name);
  };
  same("sequence", String(served.sequence ?? "0"), proven.sequence);
  same("requestId", served.requestId ?? "", proven.requestId);
  same("time", Math.floor(Date.parse(served.time) ), Number(proven.timeMicros / 1000n));
  same("operation", served.operation ?? "", proven.operation);
  same("consumerKbo", served.consumerKbo ?? "", proven.consumerKbo);
  same("endUser", served.endUser ?? "", proven.endUser ?? "");
  same("citizen", served.citizen ?? "", proven.citizen ?? "");
  same("dataset", served.dataset ?? "", proven.dataset);
  same("fieldsRequested", served.fieldsRequested ?? [], proven.fieldsRequested);
  same("fieldsReturned", served.fieldsReturned ?? [], proven.fieldsReturned);
  same("purpose", served.purpose ?? "", proven.purpose);
  same("authorisationReference", served.authorisationReference ?? "", proven.authorisationReference ?? "");
  same("authorisationVersion", served.authorisationVersion ?? 0, proven.authorisationVersion ?? 0);
  same("decision", served.decision ?? "", proven.decision);
  same("reason", served.reason ?? "", proven.reason ?? "");
  same("outcome", served.outcome ?? "", proven.outcome);
  same("sourceKbo", served.sourceKbo ?? "", proven.sourceKbo ?? "");
  same("detail", served.detail ?? "", proven.detail);
  same("previousHash", served.previousHash ?? "", b64encode(proven.previousHash));
  return out;
}
