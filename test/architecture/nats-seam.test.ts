// runtime/transport is the one place that speaks NATS (docs/architecture.md,
// "One seam to NATS"). Every file under runtime/ is parsed and checked:
// - no import of an `@nats-io/*` package outside runtime/transport/ and the
//   server kits in runtime/nats/, except `@nats-io/nkeys` in runtime/security/
//   (keys and signatures are crypto, not a connection to a server);
// - no NATS name spelled out outside runtime/transport/subjects.ts: subjects
//   and wildcards (`caravan.${run}…`, `_INBOX…`, `$JS.…`, `$KV.…`, `$O.…`),
//   stream and bucket names (`CARAVAN_${run}…`, `caravan_${run}`, `KV_…`,
//   `OBJ_…`), KV keys (`hosts.…`, `slot.…`, `bridge.…`, `bridge-outer.…`,
//   and 'config', 'state', 'summary' where they key the bucket).
// A failure lists every offending file:line:column. The checker itself is
// tested on small snippets, offending and honest, below.
import test from 'ava';
import { readdir, readFile } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkSource, formatViolation, type SeamViolation } from './nats-seam-check.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

async function runtimeViolations(): Promise<SeamViolation[]> {
  const files = (await readdir(join(ROOT, 'runtime'), { recursive: true }))
    .filter((f) => f.endsWith('.ts'))
    .map((f) => relative(ROOT, join(ROOT, 'runtime', f)).split(sep).join('/'))
    .sort();
  if (files.length < 50) throw new Error(`found only ${files.length} files under runtime/`);
  const all: SeamViolation[] = [];
  for (const file of files) all.push(...checkSource(file, await readFile(join(ROOT, file), 'utf8')));
  return all;
}

test('only runtime/transport/ and the server kits import the NATS client (nkeys: runtime/security/ too)', async (t) => {
  const found = (await runtimeViolations()).filter((v) => v.rule === 'import').map(formatViolation);
  t.deepEqual(found, [], `NATS imports outside the seam:\n${found.join('\n')}`);
});

test('only runtime/transport/subjects.ts spells out subjects, stream names and KV keys', async (t) => {
  const found = (await runtimeViolations()).filter((v) => v.rule === 'name').map(formatViolation);
  t.deepEqual(found, [], `NATS names written outside subjects.ts:\n${found.join('\n')}`);
});

// The checker on snippets: what it must catch, and honest code it must leave alone.

const offending = `
import { connect } from '@nats-io/transport-node';
import type { KV } from '@nats-io/kv';
export { Kvm } from '@nats-io/kv';
import { createUser } from '@nats-io/nkeys';
const js = await import('@nats-io/jetstream');
type Obj = import('@nats-io/obj').ObjectStore;
const a = \`caravan.\${run}.act.\${r}.\${s}\`;
const b = 'caravan.' + run + '.ctl.progress';
const c = '_INBOX.' + run;
const d = \`CARAVAN_\${run}_CTL\`;
const e = \`KV_caravan_\${run}\`;
const f = '$JS.API.INFO';
const g = \`$O.\${bucket}.>\`;
for await (const k of await res.kv.keys('hosts.>')) {}
await kv.put(\`slot.\${r}.\${s}\`, bytes);
await res.kv.get('config');
await res.kv.watch({ key: ['state', names.slotKeys] });
const s = await readJson(res, 'summary', decodeRunSummary);
if (e.key === 'state') {}
const h = \`bridge-outer.\${stage}\`;
const i = \`caravan_\${run}_obj\`;
const j = await json('state', decodeRunState);
`;

test('the checker finds every NATS import and name in an offending file, line by line', (t) => {
  const found = checkSource('runtime/host/example.ts', offending);
  t.deepEqual(found.filter((v) => v.rule === 'import').map((v) => `${v.line} ${v.text}`), [
    '2 @nats-io/transport-node', '3 @nats-io/kv', '4 @nats-io/kv', '5 @nats-io/nkeys', '6 @nats-io/jetstream', '7 @nats-io/obj',
  ]);
  t.deepEqual(found.filter((v) => v.rule === 'name').map((v) => `${v.line} ${v.text}`), [
    '8 `caravan.${run}.act.${r}.${s}`', "9 'caravan.'", "10 '_INBOX.'", '11 `CARAVAN_${run}_CTL`', '12 `KV_caravan_${run}`', "13 '$JS.API.INFO'",
    '14 `$O.${bucket}.>`', "15 'hosts.>'", '16 `slot.${r}.${s}`', "17 'config'", "18 'state'", "19 'summary'", "20 'state'",
    '21 `bridge-outer.${stage}`', '22 `caravan_${run}_obj`', "23 'state'",
  ]);
  t.regex(formatViolation(found[0]), /^runtime\/host\/example\.ts:2:\d+ @nats-io\/transport-node: imports @nats-io\/transport-node/);
});

test('the checker lets the seam import and spell what it owns, and security import nkeys', (t) => {
  t.deepEqual(checkSource('runtime/transport/subjects.ts', offending).filter((v) => v.rule === 'name'), []);
  t.deepEqual(checkSource('runtime/transport/run-state.ts', offending).filter((v) => v.rule === 'import'), []);
  t.deepEqual(checkSource('runtime/nats/nats-cluster.ts', offending).filter((v) => v.rule === 'import'), []);
  t.deepEqual(checkSource('runtime/security/host-key.ts', offending).filter((v) => v.rule === 'import').map((v) => v.text),
    ['@nats-io/transport-node', '@nats-io/kv', '@nats-io/kv', '@nats-io/jetstream', '@nats-io/obj'], 'nkeys only');
  t.not(checkSource('runtime/transport/run-state.ts', offending).filter((v) => v.rule === 'name').length, 0, 'names: subjects.ts alone');
});

test('the checker leaves honest code alone', (t) => {
  const honest = `
// Subjects like caravan.<run>.act.<r>.<s> and keys like 'slot.0.1' in comments do not count.
import type { NatsConnection } from '../transport/connect.ts';
import { runNames } from '../transport/subjects.ts';
const attributes = { 'caravan.datacenter': dc, 'caravan.run': run };
gauge('caravan.run.step', 'steps committed', '{step}');
throw new Error('CARAVAN_TLS_CERT and CARAVAN_TLS_KEY go together: set both or neither');
throw new Error(\`CARAVAN_LOG_FORMAT=\${format}: json or pretty\`);
throw new Error(\`slot \${replica}.\${stage} has no record\`);
const name = \`caravan-status-\${run}\`;
const dir = await mkdtemp(join(tmpdir(), 'caravan-run-'));
await writeFile(join(dir, 'caravan.json'), text);
await res.kv.put(names.stateKey, encodeJson({ status: 'state', summary: 'config' }));
const state = await reader.state();
if (kind === 'summary') {}
program.command('status').option('--config <file>');
const n = runNames(run);
`;
  t.deepEqual(checkSource('runtime/cli/example.ts', honest).map(formatViolation), []);
});
