// Scores a results file of the http-cache-tests suite (npm `http-cache-tests`) the way
// cache-tests.fyi does (its lib/display.mjs): a test whose dependencies did not pass is not
// tested; a Setup error is not tested; otherwise a required test (a test without a kind is
// required) passes only on `true`. Browser-only tests are left out, as the suite's CLI does.
//
// usage: node score.mjs <package dir> <results.json>   prints one JSON object on stdout
import path from 'path'
import fs from 'fs'
import { pathToFileURL } from 'url'

const [pkg, resultsFile] = process.argv.slice(2)
const load = async f => (await import(pathToFileURL(path.join(pkg, f)).href)).default
const suites = await load('tests/index.mjs')
suites.push(await load('tests/surrogate-control.mjs')) // the CLI runs this suite too
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))
const byId = new Map(suites.flatMap(s => s.tests.map(t => [t.id, t])))
const kindOf = t => t.kind || 'required'

const verdicts = new Map()
function verdict (id, visiting = new Set()) {
  if (verdicts.has(id)) return verdicts.get(id)
  const t = byId.get(id)
  const r = results[id]
  if (r === undefined) return 'untested'
  if (visiting.has(id)) return 'dependency_fail' // a cycle (none known)
  visiting.add(id)
  const deps = (t.depends_on || []).map(d => verdict(d, visiting))
  visiting.delete(id)
  const v = deps.every(d => ['pass', 'yes'].includes(d)) ? own(t, r) : 'dependency_fail'
  verdicts.set(id, v)
  return v
}

function own (t, r) {
  if (Array.isArray(r) && r[0] === 'Setup') return r[1] === 'retry' ? 'retry' : 'setup_fail'
  const k = kindOf(t)
  if (k === 'required') return r === true ? 'pass' : 'fail'
  if (k === 'optimal') return r === true ? 'pass' : 'optional_fail'
  return r === true ? 'yes' : 'no'
}

const out = { results: Object.keys(results).length, fetch_errors: 0, required: 0, pass: 0, fail: 0, not_tested: 0, suites: [], failures: [], not_tested_ids: [] }
for (const [id, r] of Object.entries(results)) {
  if (Array.isArray(r) && r[0] === 'FetchError') out.fetch_errors++
}
for (const s of suites) {
  const row = { id: s.id, required: 0, pass: 0, fail: 0, not_tested: 0 }
  for (const t of s.tests) {
    if (t.browser_only || kindOf(t) !== 'required') continue
    const v = verdict(t.id)
    row.required++
    if (v === 'pass') row.pass++
    else if (v === 'fail') {
      row.fail++
      out.failures.push({ id: t.id, suite: s.id, message: String(results[t.id] && results[t.id][1]), name: t.name })
    } else {
      row.not_tested++
      out.not_tested_ids.push({ id: t.id, suite: s.id, why: v })
    }
  }
  for (const k of ['required', 'pass', 'fail', 'not_tested']) out[k] += row[k]
  out.suites.push(row)
}
console.log(JSON.stringify(out))
