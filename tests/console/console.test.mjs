// The web console in a real browser (headless Chromium through Playwright),
// against a fresh demo: sign in with the auditor organisation's client
// certificate and a person's token, search, open an entry and see its
// proof verified in the browser only with the witness's cosignature (the
// log's key alone, a witness that did not cosign or a forged cosignature:
// not verified), tamper with a served proof and with served fields and see
// verification fail, an entry whose authorisation reference would lead
// elsewhere (no request leaves its route), export (CSV, and JSON Lines
// that `semel audit verify` checks with the witness's key), checkpoints and
// their cosignatures and consistency, the
// overview and its unusual patterns, the three languages, the citizen's
// page, a browser without a certificate; axe-core on every view.
// Usage: node console.test.mjs DEMO_DIR SCREENSHOTS_DIR SEMEL_BINARY
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import { launch, newContext, baseUrl, manifest, org, token, axe, shot, check, fail, log, summary } from './lib.mjs';

const [demoDir, shots, semel] = process.argv.slice(2);
if (!demoDir || !shots || !semel) {
  console.error('usage: node console.test.mjs DEMO_DIR SCREENSHOTS_DIR SEMEL_BINARY');
  process.exit(2);
}

const base = baseUrl(demoDir);
const m = manifest(demoDir);
const auditor = org(demoDir, 'control-commission');
const cpas = org(demoDir, 'cpas-anderlecht');
const portal = org(demoDir, 'irisbox');
const citizenJwt = readFileSync(m.citizen_token, 'utf8').trim();
const claimsOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
const karim = claimsOf(citizenJwt).sub;
const clerk = claimsOf(token(demoDir, 'cpas-anderlecht')).sub;

/** Valid national numbers (born 1950) nobody opened a file on. */
function strangers(n) {
  const out = [];
  for (let serial = 101; out.length < n; serial += 2) {
    const nine = `500615${String(serial).padStart(3, '0')}`;
    out.push(nine + String(97 - (Number(nine) % 97)).padStart(2, '0'));
  }
  return out;
}

async function axeClean(page, view) {
  const r = await axe(page);
  for (const v of r.serious) log(`axe ${view}: ${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join(' | ')}`);
  check(r.serious.length === 0, `axe-core: no serious or critical violation on ${view} (${r.violations.length} minor, ${r.passes.length} rules pass)`);
}

async function untilVerdict(page, seq) {
  // Checkpoints are signed every few seconds: an entry newer than the
  // latest one is not provable yet.
  for (let i = 0; i < 30; i++) {
    // Leave the entry's address first: going to the address the page is
    // already at would not show the entry again.
    await page.goto(`${base}/console/#/checkpoints`);
    await page.goto(`${base}/console/#/entry/${seq}`);
    await page.waitForFunction(() => !document.getElementById('verdict').classList.contains('pending') || /newer|récente|recenter/.test(document.getElementById('verdict').textContent), null, { timeout: 20000 });
    const cls = await page.getAttribute('#verdict', 'class');
    if (!cls.includes('pending')) return cls;
    await page.waitForTimeout(1000);
  }
  return 'timeout';
}

// Every text the console uses exists in French, Dutch and English.
{
  const assets = new URL('../../crates/semel-http/console/', import.meta.url);
  const { KEYS } = await import(new URL('i18n.js', assets));
  const used = new Set();
  for (const f of ['console.js', 'citizen.js', 'index.html', 'citizen.html']) {
    const text = readFileSync(new URL(f, assets), 'utf8');
    for (const m of text.matchAll(/\bt\("([^"]+)"/g)) used.add(m[1]);
    for (const m of text.matchAll(/data-i18n(?:-label)?="([^"]+)"/g)) used.add(m[1]);
  }
  const dynamic = [...used].filter((k) => !k.includes('${'));
  for (const lang of ['fr', 'nl', 'en']) {
    const missing = dynamic.filter((k) => !KEYS[lang].includes(k));
    check(missing.length === 0, `every text the console shows exists in ${lang} (${used.size} keys${missing.length ? `; missing: ${missing.join(', ')}` : ''})`);
  }
  for (const kind of ['NO_ACTIVE_FILE_FISHING', 'MANY_REFUSALS']) {
    check(['fr', 'nl', 'en'].every((l) => KEYS[l].includes(`pat.${kind}`)), `pattern ${kind} is worded in every language`);
  }
}

const browser = await launch();
let status = 0;
try {
  // ---- traffic: a clerk of CPAS Anderlecht consults Karim (allowed), then
  // fishes for four people the CPAS has no file on (refused NO_ACTIVE_FILE).
  {
    const ctx = await newContext(browser, demoDir, cpas.kbo);
    const page = await ctx.newPage();
    await page.goto(`${base}/console/`);
    const results = await page.evaluate(async ({ jwt, karim, strangers }) => {
      const post = async (citizen) => {
        const r = await fetch('/v1/lookups', {
          method: 'POST',
          headers: { Authorization: `Bearer ${jwt}`, 'Content-Type': 'application/json' },
          body: JSON.stringify({ citizen, dataset: 'national_register.residence', fields: ['street', 'municipality'], purpose: 'RIS_ELIGIBILITY' }),
        });
        return { status: r.status, body: await r.json() };
      };
      const out = [await post(karim)];
      for (const s of strangers) out.push(await post(s));
      return out;
    }, { jwt: token(demoDir, 'cpas-anderlecht'), karim, strangers: strangers(4) });
    check(results[0].status === 200, `the clerk's lookup of the demo citizen is allowed (${results[0].status})`);
    const refused = results.slice(1).filter((r) => JSON.stringify(r.body).includes('NO_ACTIVE_FILE'));
    check(refused.length === 4, `four lookups without a file are refused NO_ACTIVE_FILE (${results.slice(1).map((r) => r.status).join(',')})`);
    await ctx.close();
  }

  const ctx = await newContext(browser, demoDir, auditor.kbo, { locale: 'en-GB', acceptDownloads: true });
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));

  // ---- sign in
  await page.goto(`${base}/console/`);
  await page.waitForSelector('#view-signin:not([hidden])');
  await axeClean(page, 'sign-in');
  await shot(page, shots, '01-sign-in');
  check(typeof m.witness_key === 'string' && m.witness_key.includes('+') && m.witness_quorum === 1,
    `demo.json publishes the witness's key and the quorum (${m.witness_quorum})`);
  // First with the log's published key alone: every check runs, but the
  // log's own signature does not make an entry verified (an operator
  // holding the key could have rewritten and re-signed the log).
  const signIn = async (witnessKeys, quorum = '') => {
    await page.goto(`${base}/console/#/signin`);
    await page.waitForSelector('#view-signin:not([hidden])');
    await page.fill('#token', token(demoDir, 'control-commission'));
    await page.fill('#vkey', m.verifier_key);
    await page.fill('#wkeys', witnessKeys.join('\n'));
    await page.fill('#quorum', quorum);
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#view-search:not([hidden])');
  };
  await signIn([]);
  check((await page.textContent('#who')).includes('Signed in as'), `signed in: ${await page.textContent('#who')}`);
  await page.fill('#q-consumer', cpas.kbo);
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#search-results table');
  {
    const first = await page.$eval('#search-results tbody tr:last-child a', (a) => a.textContent);
    const v = await untilVerdict(page, first);
    const text = await page.textContent('#verdict');
    check(v.includes('warn') && text.startsWith('Not verified'), `with the log's key alone, an entry is not called verified: ${text}`);
    const steps = await page.$$eval('#steps li', (lis) => lis.map((li) => li.className));
    check(steps.length === 4 && steps.every((c) => c === 'ok'), `...though every check ran and passed (${steps.join(',')})`);
    await shot(page, shots, '03a-log-key-alone');
  }
  // Then with the witness's key, as `semel audit verify --witness-key`.
  await signIn([m.witness_key]);
  await page.goto(`${base}/console/#/search`);

  // ---- search: the clerk's refusals, by consumer, decision and reason
  await page.fill('#q-consumer', cpas.kbo);
  await page.selectOption('#q-decision', 'AUDIT_DECISION_REFUSED');
  await page.fill('#q-reason', 'NO_ACTIVE_FILE');
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#search-results table');
  const count = await page.textContent('#search-count');
  const rows = await page.$$eval('#search-results tbody tr', (trs) => trs.map((tr) => tr.textContent));
  check(rows.length >= 4 && rows.every((r) => r.includes('NO_ACTIVE_FILE')), `search by consumer, decision and reason: ${rows.length} rows, all NO_ACTIVE_FILE ("${count}")`);
  check(/\b[4-9]\d* entries match|\b\d{2,} entries match/.test(count), `the count is shown: ${count}`);
  await axeClean(page, 'search results');
  await shot(page, shots, '02-search');

  // ---- an entry, its proof verified in the browser
  const seq = await page.$eval('#search-results tbody tr a', (a) => a.textContent);
  let verdict = await untilVerdict(page, seq);
  check(verdict.includes('ok'), `entry ${seq}: proof verified in the browser (${await page.textContent('#verdict')})`);
  const steps = await page.$$eval('#steps li', (lis) => lis.map((li) => li.className));
  check(steps.length === 4 && steps.every((c) => c === 'ok'), `all four checks pass: signature, leaf, path, fields (${steps.join(',')})`);
  const fields = await page.textContent('#entry-fields');
  check(fields.includes('NO_ACTIVE_FILE') && fields.includes(clerk), 'the entry page shows the proven fields (reason, person)');
  check((await page.textContent('#key-note')).includes('published key you gave'), 'the checkpoint was checked with the published key, not the served one');
  check((await page.textContent('#key-note')).includes('cosigned by witness.'), `...and is cosigned by the witness: ${await page.textContent('#key-note')}`);
  await axeClean(page, 'entry');
  await shot(page, shots, '03-entry-verified');

  // The allowed lookup's entry shows its authorisation, legal basis and all.
  await page.goto(`${base}/console/#/search`);
  await page.click('#search-form button[type=reset], #search-form button[type=submit]');
  await page.fill('#q-consumer', cpas.kbo);
  await page.selectOption('#q-decision', 'AUDIT_DECISION_ALLOWED');
  await page.fill('#q-reason', '');
  await page.fill('#q-citizen', karim);
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#search-results table');
  const allowedSeq = await page.$eval('#search-results tbody tr a', (a) => a.textContent);
  verdict = await untilVerdict(page, allowedSeq);
  check(verdict.includes('ok'), `allowed entry ${allowedSeq}: proof verified`);
  check((await page.textContent('#key-note')).includes('only grew since this browser last verified'), `the log only grew since the last visit: ${await page.textContent('#key-note')}`);
  await page.waitForFunction(() => document.getElementById('entry-authorisation').textContent.length > 20);
  const auth = await page.textContent('#entry-authorisation');
  check(/Legal basis/.test(auth) && /v\d/.test(auth), `the authorisation it was decided under, with its legal basis: ${auth.slice(0, 120)}`);
  await shot(page, shots, '04-entry-authorisation');

  // ---- tampering: a served proof with one hash changed fails
  await page.route('**/inclusionProof*', async (route) => {
    const resp = await route.fetch();
    const json = await resp.json();
    const p = Buffer.from(json.proof[0], 'base64');
    p[0] ^= 1;
    json.proof[0] = p.toString('base64');
    await route.fulfill({ response: resp, json });
  });
  await page.goto(`${base}/console/#/search`);
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('bad') && (await page.textContent('#verdict')).includes('FAILED'), `a tampered proof fails: ${await page.textContent('#verdict')}`);
  await shot(page, shots, '05-tampered-proof');
  await page.unroute('**/inclusionProof*');
  // ... and so do served fields that are not the proven encoding's.
  await page.route('**/inclusionProof*', async (route) => {
    const resp = await route.fetch();
    const json = await resp.json();
    json.entry.endUser = 'someone-else';
    await route.fulfill({ response: resp, json });
  });
  await page.goto(`${base}/console/#/search`);
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('bad') && (await page.textContent('#verdict')).includes('endUser'), `served fields that differ from the proven entry fail: ${await page.textContent('#verdict')}`);
  await page.unroute('**/inclusionProof*');
  // ... and so does a log that is not the one this browser verified before
  // (the browser remembers the newest checkpoint it verified, per key).
  check((await page.evaluate(() => localStorage.getItem('semel.seen') || '')).includes('"size"'), 'the browser remembers the checkpoint it verified');
  await page.evaluate((k) => {
    const all = JSON.parse(localStorage.getItem('semel.seen') || '{}');
    all[k] = { size: '3', root: '00'.repeat(32) };
    localStorage.setItem('semel.seen', JSON.stringify(all));
  }, m.verifier_key.trim());
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('bad') && (await page.textContent('#verdict')).includes('rewritten'), `a log inconsistent with what this browser saw before fails: ${await page.textContent('#verdict')}`);
  await page.evaluate(() => localStorage.removeItem('semel.seen'));

  // ---- a forged cosignature fails; a witness that did not cosign does not
  // make an entry verified.
  const forgeCosignatures = async (route) => {
    const resp = await route.fetch();
    const json = await resp.json();
    const forge = (note) => note.replace(/^(\u2014 witness\.\S+ )(\S+)$/gm, (_, head, b64) => {
      const blob = Buffer.from(b64, 'base64');
      blob[blob.length - 1] ^= 1;
      return head + blob.toString('base64');
    });
    if (json.checkpoint) json.checkpoint.signedNote = forge(json.checkpoint.signedNote);
    for (const c of json.checkpoints || []) c.signedNote = forge(c.signedNote);
    await route.fulfill({ response: resp, json });
  };
  await page.route('**/v1/audit/checkpoints**', forgeCosignatures);
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('bad') && /cosignature by witness .* does not verify/.test(await page.textContent('#verdict')),
    `a forged cosignature fails: ${await page.textContent('#verdict')}`);
  await shot(page, shots, '05a-forged-cosignature');
  await page.unroute('**/v1/audit/checkpoints**', forgeCosignatures);
  const otherWitness = execFileSync(semel, ['witness', 'key', '--dir', mkdtempSync(join(tmpdir(), 'witness-')),
    '--name', 'witness.semel-demo.invalid/other'], { encoding: 'utf8' }).trim();
  await signIn([otherWitness]);
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('warn') && (await page.textContent('#verdict')).startsWith('Not verified: the checkpoint carries 0 valid cosignatures'),
    `a witness that did not cosign does not make it verified: ${await page.textContent('#verdict')}`);
  // Two witnesses, quorum two: the demo's alone is not enough; quorum one is.
  await signIn([m.witness_key, otherWitness], '2');
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('warn') && (await page.textContent('#verdict')).includes('1 valid cosignatures of the 2'),
    `one cosignature of a quorum of two is not verified: ${await page.textContent('#verdict')}`);
  await signIn([m.witness_key, otherWitness], '1');
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('ok'), `one cosignature of a quorum of one is verified: ${await page.textContent('#verdict')}`);
  // The same witness given twice is one witness: a quorum of two is not met.
  await signIn([m.witness_key, m.witness_key], '2');
  verdict = await untilVerdict(page, seq);
  check(verdict.includes('warn') && (await page.textContent('#verdict')).includes('1 valid cosignatures of the 2'),
    `one witness given twice does not make a quorum of two: ${await page.textContent('#verdict')}`);
  await signIn([m.witness_key]);

  // ---- an entry whose authorisation reference would lead the request
  // elsewhere (`../../v1/datasets`): the console requests nothing outside
  // the routes it means. The served entry is altered (so its proof fails,
  // but its fields are still shown).
  {
    const evil = '../../v1/datasets';
    await page.route('**/inclusionProof*', async (route) => {
      const resp = await route.fetch();
      const json = await resp.json();
      const enc = Buffer.from(json.entry.encoding, 'base64');
      const ref = Buffer.from(json.entry.authorisationReference);
      const at = enc.indexOf(ref);
      if (at >= 2 && enc.readUInt16BE(at - 2) === ref.length) {
        const len = Buffer.alloc(2);
        len.writeUInt16BE(evil.length);
        json.entry.encoding = Buffer.concat([enc.subarray(0, at - 2), len, Buffer.from(evil), enc.subarray(at + ref.length)]).toString('base64');
        json.entry.authorisationReference = evil;
      }
      await route.fulfill({ response: resp, json });
    });
    const requested = [];
    const onRequest = (r) => requested.push(new URL(r.url()).pathname);
    page.on('request', onRequest);
    verdict = await untilVerdict(page, allowedSeq);
    await page.waitForFunction(() => document.getElementById('entry-authorisation').textContent.length > 0);
    page.off('request', onRequest);
    await page.unroute('**/inclusionProof*');
    const fieldsShown = await page.textContent('#entry-fields');
    check(fieldsShown.includes(evil), `the altered entry, with reference ${evil}, is shown (${verdict})`);
    const api = requested.filter((p) => p.startsWith('/v1/'));
    const expected = /^\/v1\/(audit\/checkpoints(\/latest)?|audit\/consistencyProof|auditEntries\/\d+\/inclusionProof|organisations)$/;
    check(api.length > 0 && api.every((p) => expected.test(p)), `the console requested only the routes it means: ${[...new Set(api)].join(' ')}`);
    check(!api.includes('/v1/datasets'), 'the reference did not make the console read /v1/datasets');
    check((await page.textContent('#entry-authorisation')).includes('not well formed'), `the reference is not looked up: ${await page.textContent('#entry-authorisation')}`);
    // The path builder encodes each value as one segment and refuses dot
    // segments; a path that would leave /v1/ is not requested.
    const unit = await page.evaluate(async (evil) => {
      const api = await import('/console/api.js');
      const threw = (f) => { try { f(); return false; } catch { return true; } };
      return {
        encoded: api.path`/v1/authorisationVersions/${evil}`,
        slashes: api.path`/v1/authorisationVersions/${'BSC/2024/017'}`,
        dots: threw(() => api.path`/v1/auditEntries/${'..'}/inclusionProof`),
        leaves: threw(() => api.apiUrl('/v1/authorisationVersions/../../datasets')),
        refs: [evil, '..', 'BSC/./1', 'BSC/2024/017', 'CSSS.2024.01'].map(api.isReference),
      };
    }, evil);
    check(unit.encoded === '/v1/authorisationVersions/..%2F..%2Fv1%2Fdatasets' && unit.slashes === '/v1/authorisationVersions/BSC%2F2024%2F017',
      `a reference is one fully encoded path segment: ${unit.encoded}, ${unit.slashes}`);
    check(unit.dots && unit.leaves, 'a dot segment, or a path leaving /v1/, is refused rather than requested');
    check(JSON.stringify(unit.refs) === '[false,false,false,true,true]', `references with dot segments are not well formed (${unit.refs})`);
  }

  // The count is of what the pages show: the console's own reads, recorded
  // with the citizen they name, come after it.
  await page.goto(`${base}/console/#/search`);
  await page.fill('#q-consumer', '');
  await page.selectOption('#q-decision', '');
  await page.fill('#q-citizen', karim);
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#search-results table');
  const counted = Number((await page.textContent('#search-count')).replace(/[^0-9]/g, ''));
  const listed = (await page.$$('#search-results tbody tr')).length;
  check(counted === listed, `the count (${counted}) is the number of entries listed (${listed})`);

  // ---- export: CSV and a verifiable JSON Lines excerpt
  await page.goto(`${base}/console/#/search`);
  await page.fill('#q-citizen', '');
  await page.fill('#q-consumer', cpas.kbo);
  await page.selectOption('#q-decision', '');
  await page.fill('#q-reason', '');
  await page.click('#search-form button[type=submit]');
  await page.waitForSelector('#search-results table');
  const total = Number((await page.textContent('#search-count')).replace(/[^0-9]/g, ''));
  await page.waitForSelector('#export-csv:not([disabled])');
  let [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const csvPath = join(shots, 'export.csv');
  await download.saveAs(csvPath);
  const csv = readFileSync(csvPath, 'utf8').trim().split('\n');
  check(csv[0].startsWith('sequence,time,operation,consumer_kbo') && csv.length - 1 === total, `CSV export: ${csv.length - 1} rows for ${total} entries`);
  check((await page.textContent('#export-status')).includes(`${total}`), `export progress reported: ${await page.textContent('#export-status')}`);
  [download] = await Promise.all([page.waitForEvent('download', { timeout: 120000 }), page.click('#export-jsonl')]);
  const jsonlPath = join(shots, 'export.jsonl');
  await download.saveAs(jsonlPath);
  await shot(page, shots, '06-export');
  const witnessArgs = ['--witness-key', m.witness_key, '--witness-quorum', String(m.witness_quorum)];
  const out = execFileSync(semel, ['audit', 'verify', '--export', jsonlPath, '--verifier-key', m.verifier_key, ...witnessArgs], { encoding: 'utf8' });
  check(out.startsWith('verified: an excerpt of'), `semel audit verify accepts the browser's excerpt with the witness's key and quorum: ${out.split('\n')[0]}`);
  check(JSON.parse(readFileSync(jsonlPath, 'utf8').split('\n')[0]).checkpoint.includes('\u2014 witness.'), "the excerpt's checkpoint carries the witness's cosignature");
  const lines = readFileSync(jsonlPath, 'utf8').trim().split('\n');
  const altered = lines.map((l, i) => (i === 1 ? l.replace(/"purpose":"[^"]*"/, '"purpose":"SOMETHING_ELSE"') : l));
  writeFileSync(join(shots, 'export-altered.jsonl'), altered.join('\n') + '\n');
  let refusedAltered = false;
  try {
    execFileSync(semel, ['audit', 'verify', '--export', join(shots, 'export-altered.jsonl'), '--verifier-key', m.verifier_key], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    refusedAltered = `${e.stderr}`.includes('purpose');
  }
  check(refusedAltered, 'an altered excerpt is refused by semel audit verify, naming the field');

  // ---- checkpoints and their consistency, verified in the browser
  // The broker signs a checkpoint every few seconds while the log grows
  // (the auditor's own reads are entries): wait for a second one.
  // ...and for one of them, older than the one its witness cosigned last.
  const checkConsistency = async () => {
    await page.evaluate(() => {
      const c = document.getElementById('consistency');
      c.className = 'verdict';
      c.textContent = '';
    });
    await page.click('#consistency-form button[type=submit]');
    await page.waitForSelector('#consistency.ok, #consistency.bad, #consistency.warn');
  };
  let cosigs = [];
  for (let i = 0; i < 40; i++) {
    await page.goto(`${base}/console/#/search`);
    await page.goto(`${base}/console/#/checkpoints`);
    await page.waitForSelector('#cp-list tbody tr');
    cosigs = await page.$$eval('#cp-list tbody tr td:nth-child(4)', (tds) => tds.map((td) => td.textContent));
    const w = cosigs.indexOf('1 of 1 required');
    if (cosigs.length >= 2 && w >= 0 && w < cosigs.length - 1) break;
    await page.waitForTimeout(1000);
  }
  const sigs = await page.$$eval('#cp-list tbody tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
  check(sigs.length >= 2 && sigs.every((s) => s === 'valid'), `${sigs.length} checkpoints, every signature valid in the browser`);
  const witnessedAt = cosigs.indexOf('1 of 1 required');
  check(witnessedAt >= 0 && cosigs.every((c) => /^[01] of 1 required$/.test(c)), `the checkpoint the witness cosigned last shows its cosignature: ${cosigs.slice(0, 4).join(' | ')}`);
  // The older of two consistent checkpoints against a newer one that is
  // not cosigned is not verified; against the witnessed one, it is.
  const unwitnessedAt = cosigs.indexOf('0 of 1 required');
  if (unwitnessedAt >= 0 && unwitnessedAt < cosigs.length - 1) {
    await page.selectOption('#cp-newer', String(unwitnessedAt));
    await page.selectOption('#cp-older', String(cosigs.length - 1));
    await checkConsistency();
    check((await page.getAttribute('#consistency', 'class')).includes('warn'), `consistent, but with an uncosigned newer checkpoint: not verified: ${await page.textContent('#consistency')}`);
  }
  await page.selectOption('#cp-newer', String(witnessedAt));
  await page.selectOption('#cp-older', String(cosigs.length - 1));
  await checkConsistency();
  check((await page.getAttribute('#consistency', 'class')).includes('ok'), `consistency verified: ${await page.textContent('#consistency')}`);
  await axeClean(page, 'checkpoints');
  await shot(page, shots, '07-checkpoints');

  // ---- overview: charts, refusals by reason, the fishing clerk
  await page.goto(`${base}/console/#/overview`);
  await page.waitForSelector('#ov-patterns li');
  const patterns = await page.textContent('#ov-patterns');
  check(patterns.includes(clerk) && patterns.includes('no file'), `the overview flags the clerk's NO_ACTIVE_FILE fishing: ${patterns.slice(0, 160)}`);
  check(await page.$('#ov-chart svg rect') !== null, 'the overview draws lookups per day');
  check((await page.textContent('#ov-reasons')).includes('NO_ACTIVE_FILE'), 'refusals by reason are shown');
  await axeClean(page, 'overview');
  await shot(page, shots, '08-overview');
  await page.click('#ov-patterns a');
  await page.waitForSelector('#view-search:not([hidden]) #search-results table');
  check((await page.inputValue('#q-person')) === clerk, 'a pattern opens its entries in the search');

  // The period's end counts: nothing before yesterday's end was made today.
  {
    const d = new Date();
    d.setUTCDate(d.getUTCDate() - 1);
    await page.goto(`${base}/console/#/overview`);
    await page.waitForSelector('#ov-patterns li');
    await page.fill('#o-until', d.toISOString().slice(0, 10));
    await page.click('#overview-form button[type=submit]');
    await page.waitForFunction(() => /^0 audit entries/.test(document.getElementById('ov-total').textContent));
    check(true, `an overview until yesterday counts nothing of today: ${await page.textContent('#ov-total')}`);
  }

  // ---- languages
  await page.goto(`${base}/console/#/overview`);
  await page.selectOption('#lang', 'fr');
  await page.waitForFunction(() => document.documentElement.lang === 'fr');
  check((await page.textContent('nav')).includes('Recherche') && (await page.textContent('#h-overview')) === "Vue d'ensemble", 'French');
  await page.waitForSelector('#ov-patterns li');
  await shot(page, shots, '09-overview-fr');
  await page.selectOption('#lang', 'nl');
  await page.waitForFunction(() => document.documentElement.lang === 'nl');
  check((await page.textContent('nav')).includes('Zoeken') && (await page.textContent('#h-overview')) === 'Overzicht', 'Dutch');
  await axeClean(page, 'overview (nl)');
  await page.selectOption('#lang', 'en');

  // ---- keyboard: the skip link leads to the content; a section is opened
  // with Enter and its heading takes the focus (screen readers announce it).
  await page.goto(`${base}/console/#/search`);
  await page.focus('a.skip');
  const box = await page.$eval('a.skip', (a) => a.getBoundingClientRect().left);
  check(box >= 0, 'the skip link shows when it has the focus');
  await page.keyboard.press('Enter');
  check((await page.evaluate(() => document.activeElement.id)) === 'main', 'Enter on "Skip to content" moves the focus to the content');
  await page.focus('nav a[href="#/overview"]');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#view-overview:not([hidden])');
  check((await page.evaluate(() => document.activeElement.id)) === 'h-overview', 'Enter on a section opens it and focuses its heading');
  check((await page.getAttribute('nav a[href="#/overview"]', 'aria-current')) === 'page', 'the current section is marked for screen readers');
  // ---- without the published key, nothing is called verified
  await page.goto(`${base}/console/#/signin`);
  await page.fill('#token', token(demoDir, 'control-commission'));
  await page.fill('#vkey', '');
  await page.click('#signin-form button[type=submit]');
  await page.waitForSelector('#view-search:not([hidden])');
  verdict = await untilVerdict(page, seq);
  const unpinned = await page.textContent('#verdict');
  check(verdict.includes('warn') && unpinned.startsWith('Not verified'), `with only the served key, an entry is not called verified: ${unpinned}`);
  await shot(page, shots, '12-unpinned-key');
  await page.goto(`${base}/console/#/checkpoints`);
  await page.waitForSelector('#cp-list tbody tr');
  const unpinnedSigs = await page.$$eval('#cp-list tbody tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
  check(unpinnedSigs.every((w) => w.includes('unverified')), `checkpoints checked with the served key say so: ${unpinnedSigs[0]}`);

  check(errors.length === 0, `no script error in the console (${errors.join('; ')})`);
  await ctx.close();

  // ---- the citizen's page, through the portal, token in the fragment
  {
    const ctx = await newContext(browser, demoDir, portal.kbo, { locale: 'fr-BE' });
    const page = await ctx.newPage();
    const resp = await page.goto(`${base}/console/citizen.html#token=${citizenJwt}`);
    check((resp.headers()['content-security-policy'] || '').includes("frame-ancestors 'self'"), 'the citizen page may be framed by its own origin (the portal)');
    await page.waitForSelector('#accesses li');
    check(!page.url().includes('token='), 'the token is removed from the address');
    const text = await page.textContent('#accesses');
    check(text.includes(cpas.name) && /Base légale/.test(text), `the citizen sees who consulted them, in French, with the legal basis: ${text.slice(0, 160)}`);
    check(!text.includes(clerk), 'the citizen is not shown the clerk');
    await axeClean(page, 'citizen page');
    await shot(page, shots, '10-citizen-fr');
    await ctx.close();
  }

  // ---- an organisation's own auditor (its DPO) sees its own entries only
  {
    const commune = org(demoDir, 'commune-schaerbeek');
    const dpoJwt = execFileSync(semel, ['token', '--dir', join(demoDir, 'pki'), '--sub', 'dpo@commune-schaerbeek',
      '--org', commune.kbo, '--roles', 'auditor'], { encoding: 'utf8' }).trim();
    const ctx = await newContext(browser, demoDir, commune.kbo);
    const page = await ctx.newPage();
    await page.goto(`${base}/console/`);
    await page.fill('#token', dpoJwt);
    await page.fill('#vkey', m.verifier_key);
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#view-search:not([hidden])');
    await page.fill('#q-consumer', cpas.kbo);
    await page.click('#search-form button[type=submit]');
    await page.waitForSelector('#error:not([hidden])');
    check((await page.textContent('#error')).includes('OTHER_ORGANISATION'), `a DPO asking for another organisation's entries is refused: ${await page.textContent('#error')}`);
    await page.fill('#q-consumer', '');
    await page.click('#search-form button[type=submit]');
    await page.waitForSelector('#search-results table');
    const consumers = await page.$$eval('#search-results tbody tr td:nth-child(3)', (tds) => tds.map((td) => td.textContent));
    check(consumers.length > 0 && consumers.every((c) => c.includes(commune.kbo)), `a DPO's search shows its own organisation's entries only (${consumers.length} rows)`);
    await page.goto(`${base}/console/#/overview`);
    await page.waitForSelector('#ov-patterns li');
    check(!(await page.textContent('#ov-patterns')).includes(clerk), "a DPO's overview shows nothing of another organisation's people");
    await shot(page, shots, '13-dpo-own-entries');
    await ctx.close();
  }

  // ---- a browser without a certificate is told what is missing
  {
    const ctx = await newContext(browser, demoDir, null);
    const page = await ctx.newPage();
    await page.goto(`${base}/console/`);
    await page.fill('#token', token(demoDir, 'control-commission'));
    await page.click('#signin-form button[type=submit]');
    await page.waitForSelector('#error:not([hidden])');
    check((await page.textContent('#error')).includes('certificate'), `without a certificate: ${await page.textContent('#error')}`);
    await shot(page, shots, '11-no-certificate');
    await ctx.close();
  }
} catch (e) {
  fail(e.stack || String(e));
  status = 1;
} finally {
  await browser.close();
}
const failed = summary();
process.exit(failed || status ? 1 : 0);
