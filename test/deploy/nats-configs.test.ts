// The deployment files as an operator uses them: every nats-server config in
// deploy/nats passes the server's own config check (secure.conf in
// secure-config.test.ts, with its credentials and certificates); the single-node config
// really enforces 8 MiB frames and fsync on write; the 3-node cluster really
// keeps accepting and serving a replicas-3 stream and KV bucket after one
// server is killed (the promise docs/operations.md makes). Real servers on
// free ports and temporary store directories, started from copies of the
// shipped configs with only ports, addresses and store_dir rewritten.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { freeLoopbackPorts, metaGroupView } from '../../runtime/nats/nats-cluster.ts';
import { eventually, healthy, kill, natsServer, start } from '../support/nats-process.ts';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../..', import.meta.url));
const natsDir = join(root, 'deploy/nats');
const MiB = 1024 * 1024;

function confFiles(dir: string): string[] {
  return readdirSync(dir)
    .flatMap((name) => {
      const path = join(dir, name);
      return statSync(path).isDirectory() ? confFiles(path) : name.endsWith('.conf') ? [path] : [];
    })
    .sort();
}

// The shipped configs name ports 4222-4224 (clients), 6222-6224 (routes) and
// 8222-8224 (monitoring), bind 0.0.0.0 and store under /var/lib/caravan/nats.
// A test copy gets free ports (the same mapping across the cluster's files,
// so routes still point at the right nodes), loopback and a temp store.
const shippedPorts = [4222, 4223, 4224, 6222, 6223, 6224, 8222, 8223, 8224, ...[4, 6, 7, 8].flatMap((k) => [1, 2, 3].map((i) => k * 1000 + 230 + i))];
async function portMap(): Promise<Map<number, number>> {
  const free = await freeLoopbackPorts(shippedPorts.length);
  return new Map(shippedPorts.map((port, i) => [port, free[i]]));
}
function rewrite(text: string, ports: Map<number, number>, storeDir: string): string {
  const out = text
    .replace(/\b(4222|4223|4224|6222|6223|6224|8222|8223|8224|[4678]23[123])\b/g, (p) => String(ports.get(Number(p))))
    .replaceAll('0.0.0.0', '127.0.0.1')
    .replaceAll('/var/lib/caravan/nats', storeDir);
  if (/\b[468]22[234]\b|\b[4678]23[123]\b|\/var\/lib\/caravan/.test(out)) throw new Error('a shipped port or store path survived the rewrite');
  return out;
}

const confs = confFiles(natsDir);

test('deploy/nats holds the single-node config and three cluster nodes', (t) => {
  const names = confs.map((f) => relative(natsDir, f));
  for (const expected of ['single.conf', 'secure.conf', 'cluster/node-1.conf', 'cluster/node-2.conf', 'cluster/node-3.conf', 'supercluster/dc-1.conf', 'supercluster/dc-2.conf', 'supercluster/dc-3.conf']) t.true(names.includes(expected), expected);
});

// secure.conf includes the auth.conf of `caravan creds` and names certificates: test/deploy/secure-config.test.ts checks it with them.
for (const conf of confs.filter((c) => !c.endsWith('secure.conf'))) {
  test(`nats-server -t accepts ${relative(root, conf)}`, async (t) => {
    const { stdout, stderr } = await run(natsServer(), ['-c', conf, '-t']);
    t.regex(stdout + stderr, /is valid/);
  });
}

test('every config sets 8 MB payloads and fsync on write', (t) => {
  for (const conf of confs) {
    const text = readFileSync(conf, 'utf8');
    t.regex(text, /^max_payload: 8MB$/m, conf);
    t.regex(text, /^\s*sync_interval: always$/m, conf);
  }
});

test('single.conf: JetStream up, fsync always, 8 MiB frames pass and larger ones are refused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-nats-single-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ports = await portMap();
  const conf = join(dir, 'single.conf');
  await writeFile(conf, rewrite(readFileSync(join(natsDir, 'single.conf'), 'utf8'), ports, join(dir, 'store')));
  const server = start(conf, 'single');
  let nc: NatsConnection | undefined;
  t.teardown(async () => {
    await nc?.close().catch(() => {});
    await kill(server);
  });
  const http = ports.get(8222)!;
  await healthy(server, http, 10_000);

  const varz = (await (await fetch(`http://127.0.0.1:${http}/varz`)).json()) as {
    max_payload: number;
    max_pending: number;
    jetstream: { config: { sync_always?: boolean; store_dir: string } };
  };
  t.is(varz.max_payload, 8 * MiB);
  t.is(varz.max_pending, 256 * MiB);
  t.true(varz.jetstream.config.sync_always, 'sync_interval: always reaches the server');
  t.true(varz.jetstream.config.store_dir.startsWith(dir));

  nc = await connect({ servers: `127.0.0.1:${ports.get(4222)}` });
  t.is(nc.info?.max_payload, 8 * MiB);
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: 'FRAMES', subjects: ['caravan.t.act.>'], storage: StorageType.File });
  const js = jetstream(nc);

  // A frame of 8 MiB less room for headers goes through as one message.
  const frame = new Uint8Array(8 * MiB - 1024);
  for (let i = 0; i < frame.length; i += 4096) frame[i] = i % 251;
  const ack = await js.publish('caravan.t.act.0.1', frame, { msgID: 'run/0/0/0/0-1/fwd', timeout: 10_000 });
  t.is(ack.seq, 1);
  const stored = await jsm.streams.getMessage('FRAMES', { seq: 1 });
  t.is(stored?.data.length, frame.length);
  t.deepEqual(stored?.data.subarray(0, 8192), frame.subarray(0, 8192));

  // One byte over the limit is refused before it leaves the client.
  const tooBig = new Uint8Array(8 * MiB + 1);
  const err = await t.throwsAsync(js.publish('caravan.t.act.0.1', tooBig, { timeout: 5_000 }));
  t.regex(err!.message, /max_payload/);
  t.is((await jsm.streams.info('FRAMES')).state.messages, 1);
});

test('3-node cluster: a replicas-3 stream and KV bucket keep taking writes and serving reads after one node is killed', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-nats-cluster-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ports = await portMap();
  const nodes = [1, 2, 3].map((n) => ({
    n,
    name: `caravan-nats-${n}`,
    client: ports.get(4221 + n)!,
    http: ports.get(8221 + n)!,
    conf: join(dir, `node-${n}.conf`),
  }));
  for (const node of nodes) {
    const shipped = readFileSync(join(natsDir, 'cluster', `node-${node.n}.conf`), 'utf8');
    await writeFile(node.conf, rewrite(shipped, ports, join(dir, 'store')));
  }
  const servers = nodes.map((node) => start(node.conf, node.name));
  const everStarted = [...servers];
  let nc: NatsConnection | undefined;
  let passed = false;
  t.teardown(async () => {
    await nc?.close().catch(() => {});
    if (!passed) {
      // The servers' own words, when something went wrong.
      t.log('meta group:', JSON.stringify(await metaGroupView(nodes.map((n) => n.http))));
      for (const s of servers) t.log(`--- ${s.name}\n${s.log().slice(-4000)}`);
    }
    await Promise.all(everStarted.map(kill));
  });
  await Promise.all(servers.map((s, i) => healthy(s, nodes[i].http, 15_000)));

  // All three must be in the JetStream meta group before a replicas-3 stream
  // can be placed. nats-server 2.10.27 now and then forms a group of two on a
  // fresh start (1 start in 12 to 45 on a loaded 2-core machine) and leaves
  // the third out; docs/operations.md says to restart the left-out server,
  // and so does this test, once.
  const wantFollowers = 2;
  let restarted = '';
  let firstLeaderAt = 0;
  const deadline = Date.now() + 20_000;
  for (;;) {
    const view = await metaGroupView(nodes.map((n) => n.http));
    if (view && view.size === 3 && view.currentFollowers.length === wantFollowers) break;
    if (Date.now() > deadline) throw new Error(`the meta group never took in all three servers: ${JSON.stringify(view)}`);
    if (view && !firstLeaderAt) firstLeaderAt = Date.now();
    if (view && !restarted && Date.now() - firstLeaderAt > 4_000 && view.size === 2) {
      const i = nodes.findIndex((n) => n.name !== view.leader && !view.currentFollowers.includes(n.name));
      restarted = nodes[i].name;
      t.log(`meta group formed without ${restarted} (${JSON.stringify(view)}): restarting it`);
      await kill(servers[i]);
      servers[i] = start(nodes[i].conf, nodes[i].name);
      everStarted.push(servers[i]);
    }
    await new Promise((r) => setTimeout(r, 200));
  }

  nc = await connect({
    servers: nodes.map((node) => `127.0.0.1:${node.client}`),
    reconnectTimeWait: 100,
    maxReconnectAttempts: -1,
  });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  // Placement also needs each peer's stats, which may lag the meta group by a moment.
  const { value: created } = await eventually(
    () => jsm.streams.add({ name: 'EDGES', subjects: ['caravan.t.>'], storage: StorageType.File, num_replicas: 3 }),
    10_000,
  );
  t.is(created.config.num_replicas, 3);
  // As caravan makes its run-state bucket (runtime/transport/run-resources.ts): no direct gets,
  // which any replica answers, a follower still catching up after the kill included.
  const kv = await eventually(() => new Kvm(nc!).create('run-state', { replicas: 3, history: 5, allow_direct: false }), 10_000);

  // A stage reads its inputs through a durable pull consumer made beforehand.
  await eventually(
    () => jsm.consumers.add('EDGES', { durable_name: 'act-0-1', filter_subject: 'caravan.t.act.0.1', ack_policy: AckPolicy.Explicit }),
    10_000,
  );
  t.is((await js.publish('caravan.t.act.0.1', new TextEncoder().encode('before'), { msgID: 'm1' })).seq, 1);
  const firstRevision = await kv.value.put('step', '41');

  // Kill the stream's leader: the harder case, as the survivors must elect a
  // new one before the next write is acknowledged.
  const leader = (await jsm.streams.info('EDGES')).cluster?.leader;
  const victim = servers.find((s) => s.name === leader);
  t.truthy(victim, `stream leader ${leader} is one of ours`);
  victim!.proc.kill('SIGKILL');
  await victim!.exited;

  const after = await eventually(
    () => js.publish('caravan.t.act.0.1', new TextEncoder().encode('after'), { msgID: 'm2', timeout: 2_000 }),
    20_000,
  );
  t.log(`killed ${leader}; next publish acknowledged after ${after.ms} ms`);
  t.is(after.value.seq, 2);
  // A re-sent message with the same id is still a duplicate on the new leader.
  t.true((await js.publish('caravan.t.act.0.1', new TextEncoder().encode('after'), { msgID: 'm2' })).duplicate);

  const info = await jsm.streams.info('EDGES');
  t.is(info.state.messages, 2);
  t.not(info.cluster?.leader, leader);
  const texts = await Promise.all([1, 2].map(async (seq) => (await jsm.streams.getMessage('EDGES', { seq }))?.string()));
  t.deepEqual(texts, ['before', 'after']);

  // The durable consumer still delivers both, once its own group has a leader.
  const seen = new Map<number, string>();
  const read = await eventually(async () => {
    const consumer = await js.consumers.get('EDGES', 'act-0-1');
    for await (const m of await consumer.fetch({ max_messages: 2, expires: 1_000 })) {
      seen.set(m.seq, m.string());
      await m.ackAck();
    }
    if (seen.size < 2) throw new Error(`consumer delivered ${seen.size} of 2`);
    return [...seen.entries()].sort((x, y) => x[0] - y[0]).map(([, v]) => v);
  }, 20_000);
  t.log(`durable consumer delivered both after ${read.ms} ms more`);
  t.deepEqual(read.value, ['before', 'after']);

  const { value: secondRevision } = await eventually(() => kv.value.put('step', '42'), 20_000);
  t.true(secondRevision > firstRevision, `revision ${secondRevision} after ${firstRevision}`);
  t.is((await kv.value.get('step'))?.string(), '42', 'the write after the kill is read back');
  t.is((await kv.value.get('step', { revision: firstRevision }))?.string(), '41', 'history survives');
  passed = true;
});

test('3-datacenter super-cluster: the gateways join, and a stream placed by datacenter tag lands on that datacenter\'s server', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-nats-supercluster-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ports = await portMap();
  const nodes = [1, 2, 3].map((n) => ({ n, name: `caravan-dc-${n}`, client: ports.get(4230 + n)!, http: ports.get(8230 + n)!, conf: join(dir, `dc-${n}.conf`) }));
  for (const node of nodes) await writeFile(node.conf, rewrite(readFileSync(join(natsDir, 'supercluster', `dc-${node.n}.conf`), 'utf8'), ports, join(dir, 'store')));
  const servers = nodes.map((node) => start(node.conf, node.name));
  let nc: NatsConnection | undefined;
  t.teardown(async () => {
    await nc?.close().catch(() => {});
    await Promise.all(servers.map(kill));
  });
  await Promise.all(servers.map((s, i) => healthy(s, nodes[i].http, 20_000)));
  nc = await connect({ servers: `127.0.0.1:${nodes[2].client}` });
  const jsm = await jetstreamManager(nc);
  for (const node of nodes) {
    const name = `IN_DC${node.n}`;
    const { value: info } = await eventually(
      () => jsm.streams.add({ name, subjects: [`caravan.t.act.0.${node.n}`], storage: StorageType.File, num_replicas: 1, placement: { cluster: `dc-${node.n}`, tags: [`dc:dc-${node.n}`] } }),
      30_000,
    );
    t.is(info.cluster?.name, `dc-${node.n}`);
    t.is(info.cluster?.leader, node.name, 'on that datacenter\'s server');
  }
  // Published in dc-3, stored in dc-1: across the gateway.
  const ack = await jetstream(nc).publish('caravan.t.act.0.1', new Uint8Array(1024));
  t.is(ack.stream, 'IN_DC1');
});

test('deploy/bin/caravan runs the CLI from outside the checkout', async (t) => {
  const { stdout } = await run(join(root, 'deploy/bin/caravan'), ['--help'], { cwd: tmpdir() });
  t.regex(stdout, /Usage: caravan/);
});

const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find(existsSync);
// Where systemd-analyze is missing the check is skipped, and its title says why.
(analyze ? test : test.skip)(`the systemd units pass systemd-analyze verify${analyze ? '' : ' (skipped: no systemd-analyze here)'}`, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-units-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // verify insists that ExecStart binaries exist: point them at this checkout.
  const units = ['caravan-host@.service', 'caravan-coordinator.service', 'caravan-nats.service'];
  for (const unit of units) {
    const text = readFileSync(join(root, 'deploy/systemd', unit), 'utf8')
      .replaceAll('/opt/caravan/deploy/bin/caravan', join(root, 'deploy/bin/caravan'))
      .replaceAll('/usr/local/bin/nats-server', natsServer());
    await writeFile(join(dir, unit), text);
  }
  const { stdout, stderr } = await run(analyze!, ['verify', ...units.map((u) => join(dir, u))], { cwd: dir });
  t.is((stdout + stderr).trim(), '');
});
