// deploy/nats/secure.conf as an operator sets it up: `caravan creds` writes
// auth.conf beside it, scripts/test-certs.sh makes the certificates, and
// (with only ports, addresses and paths rewritten for this machine) the
// server passes its own config check, refuses clients that do not trust its
// CA or bring no credentials, and carries a whole run over TLS whose result
// is the loopback run's.
import test from 'ava';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { freeLoopbackPorts } from '../../runtime/nats/nats-cluster.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { healthy, kill, natsServer, start } from '../support/nats-process.ts';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));

test.serial('secure.conf: config check, TLS and nkey users enforced, a whole run over TLS gives the loopback result', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-secure-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await run('bash', [join(root, 'scripts/test-certs.sh'), join(dir, 'tls')]);
  const { authConfig } = await mintCredentials({ dir: join(dir, 'creds'), run: 'secure', hosts: 2, observers: 1, shape: { stages: 2, replicas: 1 } });
  await copyFile(authConfig, join(dir, 'auth.conf'));
  const [client, http] = await freeLoopbackPorts(2);
  const conf = join(dir, 'secure.conf');
  await writeFile(conf, readFileSync(join(root, 'deploy/nats/secure.conf'), 'utf8')
    .replace('listen: 0.0.0.0:4222', `listen: 127.0.0.1:${client}`).replace('http: 0.0.0.0:8222', `http: 127.0.0.1:${http}`)
    .replaceAll('/var/lib/caravan/nats', join(dir, 'store')).replaceAll('/etc/caravan/tls', join(dir, 'tls')));
  const { stdout, stderr } = await run(natsServer(), ['-c', conf, '-t']);
  t.regex(stdout + stderr, /is valid/);
  const server = start(conf, 'secure');
  t.teardown(() => kill(server));
  await healthy(server, http, 10_000);
  const url = `tls://127.0.0.1:${client}`;
  const creds = (name: string) => join(dir, 'creds', 'secure', `${name}.nk`);

  delete process.env.CARAVAN_TLS_CA;
  await t.throwsAsync(connectToRun(url, 'untrusting', 'secure', creds('observer-0')), { message: /certificate/i }, 'a client that does not trust the CA');
  process.env.CARAVAN_TLS_CA = join(dir, 'tls', 'ca.pem');  // the children inherit it
  await t.throwsAsync(connectToRun(url, 'anonymous', 'secure'), { message: /Authorization Violation/ }, 'TLS without credentials');
  const observer = await connectToRun(url, 'observer', 'secure', creds('observer-0'));
  t.truthy(observer.info?.tls_required, 'the server requires TLS');
  await observer.close();

  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 2, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 11 } } });
  const summary = await trainDistributed({
    config, nats: url, run: 'secure', log: createLogger('test', 'silent'),
    credentials: { coordinator: creds('coordinator'), hosts: [creds('host-0'), creds('host-1')] },
  });
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, clean.paramsSha256);
  t.is(summary.dead_letters, 0);
});
