// What both pages build their DOM with: elements from text only (never
// HTML), errors in words, the skip link.

import { ApiError } from "./api.js";
import { t, translate, language, setLanguage, dropLangParameter } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

/** An element; `text` sets its text (never HTML), other keys attributes. */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v;
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

/** Shows an error in the page's alert box, in words; none hides it. */
export function showError(e) {
  const box = $("error");
  if (!e) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  let text;
  if (e instanceof ApiError && e.reason === "CLIENT_CERTIFICATE_REQUIRED") text = t("err.certificate");
  else if (e instanceof ApiError && e.reason.startsWith("TOKEN_")) text = t("err.token", e.reason);
  else if (e instanceof ApiError) text = t("err.generic", e.message, e.reason || e.status);
  else text = e.message || String(e);
  box.textContent = text;
  box.hidden = false;
}

/** The skip link moves the focus to the content without touching the
 * address (which names the section). */
export function skipLink() {
  document.querySelector(".skip").addEventListener("click", (ev) => {
    ev.preventDefault();
    $("main").focus();
  });
}

/** Translates the page, and again whenever the reader picks a language
 * (which wins over the address's `?lang=`); then `changed()`. */
export function languageSelector(changed) {
  translate();
  $("lang").value = language();
  $("lang").addEventListener("change", () => {
    setLanguage($("lang").value);
    dropLangParameter();
    translate();
    changed();
  });
}
