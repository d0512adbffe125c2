// The citizen's page: who consulted my data, in plain words. A citizen
// portal links to it or frames it from its own address (the broker behind
// the portal's reverse proxy). The citizen's token comes from the portal:
// in the address's fragment (#token=..., never sent to a server and
// removed at once), or typed in.

import { call, claims, setToken, token } from "./api.js";
import { $, el, showError, skipLink, languageSelector } from "./ui.js";
import { t, formatTime, reasonInWords } from "./i18n.js";

let next = "";



function org(name, kbo) {
  return name ? `${name} (${kbo})` : kbo;
}

function access(a) {
  const item = el("li", { class: a.decision === "AUDIT_DECISION_REFUSED" ? "access refused" : "access" });
  const refused = a.decision === "AUDIT_DECISION_REFUSED";
  item.append(el("h2", { text: t(refused ? "cz.lineRefused" : "cz.line", org(a.consumerName, a.consumerKbo)) }));
  const dl = el("dl", { class: "fields" });
  const add = (k, v) => v && dl.append(el("dt", { text: t(k) }), el("dd", { text: v }));
  add("cz.when", formatTime(a.time));
  const what = [(a.datasetDescription || a.dataset || "").replace(/\.$/, ""), (a.fields || []).join(", ")].filter(Boolean).join(": ");
  add("cz.what", what);
  if ((a.checkedFields || []).length) add("checks", t("cz.checked", a.checkedFields.join(", ")));
  add("cz.why", a.purposeDescription ? `${a.purposeDescription} (${a.purpose})` : a.purpose);
  add("cz.law", [a.legalBasis, a.issuingBody, a.authorisationReference].filter(Boolean).join(" · "));
  add("cz.source", a.sourceKbo ? org(a.sourceName, a.sourceKbo) : "");
  item.append(dl);
  if (a.decision === "AUDIT_DECISION_REFUSED") item.append(el("p", { text: t("cz.refused", reasonInWords(a.reason)) }));
  return item;
}

async function load(more) {
  const c = claims();
  if (!c) {
    $("signin-form").hidden = false;
    return;
  }
  $("signin-form").hidden = true;
  $("status").textContent = t("loading");
  try {
    const r = await call("POST", "/v1/citizenAccesses:search", { citizen: c.sub, pageSize: 20, pageToken: more ? next : "" });
    const list = r.accesses || [];
    next = r.nextPageToken || "";
    if (!more) $("accesses").replaceChildren();
    $("accesses").append(...list.map(access));
    $("status").textContent = $("accesses").children.length ? "" : t("cz.none");
    $("more").hidden = !next;
  } catch (e) {
    $("status").textContent = "";
    showError(e);
  }
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    setToken(fragment.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  languageSelector(() => load(false));
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    setToken($("token").value);
    load(false);
  });
  skipLink();
  $("more").addEventListener("click", () => load(true));
  if (token()) load(false);
  else $("signin-form").hidden = false;
}

start();
