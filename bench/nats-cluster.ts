// `npm run bench -- nats-cluster`: how dependably a nats-server binary forms a
// fresh 3-node JetStream cluster on a loaded machine, and how long a client
// waits when the server leading a replicated stream is SIGKILLed — the two
// problems runs met with nats-server 2.10.27 (a meta group formed without one
// server; 7.5–12.6 s of recovery per lost server). Each start is a new cluster
// with new stores (runtime/nats/nats-cluster.ts, as `caravan chaos --nats-servers 3`
// uses), counted as clean, repaired (startNatsCluster had to restart a
// left-out server or retry a placement) or failed. Then the stream leader is
// killed: failover_ms is from the kill until a publish to the replicas-3
// stream is acknowledged and a durable pull consumer, made before the kill,
// delivers it; rejoin_ms is from restarting the server until it is healthy
// again. Then the new leader is stopped gracefully (SIGTERM, as systemd or a
// rolling upgrade stops it) and the same failover is timed. Binaries given with --also run alternately with the
// configured one, round by round (--parallel clusters at once), so both see
// the same load.
import { spawn, type ChildProcess } from 'node:child_process';
import { AckPolicy, jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { natsServerBinary } from '../runtime/nats/nats-server.ts';
import { startNatsCluster, type ClusterServer } from '../runtime/nats/nats-cluster.ts';
import { connectNats, type NatsConnection } from '../runtime/transport/connect.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const median = (xs: number[]) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : null);
const max = (xs: number[]) => (xs.length ? Math.max(...xs) : null);
const round = (x: number | null) => (x === null ? null : Math.round(x));

interface BinaryTally {
  binary: string;
  version: string;
  clean: number;
  repaired: number;
  failed: number;
  repairs: string[];
  failures: string[];
  startMs: number[];
  failoverMs: number[];
  termFailoverMs: number[];
  failoverFailures: string[];
  rejoinMs: number[];
  rejoinRepairs: number;
}

function versionOf(binary: string): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    child.once('error', () => resolve('cannot run'));
    child.once('close', () => resolve(out.match(/v?\d+\.\d+\.\d+/)?.[0] ?? out.trim()));
  });
}

// Stops the stream's leader with `signal`, then measures: a publish
// acknowledged by the stream's new leader and the pre-existing durable
// consumer delivering that message; then the stopped server's restart until
// it is healthy again.
async function stopLeader(nc: NatsConnection, servers: readonly ClusterServer[], signal: NodeJS.Signals, timeoutMs: number): Promise<[failoverMs: number, rejoinMs: number]> {
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  const js = jetstream(nc, { timeout: 1_000 });
  const consumer = await js.consumers.get('FAILOVER', 'reader');
  const leaderName = (await jsm.streams.info('FAILOVER')).cluster?.leader;
  const leader = servers.find((s) => s.name === leaderName);
  if (!leader) throw new Error(`no stream leader named (${leaderName})`);
  const msgID = `after-${signal}`;
  const stoppedAt = performance.now();
  await leader.kill(signal);
  const deadline = stoppedAt + timeoutMs;
  let last = '';
  let published = false;
  for (;;) {
    if (performance.now() > deadline) throw new Error(`no failover after ${signal} within ${timeoutMs} ms (last: ${last})`);
    try {
      if (!published) {
        await js.publish('failover.x', new Uint8Array(1024), { msgID, timeout: 1_000 });
        published = true;
      }
      const m = await consumer.next({ expires: 1_000 });
      if (m) {
        m.ack();
        if (m.headers?.get('Nats-Msg-Id') === msgID) break;
      }
    } catch (err) {
      last = (err as Error).message;
      await sleep(50);
    }
  }
  const failoverMs = performance.now() - stoppedAt;
  const restartAt = performance.now();
  await leader.restart();
  return [failoverMs, performance.now() - restartAt];
}

async function measureFailover(url: string, servers: readonly ClusterServer[], timeoutMs: number): Promise<{ kill: [number, number]; term: [number, number] }> {
  const nc = await connectNats(url, 'bench-nats-cluster');
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5_000 });
    await jsm.streams.add({ name: 'FAILOVER', subjects: ['failover.x'], storage: StorageType.File, num_replicas: 3 });
    await jsm.consumers.add('FAILOVER', { durable_name: 'reader', ack_policy: AckPolicy.Explicit });
    const js = jetstream(nc, { timeout: 1_000 });
    await js.publish('failover.x', new Uint8Array(1024));
    (await (await js.consumers.get('FAILOVER', 'reader')).next({ expires: 5_000 }))?.ack();
    const kill = await stopLeader(nc, servers, 'SIGKILL', timeoutMs);
    // A graceful stop, as a rolling upgrade or `systemctl stop` does it.
    const term = await stopLeader(nc, servers, 'SIGTERM', timeoutMs);
    return { kill, term };
  } finally {
    await nc.close().catch(() => {});
  }
}

// One fresh cluster: its start counted, then the stream leader's kill and rejoin measured.
async function startAndFailOver(tally: BinaryTally, n: number): Promise<void> {
  const repairs: string[] = [];
  const t0 = performance.now();
  let cluster;
  try {
    cluster = await startNatsCluster({ timeoutMs: 60_000, log: (line) => repairs.push(line) });
  } catch (err) {
    tally.failed++;
    tally.failures.push((err as Error).message.slice(0, 300));
    console.log(`  ${tally.version} start ${n}: FAILED ${(err as Error).message.slice(0, 200)}`);
    return;
  }
  const startMs = performance.now() - t0;
  tally.startMs.push(startMs);
  const startRepairs = repairs.length;
  if (startRepairs) { tally.repaired++; tally.repairs.push(...repairs); } else tally.clean++;
  let failover: number | undefined, rejoin: number | undefined, termFailover: number | undefined;
  try {
    const m = await measureFailover(cluster.url, cluster.servers, 60_000);
    [failover, rejoin] = m.kill;
    termFailover = m.term[0];
    tally.failoverMs.push(failover);
    tally.rejoinMs.push(rejoin, m.term[1]);
    tally.termFailoverMs.push(termFailover);
    // restart() logs only when a rejoin needed a second restart.
    tally.rejoinRepairs += repairs.length - startRepairs;
  } catch (err) {
    tally.failoverFailures.push((err as Error).message.slice(0, 300));
  } finally {
    await cluster.stop();
  }
  console.log(`  ${tally.version} start ${n}: up in ${Math.round(startMs)} ms${startRepairs ? ` after ${startRepairs} repair(s): ${repairs[0]}` : ''}; failover ${failover === undefined ? 'FAILED' : Math.round(failover)} ms after SIGKILL, ${termFailover === undefined ? '-' : Math.round(termFailover)} ms after SIGTERM; rejoin ${rejoin === undefined ? '-' : Math.round(rejoin)} ms`);
}

export async function benchNatsCluster(args: string[]): Promise<Record<string, unknown>> {
  const starts = Number(args.find((a) => a.startsWith('--starts='))?.slice(9) ?? 10);
  const load = Number(args.find((a) => a.startsWith('--load='))?.slice(7) ?? 2);
  const parallel = Number(args.find((a) => a.startsWith('--parallel='))?.slice(11) ?? 1);
  const also = args.filter((a) => a.startsWith('--also=')).map((a) => a.slice(7));
  if (!Number.isInteger(starts) || starts < 1) throw new Error(`--starts must be a positive integer, not ${starts}`);
  if (!Number.isInteger(parallel) || parallel < 1) throw new Error(`--parallel must be a positive integer, not ${parallel}`);
  if (!Number.isInteger(load) || load < 0) throw new Error(`--load must be a non-negative integer, not ${load}`);
  const binaries = [natsServerBinary(), ...also];
  const tallies: BinaryTally[] = [];
  for (const binary of binaries) {
    const version = await versionOf(binary);
    if (!/^v?\d/.test(version)) throw new Error(`cannot run nats-server ${binary} (--version said: ${version})`);
    tallies.push({ binary, version, clean: 0, repaired: 0, failed: 0, repairs: [], failures: [], startMs: [], failoverMs: [], termFailoverMs: [], failoverFailures: [], rejoinMs: [], rejoinRepairs: 0 });
  }
  console.log(`nats-cluster bench: ${starts} fresh 3-node starts per binary (${tallies.map((t) => `${t.version} ${t.binary}`).join('; ')}), ${parallel} at once, ${load} busy processes beside them`);

  // The load: processes that spin on a core each, as a test suite or a
  // package install beside the run would.
  const spinners: ChildProcess[] = [];
  for (let i = 0; i < load; i++) spinners.push(spawn(process.execPath, ['-e', 'for (;;) {}'], { stdio: 'ignore' }));
  const saved = process.env.CARAVAN_NATS_SERVER;
  try {
    for (let round = 0; round < Math.ceil(starts / parallel); round++) {
      for (const tally of tallies) {
        process.env.CARAVAN_NATS_SERVER = tally.binary;
        const inRound = Math.min(parallel, starts - round * parallel);
        await Promise.all(Array.from({ length: inRound }, (_, k) => startAndFailOver(tally, round * parallel + k + 1)));
      }
    }
  } finally {
    if (saved === undefined) delete process.env.CARAVAN_NATS_SERVER; else process.env.CARAVAN_NATS_SERVER = saved;
    for (const s of spinners) s.kill('SIGKILL');
  }
  return {
    bench: 'nats-cluster',
    starts_per_binary: starts,
    clusters_at_once: parallel,
    busy_processes: load,
    binaries: tallies.map((t) => ({
      version: t.version,
      binary: t.binary,
      starts: t.clean + t.repaired + t.failed,
      clean: t.clean,
      repaired: t.repaired,
      failed: t.failed,
      start_ms_median: round(median(t.startMs)),
      start_ms_max: round(max(t.startMs)),
      failover_ms_median: round(median(t.failoverMs)),
      failover_ms_max: round(max(t.failoverMs)),
      failover_after_sigterm_ms_median: round(median(t.termFailoverMs)),
      failover_after_sigterm_ms_max: round(max(t.termFailoverMs)),
      failover_failures: t.failoverFailures.length,
      rejoin_ms_median: round(median(t.rejoinMs)),
      rejoin_ms_max: round(max(t.rejoinMs)),
      rejoin_repairs: t.rejoinRepairs,
      repairs: t.repairs.slice(0, 5),
      failures: [...t.failures, ...t.failoverFailures].slice(0, 5),
    })),
  };
}
