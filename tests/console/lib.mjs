// Helpers for the console's browser tests: Playwright (playwright-core,
// driving the system Chromium) against a running `semel demo`, whose
// demo.json names the HTTP/JSON face, each organisation's certificate, key
// and token.
import { readFileSync, mkdirSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const CHROMIUM = process.env.SEMEL_CHROMIUM || '/usr/bin/chromium';

/** The demo's manifest (demo.json) as an object. */
export function manifest(demoDir) {
  return JSON.parse(readFileSync(join(demoDir, 'demo.json'), 'utf8'));
}

/** The HTTP/JSON face's base URL (`https://127.0.0.1:PORT`, no trailing slash). */
export function baseUrl(demoDir) {
  const http = manifest(demoDir).http;
  if (!http) throw new Error(`${demoDir}/demo.json has no "http": was the demo started with --no-http?`);
  return http.replace(/\/+$/, '');
}

/** The demo organisation with this slug or enterprise number (KBO). */
export function org(demoDir, slugOrKbo) {
  const o = manifest(demoDir).organisations.find((o) => o.slug === slugOrKbo || o.kbo === slugOrKbo);
  if (!o) throw new Error(`no organisation ${slugOrKbo} in ${demoDir}/demo.json`);
  return o;
}

/** The JWT (text) of a person of the organisation with this slug (or KBO). */
export function token(demoDir, slug) {
  let path;
  try {
    path = org(demoDir, slug).token;
  } catch {
    path = join(demoDir, 'tokens', `${slug}.jwt`);
  }
  return readFileSync(path, 'utf8').trim();
}

/** Headless Chromium from /usr/bin/chromium (no sandbox: we run as root). */
export async function launch(opts = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox'],
    ...opts,
  });
}

/**
 * A browser context presenting the organisation's client certificate (mutual
 * TLS) to the broker's HTTP face. `orgKbo` is a KBO or slug; null gives a
 * context without any certificate. The demo's CA is self-made, hence
 * ignoreHTTPSErrors.
 */
export async function newContext(browser, demoDir, orgKbo, { locale = 'en-GB', ...rest } = {}) {
  const options = { ignoreHTTPSErrors: true, locale, ...rest };
  if (orgKbo) {
    const o = org(demoDir, orgKbo);
    options.clientCertificates = [{ origin: baseUrl(demoDir), certPath: o.cert, keyPath: o.key }];
  }
  return browser.newContext(options);
}

/**
 * Runs axe-core in the page; returns its results plus `serious`: the
 * violations of impact serious or critical.
 */
export async function axe(page, options = {}) {
  // Evaluated through the DevTools protocol rather than added as a script
  // tag: the console's Content-Security-Policy (rightly) refuses inline
  // scripts, and the test must not weaken it.
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) {
    await page.evaluate(readFileSync(join(here, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8'));
  }
  const results = await page.evaluate((opts) => window.axe.run(document, opts), options);
  results.serious = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  return results;
}

/**
 * Saves a full-page PNG `<dir>/<name>.png`; returns its path. A very tall
 * page (the raw OpenAPI JSON is ~50,000 px) takes ~20 s full-page: pass
 * `{ fullPage: false }` there.
 */
export async function shot(page, dir, name, { fullPage = true } = {}) {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${name}.png`);
  await page.screenshot({ path, fullPage });
  log(`screenshot ${path}`);
  return path;
}

let passed = 0;
let failed = 0;

/** Logs one step. */
export function log(msg) {
  console.log(`  .. ${msg}`);
}

/** Asserts: logs `ok: msg`, or throws with `FAIL: msg`. */
export function check(cond, msg) {
  if (cond) {
    passed += 1;
    console.log(`ok: ${msg}`);
    return;
  }
  failed += 1;
  console.log(`FAIL: ${msg}`);
  throw new Error(`check failed: ${msg}`);
}

/** Records a failure that did not come from check (an exception). */
export function fail(msg) {
  failed += 1;
  console.log(`FAIL: ${msg}`);
}

/** The closing line CI reads: `console: N passed, N failed`. */
export function summary() {
  console.log(`console: ${passed} passed, ${failed} failed`);
  return failed;
}
