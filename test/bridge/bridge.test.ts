// The Bridge over real NATS with real host processes: after every outer step
// each stage holds the same bits in every replica; stages sync at the same
// time; runs end with the weights of DiLoCo in one process (train-local-bridge.ts),
// MX int8 and top-k alike; with one replica and plain averaging the run is the run without a
// Bridge, bit for bit; a replica's host killed mid-sync: the sync completes
// with the quorum, nothing hangs, the replacement takes up the stored result.
// A replica that joins and leaves mid-run, and one retired because a host was
// lost with no standby: the runs end with the weights of that membership
// history replayed in one process.
// Bridge objects overwritten in the Object Store by a peer with a host's valid
// credentials (a server with minted users): a contribution after it was
// reported is refused by the Bridge (every replica waited for: the sync
// fails, naming it); θ after the record names it is refused by the host that
// loads it (the stage fails, naming it). No run ends with the attacker's weights.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { hashStageStates } from '../../runtime/coordinator/run-summary.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { readBridgeRecord } from '../../runtime/transport/bridge-store.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { openExistingRun, type RunResources } from '../../runtime/transport/run-resources.ts';
import { readSlot } from '../../runtime/transport/slots.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocalBridge } from '../../runtime/train/train-local-bridge.ts';
import { splitLayers } from '../../native/index.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

// One run at a time: these runs start many host processes, and on a 2-core
// machine several at once (beside other test files) leave hosts so slow that
// short heartbeat timeouts, here and in the chaos test, see them as lost.
const shape = { microbatches: 2, seqLen: 32, batchSize: 2 };

/**
 * When the first contribution of stage `stage` to outer step `outer` is reported, by either replica,
 * SIGKILLs the host of the other replica's same stage. Either may be first: under load one replica
 * runs seconds ahead of the other, and a trigger waiting for a fixed one could fire after the sync.
 */
async function killWhenContributed(url: string, run: string, stage: number, outer: number, killed: (host: string, firstContributor: number) => void): Promise<void> {
  const nc = await connect({ servers: url });
  const res = await openExistingRun(nc, run, url);
  let done = false;
  const subs = [0, 1].map((replica) => nc.subscribe(res.names.report(replica, stage), {
    callback: (_e, m) => {
      const r = m.json() as { type: string; outer?: number };
      if (done || r.type !== 'contribution' || r.outer !== outer) return;
      done = true;
      void readSlot(res.kv, 1 - replica, stage).then((slot) => {
        process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
        killed(slot!.record.host, replica);
        for (const sub of subs) sub.unsubscribe();
        void nc.close();
      });
    },
  }));
}

test.serial('every outer step leaves each stage with the same bits in every replica, and the stages sync at the same time', async (t) => {
  const S = 3, R = 2, H = 2, steps = 4;
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...shape, steps, stages: S, replicas: R, checkpointEvery: 2, bridge: { syncEvery: H } as never } } });
  const afterFirstSync: string[] = [];
  const summary = await trainDistributed({
    config, run: 'bridged', log: createLogger('test', 'silent'),
    onFinished: async ({ url, run }) => {
      // The checkpoints after step 1 were taken right after outer step 1.
      const nc = await connect({ servers: url });
      const res = await openExistingRun(nc, run, url);
      for (let r = 0; r < R; r++) {
        const blobs = [];
        for (const [begin, end] of splitLayers(config.model.nLayers, S)) blobs.push((await res.objects.getBlob(res.names.checkpoint(r, begin, end, 1, 1)))!);
        afterFirstSync.push(hashStageStates(blobs));
      }
      await nc.close();
      const status = JSON.parse((await caravan(['status', '--nats', url, '--run', run, '--json'])).stdout);
      t.deepEqual(status.bridge.map((b: { stage: number; outer: number }) => [b.stage, b.outer]), [[0, 2], [1, 2], [2, 2]]);
    },
  });
  t.is(summary.outer_steps, steps / H);
  t.is(afterFirstSync[0], afterFirstSync[1], 'outer step 1: replicas hold the same parameters');
  t.is(summary.params_sha256_by_replica[0], summary.params_sha256_by_replica[1], 'after the final sync too');
  t.notDeepEqual(summary.losses_by_replica[0], summary.losses_by_replica[1], 'each replica trains on its own shard');
  const syncs = summary.bridge_syncs!;
  t.is(syncs.length, S * (steps / H));
  for (const s of syncs) {
    t.deepEqual(s.replicas, [0, 1]);
    t.true(s.bytes_wire < s.bytes_raw / 3, `MX int8 + LZ4: ${s.bytes_wire} of ${s.bytes_raw} bytes`);
  }
  for (let outer = 1; outer <= steps / H; outer++) {
    const spans = syncs.filter((s) => s.outer === outer);
    const lastStart = Math.max(...spans.map((s) => s.first_ms)), firstEnd = Math.min(...spans.map((s) => s.finished_ms));
    t.true(lastStart < firstEnd, `outer step ${outer}: every stage's sync was under way at once (${JSON.stringify(spans.map((s) => [s.first_ms, s.finished_ms]))})`);
  }
  // DiLoCo in one process, combining what the run's records say each outer step combined: the same bits.
  const reference = await trainLocalBridge({ ...config, combined: (stage, outer) => syncs.find((s) => s.stage === stage && s.outer === outer)!.replicas });
  t.deepEqual(summary.losses_by_replica, reference.losses, 'every replica\'s losses, step by step');
  t.deepEqual(summary.params_sha256_by_replica, reference.paramsSha256ByReplica, 'the in-process reference\'s weights');
});

test.serial('a replica joins a running run when its hosts arrive and leaves when told: the Bridge counts it from the outer step after it joined to the one it left at, and the run ends with the weights of that history replayed in one process', async (t) => {
  const H = 2, steps = 16;
  const overrides = { training: { ...shape, steps, stages: 2, replicas: 2, checkpointEvery: 2, bridge: { syncEvery: H, startReplicas: 1, timeoutMs: 3000 } as never } };
  const config = await loadRunConfig({ preset: 'tiny', overrides });
  t.is(config.training.bridge!.quorum, 1, 'the quorum defaults to the replicas that start');
  let where: { url: string; run: string } | undefined;
  let addHosts: ((n: number) => void) | undefined;
  let added = false, asked = false;
  let leaving: Promise<{ stdout: string }> | undefined;
  let status = '';
  const summary = await trainDistributed({
    config, run: 'joining', log: createLogger('test', 'silent'),
    onReady: (info) => { where = info; },
    onStarted: (control) => { addHosts = control.addHosts; },
    onProgress: (p) => {
      // Two hosts more once replica 0 is past its second outer step: they form replica 1.
      if (!added && p.replica === 0 && p.step >= 2 * H) { added = true; addHosts!(2); }
      // Replica 1, two outer steps after it began, is told to leave (`caravan leave`, as an operator would).
      if (!asked && p.replica === 1 && p.step >= 8) { asked = true; leaving = caravan(['leave', '--nats', where!.url, '--run', where!.run, '--replica', '1', '--json']); }
    },
    onFinished: async ({ url, run }) => { status = (await caravan(['status', '--nats', url, '--run', run])).stdout; },
  });
  const answer = JSON.parse((await leaving!).stdout) as { ok: boolean; outer: number; last_step: number };
  const [join] = summary.replicas_joined ?? [];
  const [left] = summary.replicas_left ?? [];
  t.like(join, { replica: 1 });
  t.true(join.outer >= 2 && join.step === join.outer * H, `joined after outer step ${join.outer}, at step ${join.step}`);
  t.like(left, { replica: 1, outer: answer.outer, step: answer.last_step }, 'the run leaves it where the coordinator answered');
  t.true(answer.ok && left.step === left.outer * H - 1 && left.step + 1 < steps && left.outer > join.outer, JSON.stringify(answer));
  t.regex(status, new RegExp(`replicas joined mid-run: replica 1 after outer step ${join.outer} \\(training from step ${join.step}, `), 'caravan status says when it joined');
  t.regex(status, new RegExp(`replicas that left: replica 1 after outer step ${left.outer} \\(its last step ${left.step}, `), 'and when it left');
  t.deepEqual(summary.losses_by_replica[1].slice(0, join.step), Array(join.step).fill(null), 'no loss before it joined');
  t.is(summary.losses_by_replica[1].length, left.step + 1, 'none after it left');
  t.true(summary.losses_by_replica[1].slice(join.step).every((l) => typeof l === 'number'), 'a loss at every step between');
  const syncs = summary.bridge_syncs!;
  for (const s of syncs) {
    const member = s.outer > join.outer && s.outer <= left.outer;
    t.true(s.replicas.includes(0) && (member || !s.replicas.includes(1)), `outer step ${s.outer} of stage ${s.stage}: ${s.replicas.join(', ')}`);
  }
  t.true(syncs.some((s) => s.replicas.includes(1)), 'the replica that joined was combined');
  t.is(summary.outer_steps, steps / H, 'replica 0 went on to the end');
  const reference = await trainLocalBridge({ ...config, joined: [join], left: [left], combined: (stage, o) => syncs.find((s) => s.stage === stage && s.outer === o)!.replicas });
  t.deepEqual(summary.losses_by_replica, reference.losses, 'every replica\'s losses, step by step');
  t.deepEqual(summary.params_sha256_by_replica, reference.paramsSha256ByReplica, 'the weights of the history replayed in one process: replica 1\'s as it left');
});

test.serial('a replica whose host is lost with no standby is retired once its slot stays vacant: the other trains to the end without waiting on it, with the weights of that history replayed in one process', async (t) => {
  // Every replica waited for (the quorum is both): without the retirement the run would stall at the next sync.
  const H = 2, steps = 12;
  const overrides = { training: { ...shape, steps, stages: 2, replicas: 2, checkpointEvery: 2, bridge: { syncEvery: H, retireVacantMs: 1000, timeoutMs: 600_000 } as never } };
  const config = await loadRunConfig({ preset: 'tiny', overrides });
  t.is(config.training.bridge!.quorum, 2);
  let where: { url: string; run: string } | undefined;
  let killed: Promise<string> | undefined;
  let status = '';
  const summary = await trainDistributed({
    config, run: 'stranded', log: createLogger('test', 'silent'), heartbeatTimeoutMs: 4000, hostsMayBeKilled: true, childLogLevel: 'warn',
    onReady: (info) => { where = info; },
    // Replica 1's stage 1 dies once replica 1 is past step 4; no standby is there to take its slot.
    onProgress: (p) => {
      if (killed || p.replica !== 1 || p.step < 4) return;
      killed = (async () => {
        const nc = await connect({ servers: where!.url });
        const res = await openExistingRun(nc, where!.run, where!.url);
        const slot = await readSlot(res.kv, 1, 1);
        process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
        await nc.close();
        return slot!.record.host;
      })();
    },
    onFinished: async ({ url, run }) => { status = (await caravan(['status', '--nats', url, '--run', run])).stdout; },
  });
  t.regex(await killed!, /-\d+$/, 'a host was killed');
  const [left] = summary.replicas_left ?? [];
  t.like(left, { replica: 1, vacant: { stage: 1 } });
  t.is(summary.losses_by_replica[1].length, left.step + 1, 'its last step is the last it committed');
  t.true(left.step >= 4 && left.outer >= 2 && left.outer <= Math.floor((left.step + 1) / H), JSON.stringify(left));
  t.is(summary.params_sha256_by_replica[1], null, 'no final weights for the retired replica');
  t.is(summary.losses_by_replica[0].length, steps, 'replica 0 trained to the end');
  t.is(summary.outer_steps, steps / H);
  const syncs = summary.bridge_syncs!;
  for (const s of syncs.filter((x) => x.outer > left.outer)) t.deepEqual(s.replicas, [0], `outer step ${s.outer} of stage ${s.stage} went ahead without replica 1`);
  t.true(syncs.some((s) => s.replicas.includes(1)), 'replica 1 was combined before it was retired');
  t.regex(status, new RegExp(`replicas that left: replica 1 after outer step ${left.outer} \\(its last step ${left.step}, retired: its stage 1 slot stayed vacant, `));
  const reference = await trainLocalBridge({ ...config, left: [left], combined: (stage, o) => syncs.find((s) => s.stage === stage && s.outer === o)!.replicas });
  t.deepEqual(summary.losses_by_replica, reference.losses, 'every replica\'s losses, step by step');
  t.is(summary.params_sha256_by_replica[0], reference.paramsSha256ByReplica[0], 'replica 0\'s weights are those of the history replayed in one process');
});

test.serial('with one replica and plain averaging of fp32 parameters, the Bridge changes nothing: the same bits as without it', async (t) => {
  const common = ['train', '--json', '--no-progress', '--stages', '2', '--steps', '4', '--seq', '32', '--batch', '2', '--microbatches', '2'];
  const [bridged, plain] = await Promise.all([caravan([...common, '--sync-every', '2', '--outer', 'average', '--bridge-payload', 'fp32']), caravan(common)]);
  const [a, b] = [summaryOf(bridged), summaryOf(plain)];
  t.is(a.outer_steps, 2);
  t.deepEqual(a.losses, b.losses);
  t.is(a.params_sha256, b.params_sha256);
});

test.serial('a replica\'s host killed mid-sync: the sync completes with the quorum, nothing hangs, the replacement takes up the stored result', async (t) => {
  const config = await loadRunConfig({
    preset: 'tiny',
    overrides: { training: { ...shape, steps: 4, stages: 2, replicas: 2, checkpointEvery: 0, bridge: { syncEvery: 2, quorum: 1, timeoutMs: 1500 } as never } },
  });
  let killed = '', survivor = -1;
  const summary = await trainDistributed({
    config, run: 'sync-kill', log: createLogger('test', 'silent'), standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'warn',
    // When one replica's stage 0 has contributed to outer step 1, the other replica's stage 0 dies.
    onReady: ({ url, run }) => killWhenContributed(url, run, 0, 1, (host, first) => { killed = host; survivor = first; }),
  });
  t.regex(killed, /-\d+$/, 'a host was killed');
  t.is(summary.outer_steps, 2);
  t.is(summary.params_sha256_by_replica[0], summary.params_sha256_by_replica[1], 'the replacement continued from the stored sync');
  t.true(summary.recoveries.hosts_lost >= 1 && summary.recoveries.slots_reassigned >= 1, JSON.stringify(summary.recoveries));
  const first = summary.bridge_syncs!.find((s) => s.stage === 0 && s.outer === 1)!;
  t.true(first.replicas.includes(survivor), `outer step 1 of stage 0 went ahead with ${first.replicas.join(', ')}, without replica ${survivor}, which contributed first`);
});

test.serial('top-k pseudo-gradients with error feedback: a host killed after a sync restores its residual, and the run equals the fault-free one bit for bit', async (t) => {
  // Every replica is waited for (quorum = all), so the killed replica's replacement contributes
  // to the interrupted sync: from its checkpoint and its stored residual, what the first holder would have.
  const overrides = { training: { ...shape, steps: 6, stages: 2, replicas: 2, checkpointEvery: 2, bridge: { syncEvery: 2, payload: 'topk', topkFraction: 0.05 } as never } };
  const config = await loadRunConfig({ preset: 'tiny', overrides });
  let killed = '';
  // One run after the other: two at once, beside the other test files, starve hosts of CPU.
  const clean = await trainDistributed({ config, run: 'topk-clean', log: createLogger('test', 'silent') });
  const faulty = await trainDistributed({
    config, run: 'topk-kill', log: createLogger('test', 'silent'), standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'warn',
    onReady: ({ url, run }) => killWhenContributed(url, run, 1, 2, (host) => { killed = host; }),
  });
  t.regex(killed, /-\d+$/, 'a host was killed');
  t.true(faulty.recoveries.slots_reassigned >= 1);
  t.is(faulty.outer_steps, 3);
  t.deepEqual(faulty.params_sha256_by_replica, clean.params_sha256_by_replica);
  t.is(faulty.params_sha256_by_replica[0], faulty.params_sha256_by_replica[1]);
  for (const s of clean.bridge_syncs!) t.true(s.bytes_wire < s.bytes_raw / 5, `top 5%: ${s.bytes_wire} of ${s.bytes_raw} bytes`);
  // Every replica waited for: DiLoCo in one process, residuals and all, has the same bits.
  t.deepEqual(clean.params_sha256_by_replica, (await trainLocalBridge(config)).paramsSha256ByReplica, 'the in-process reference\'s weights');
});

// Bridge objects are authenticated: an attacker holding a host's valid credentials (a host of the run,
// holding no slot) overwrites objects in the run's Object Store, and is refused by name.
const TS = 2, TR = 2;
const tamperShape = { microbatches: 2, seqLen: 32, batchSize: 2, steps: 4, stages: TS, replicas: TR, checkpointEvery: 0 };

/** A server whose users are the run's minted ones: a coordinator, R·S hosts, a standby, and host-(R·S+1), the attacker. */
async function securedRun(t: ExecutionContext, run: string) {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-creds-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { authConfig } = await mintCredentials({ dir, run, hosts: TR * TS + 2, observers: 0, shape: { stages: TS, replicas: TR } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const cred = (name: string) => join(dir, run, `${name}.nk`);
  const hosts = Array.from({ length: TR * TS + 1 }, (_, i) => cred(`host-${i}`));
  const open = async (name: string, user: string): Promise<{ nc: NatsConnection; res: RunResources }> => {
    const nc = await connectToRun(server.url, name, run, cred(user));
    t.teardown(() => nc.close());
    return { nc, res: await openExistingRun(nc, run, server.url) };
  };
  return { url: server.url, credentials: { coordinator: cred('coordinator'), hosts }, attacker: () => open('attacker', `host-${TR * TS + 1}`), watcher: () => open('watcher', 'coordinator') };
}

/** The object's bytes with one flipped: what an attacker would put there, well-formed or not (the digest is checked first). */
async function overwrite(res: RunResources, name: string): Promise<void> {
  const blob = (await res.objects.getBlob(name))!;
  const forged = blob.slice();
  forged[forged.length - 1] ^= 0x01;
  await res.objects.putBlob({ name }, forged);
}

/** The first time `replica`'s stage 0 sends a report that `matches` (seen with the coordinator's credentials), runs `then`. */
function whenReported(nc: NatsConnection, res: RunResources, replica: number, matches: (r: { type: string; outer?: number; step?: number }) => boolean, then: () => Promise<void>): void {
  let seen = false;
  nc.subscribe(res.names.report(replica, 0), {
    callback: (_e, m) => {
      if (seen || !matches(m.json())) return;
      seen = true;
      void then();
    },
  });
}
const contributedToOuter1 = (r: { type: string; outer?: number }) => r.type === 'contribution' && r.outer === 1;

async function killHostOf(res: RunResources, replica: number, stage: number): Promise<void> {
  const slot = await readSlot(res.kv, replica, stage);
  process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
}

test.serial('a contribution overwritten after it is reported is refused by the Bridge: with every replica waited for, the sync fails naming it', async (t) => {
  const run = 'tamper-contribution';
  const net = await securedRun(t, run);
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...tamperShape, bridge: { syncEvery: 2 } as never } } });
  let overwritten = '';
  const failure = await t.throwsAsync(trainDistributed({
    config, nats: net.url, run, log: createLogger('test', 'silent'), credentials: net.credentials,
    standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'silent',
    onReady: async () => {
      const [watcher, attacker] = [await net.watcher(), await net.attacker()];
      // Replica 1's stage 0 dies after its first step, before it can contribute, so the Bridge (waiting for every
      // replica) cannot combine before the attacker is done: its replacement replays from the start, seconds later.
      whenReported(watcher.nc, watcher.res, 1, (r) => r.type === 'stepped' && r.step === 0, () => killHostOf(watcher.res, 1, 0));
      whenReported(watcher.nc, watcher.res, 0, contributedToOuter1, async () => {
        const name = attacker.res.names.bridgeContribution(0, 1, 0);
        await overwrite(attacker.res, name);
        overwritten = name;
      });
    },
  }));
  t.is(overwritten, 'bridge/stage-0/outer-1/replica-0', `the attacker overwrote the reported contribution (the run failed with: ${failure?.message})`);
  t.regex(failure!.message, /bridge of stage 0: contribution bridge\/stage-0\/outer-1\/replica-0 of replica 0 is not the one it reported \(sha256 [0-9a-f]{16}…, reported [0-9a-f]{16}…\): it was overwritten in the object store; without it 1 of the quorum of 2 remain/);
});

test.serial('θ overwritten after the Bridge\'s record names it is refused by the host that loads it: the stage fails, naming the object', async (t) => {
  const run = 'tamper-theta';
  const net = await securedRun(t, run);
  // A quorum of 1 after 1.5 s: outer step 1 is stored long before replica 1's replacement (6 s heartbeats) replays to it and loads it.
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...tamperShape, bridge: { syncEvery: 2, quorum: 1, timeoutMs: 1500 } as never } } });
  let overwritten = '';
  const failure = await t.throwsAsync(trainDistributed({
    config, nats: net.url, run, log: createLogger('test', 'silent'), credentials: net.credentials,
    standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'silent',
    onReady: async () => {
      const [watcher, attacker] = [await net.watcher(), await net.attacker()];
      whenReported(watcher.nc, watcher.res, 0, contributedToOuter1, async () => {
        await killHostOf(watcher.res, 1, 0);
        // After the record is written: the attacker reads it (hosts may read KV) and overwrites the θ it names.
        const key = attacker.res.names.bridgeKey(0, 1);
        let record;
        while (!(record = await readBridgeRecord(attacker.res.kv, key))) await new Promise((r) => setTimeout(r, 5));
        await overwrite(attacker.res, record.theta);
        overwritten = record.theta;
      });
    },
  }));
  t.is(overwritten, 'bridge/stage-0/outer-1/theta', `the attacker overwrote θ (the run failed with: ${failure?.message})`);
  t.regex(failure!.message, /replica \d stage 0: bridge object bridge\/stage-0\/outer-1\/theta is not the result of outer step 1 \(sha256 [0-9a-f]{16}…, recorded [0-9a-f]{16}…\): it was overwritten in the object store/);
});
