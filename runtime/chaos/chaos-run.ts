// `caravan chaos`: a training run (an embedded 3-node NATS cluster by
// default) in which real processes are killed with SIGKILL at moments drawn
// from a seed — stage hosts at chosen points of their work, the coordinator,
// one NATS server — and replaced, followed by a comparison with a fault-free
// run of the same config. It counts from the control log how often each
// (step, microbatch) went into each stage's update, measures how long the
// pipeline stood still after each kill, and reports whether the final
// parameters are bit for bit the reference's.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { RecoveryCounts, RunSummary } from '../../schemas/run-records.ts';
import type { FaultReached, FaultRequest } from '../../schemas/control-messages.ts';
import type { Logger } from '../log.ts';
import { connectNats, type NatsConnection } from '../transport/connect.ts';
import { startNatsCluster, type NatsClusterHandle } from '../nats/nats-cluster.ts';
import { startNatsServer, type NatsServerHandle } from '../nats/nats-server.ts';
import { isRunning, spawnCaravan, type CaravanChild } from '../train/caravan-child.ts';
import { newRunId, trainDistributed } from '../train/train-distributed.ts';
import { trainLocal } from '../train/train-local.ts';
import { openRunResources, type RunResources } from '../transport/run-resources.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import { FaultInjection } from '../transport/fault-injection.ts';
import { followRunEvents } from '../transport/run-events.ts';
import { RunStateReader } from '../transport/run-state-reader.ts';
import { storedStageReports } from '../transport/stored-reports.ts';
import { planKills, type KillKind, type PlannedKill } from './kill-plan.ts';

export interface ChaosOptions {
  readonly config: RunConfig;
  readonly kills: number;
  readonly seed: number;
  readonly natsServers: 1 | 3;
  readonly targets?: readonly KillKind[];
  readonly standbys: number;
  readonly heartbeatMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly log: Logger;
  readonly childLogLevel?: string;
  readonly onEvent?: (line: string) => void;
}

export interface KillRecord {
  readonly target: string;          // 'stage' | 'coordinator' | 'nats'
  readonly detail: string;          // where: slot and point, or server name
  readonly afterStep: number;       // steps of replica 0 committed when it struck
  readonly recovery_s: number;      // from the kill to the next committed step
}

export interface ChaosReport {
  readonly kills: number;
  readonly kills_by_target: Record<string, number>;
  readonly lost_microbatches: number;
  readonly duplicated_microbatches: number;
  readonly replay_mismatches: number;   // replayed steps whose Σg² differed from the first time
  readonly params_match_reference: boolean;
  readonly recovery_s: { median: number; max: number };
  readonly params_sha256: string;
  readonly reference_params_sha256: string;
  readonly hosts_replaced_and_refused: number;
  /** The recovery events the coordinator counted (its summary): they must account for the kills. */
  readonly recoveries: RecoveryCounts;
  readonly wall_seconds: number;
  readonly kill_log: KillRecord[];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const t = o.config.training;
  const say = (line: string) => o.onEvent?.(line);
  const plan = planKills({ kills: o.kills, seed: o.seed, steps: t.steps, stages: t.stages, replicas: t.replicas, checkpointEvery: t.checkpointEvery, natsServers: o.natsServers, targets: o.targets });

  say('reference: the same config without faults');
  const reference = await referenceRun(o);

  const began = performance.now();
  const run = newRunId();
  const dir = await mkdtemp(join(tmpdir(), 'caravan-chaos-'));
  let cluster: NatsClusterHandle | undefined;
  let single: NatsServerHandle | undefined;
  const children: CaravanChild[] = [];
  let nc: NatsConnection | undefined;
  try {
    if (o.natsServers === 3) cluster = await startNatsCluster({ log: (l) => o.log.info(l) });
    else single = await startNatsServer();
    const url = cluster?.url ?? single!.url;
    nc = await connectNats(url, `caravan-chaos-${run}`);
    const res = await openRunResources(nc, run, { limits: edgeLimits(o.config) });
    const runState = new RunStateReader(res);
    const faults = new FaultInjection(nc, res.names);
    const configFile = join(dir, 'run.json');
    await writeFile(configFile, JSON.stringify(o.config));

    let failure: Error | undefined;
    let hostCount = 0;
    let refused = 0;
    const fail = (err: Error) => { failure ??= err; };
    const expectedExit = new Set<CaravanChild>();
    const watch = (c: CaravanChild) => {
      children.push(c);
      void c.exited.then(({ code, signal }) => {
        if (expectedExit.has(c) || signal === 'SIGTERM') return;
        if (code === 3) { refused++; return; }  // a replaced host refused on its return: as designed
        if (code !== 0) fail(new Error(`${c.name} exited (${code ?? signal}): ${c.lastLine()}`));
      });
      return c;
    };
    const env = { CARAVAN_CHAOS: '1' };
    const echo = Boolean(o.childLogLevel && o.childLogLevel !== 'silent');
    const spawnCoordinator = () => watch(spawnCaravan('coordinator', [
      'coordinator', '--nats', url, '--run', run, '--config', configFile, '--heartbeat-timeout', String(o.heartbeatTimeoutMs),
    ], { logLevel: o.childLogLevel, echo }));
    const spawnHost = () => {
      const i = hostCount++;
      return watch(spawnCaravan(`host ${i}`, [
        'host', '--nats', url, '--run', run, '--datacenter', `local-${i}`, '--heartbeat', String(o.heartbeatMs),
      ], { env, logLevel: o.childLogLevel, echo }));
    };
    let coordinator = spawnCoordinator();
    for (let i = 0; i < t.stages * t.replicas + o.standbys; i++) spawnHost();

    // Progress: replica 0's committed steps, with the time each was seen.
    const commits: Array<{ step: number; at: number }> = [];
    let committedSteps = 0;  // replica 0's steps committed so far
    let summary: RunSummary | undefined;
    await followRunEvents(nc, res.names, {
      progress: (p) => {
        if (p.replica !== 0) return;
        commits.push({ step: p.step, at: performance.now() });
        committedSteps = Math.max(committedSteps, p.step + 1);
      },
      finished: (s) => { summary = s; },
      failed: (f) => fail(new Error(f.reason)),
    });
    const reached: FaultReached[] = [];
    faults.onReached((r) => { reached.push(r); });

    const until = async (what: string, cond: () => boolean, timeoutMs = 120_000) => {
      const deadline = performance.now() + timeoutMs;
      while (!cond()) {
        if (failure) throw failure;
        if (performance.now() > deadline) throw new Error(`chaos: timed out waiting for ${what}`);
        await sleep(20);
      }
    };
    const committed = () => committedSteps;
    const kills: KillRecord[] = [];
    const pendingRecoveries: Array<Promise<void>> = [];
    const recoveryAfter = (at: number, record: Omit<KillRecord, 'recovery_s'>) => {
      pendingRecoveries.push(until(`a step committed after killing ${record.detail}`, () => summary !== undefined || commits.some((c) => c.at > at), 180_000).then(() => {
        const next = commits.find((c) => c.at > at);
        const recovery = next ? (next.at - at) / 1000 : (performance.now() - at) / 1000;
        kills.push({ ...record, recovery_s: recovery });
        say(`recovered from ${record.detail} in ${recovery.toFixed(2)} s`);
      }, (err: Error) => say(`recovery from ${record.detail} not measured: ${err.message}`)));
    };

    for (const kill of plan) {
      await until(`step ${kill.afterStep}`, () => committed() >= kill.afterStep || summary !== undefined);
      if (summary) break;
      const target = kill.target;
      if (target.kind === 'coordinator') {
        expectedExit.add(coordinator);
        const at = performance.now();
        coordinator.process.kill('SIGKILL');
        await coordinator.exited;
        say(`killed the coordinator at step ${committed()}`);
        coordinator = spawnCoordinator();
        recoveryAfter(at, { target: 'coordinator', detail: 'the coordinator', afterStep: committed() });
      } else if (target.kind === 'nats') {
        const victim = cluster!.servers[Math.floor(kill.afterStep % cluster!.servers.length)];
        const at = performance.now();
        await victim.kill('SIGKILL');
        say(`killed NATS server ${victim.name} at step ${committed()}`);
        recoveryAfter(at, { target: 'nats', detail: `NATS server ${victim.name}`, afterStep: committed() });
        // Back after the pipeline moved on without it (a quorum of two), before anything else is killed.
        await Promise.race([until('a step without the killed server', () => summary !== undefined || commits.some((c) => c.at > at), 120_000), sleep(30_000)]);
        await victim.restart();
        say(`NATS server ${victim.name} restarted`);
      } else {
        await strikeStage(kill);
      }
    }

    async function strikeStage(kill: PlannedKill): Promise<void> {
      const target = kill.target as Extract<PlannedKill['target'], { kind: 'stage' }>;
      const slot = await runState.slot(target.replica, target.stage);
      if (!slot) throw new Error(`chaos: slot ${target.replica}.${target.stage} has no holder`);
      const holder = children.find((c) => c.process.pid === pidOf(slot.record.host));
      if (!holder || !isRunning(holder)) throw new Error(`chaos: the holder of slot ${target.replica}.${target.stage} (${slot.record.host}) is not a running child`);
      const detail = `replica ${target.replica} stage ${target.stage} (${target.point})`;
      let at: number;
      if (target.point === 'stall') {
        // Frozen past the heartbeat timeout: replaced; thawed: it must see that and leave (exit 3).
        at = performance.now();
        holder.process.kill('SIGSTOP');
        say(`stalled ${detail.replace(' (stall)', '')} (SIGSTOP) at step ${committed()}`);
        let handedOver = false;
        const deadline = performance.now() + 60_000;
        while (!handedOver && performance.now() < deadline) {
          handedOver = (await runState.slot(target.replica, target.stage))?.record.host !== slot.record.host;
          if (!handedOver) await sleep(100);
        }
        if (!handedOver) throw new Error(`chaos: slot ${target.replica}.${target.stage} was not handed over while its host was stopped`);
        holder.process.kill('SIGCONT');
        const exit = await Promise.race([holder.exited, sleep(30_000).then(() => undefined)]);
        if (!exit || exit.code !== 3) throw new Error(`chaos: the replaced host of slot ${target.replica}.${target.stage} did not refuse to go on after SIGCONT (${exit ? `exit ${exit.code ?? exit.signal}` : 'still running after 30 s'}): ${holder.lastLine()}`);
        say(`the stalled host came back and left: ${holder.lastLine()}`);
        spawnHost();
        recoveryAfter(at, { target: 'stall', detail, afterStep: committed() });
        return;
      }
      if (target.point === 'anytime') {
        await sleep(Math.floor(50 + (kill.afterStep * 37) % 200));
        at = performance.now();
      } else {
        const request: FaultRequest = { point: target.point, after: 1 };
        const reply = await faults.arm(slot.record.host, request);
        if (!reply.ok) throw new Error(`chaos: ${reply.error}`);
        const from = reached.length;
        await until(`${detail} to reach its fault point`, () => reached.slice(from).some((r) => r.pid === holder.process.pid) || summary !== undefined || !isRunning(holder), 120_000);
        if (summary) return;
        at = performance.now();
      }
      expectedExit.add(holder);
      holder.process.kill('SIGKILL');
      await holder.exited;
      say(`killed ${detail} at step ${committed()}`);
      spawnHost();  // the replacement's replacement: it joins as a standby
      recoveryAfter(at, { target: 'stage', detail, afterStep: committed() });
    }

    await until('the end of the run', () => summary !== undefined, 600_000);
    await Promise.all(pendingRecoveries);
    const counts = await countContributions(res, o.config);
    const finalSummary = summary!;
    const hashes = finalSummary.params_sha256_by_replica;
    const match = hashes.length === reference.length && hashes.every((h, i) => h === reference[i]);
    const times = kills.map((k) => k.recovery_s).sort((a, b) => a - b);
    const byTarget: Record<string, number> = {};
    for (const k of kills) byTarget[k.target] = (byTarget[k.target] ?? 0) + 1;
    return {
      kills: kills.length,
      kills_by_target: byTarget,
      lost_microbatches: counts.lost,
      duplicated_microbatches: counts.duplicated,
      replay_mismatches: counts.mismatches,
      params_match_reference: match,
      recovery_s: { median: median(times), max: times.length ? times[times.length - 1] : 0 },
      params_sha256: finalSummary.params_sha256,
      reference_params_sha256: reference[0],
      hosts_replaced_and_refused: refused,
      recoveries: finalSummary.recoveries,
      wall_seconds: (performance.now() - began) / 1000,
      kill_log: kills,
    };
  } finally {
    await nc?.close().catch(() => {});
    for (const c of children) if (isRunning(c)) c.process.kill('SIGTERM');
    const timer = setTimeout(() => { for (const c of children) if (isRunning(c)) c.process.kill('SIGKILL'); }, 5000);
    await Promise.all(children.map((c) => c.exited));
    clearTimeout(timer);
    await cluster?.stop();
    await single?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The fault-free run's parameter hashes by replica: in process for one replica (equal bit for bit to the pipeline, see test/pipeline), over NATS otherwise. */
async function referenceRun(o: ChaosOptions): Promise<string[]> {
  if (o.config.training.replicas === 1) return [(await trainLocal({ ...o.config, valEvery: 0, valBatches: 1 })).paramsSha256];
  const summary = await trainDistributed({ config: o.config, log: o.log });
  return summary.params_sha256_by_replica;
}

function pidOf(host: string): number {
  return Number(host.split('-').pop());
}

function median(xs: readonly number[]): number {
  if (!xs.length) return 0;
  const m = Math.floor(xs.length / 2);
  return xs.length % 2 ? xs[m] : (xs[m - 1] + xs[m]) / 2;
}

/**
 * From the control log: every update a stage applied (first run and every
 * replay) must hold each microbatch of its step exactly once, and every
 * (replica, stage, step) must have been applied. A replayed step must also
 * report the same Σg² as the first time.
 */
export async function countContributions(res: RunResources, config: RunConfig): Promise<{ lost: number; duplicated: number; mismatches: number }> {
  const t = config.training;
  const stepped = new Map<string, number[][]>();
  const done = new Map<string, string>();
  let mismatches = 0;
  for await (const r of storedStageReports(res)) {
    if (r.type === 'stepped') {
      const k = `${r.replica}.${r.stage}.${r.step}`;
      stepped.set(k, [...(stepped.get(k) ?? []), r.contributions]);
    } else if (r.type === 'done') {
      const k = `${r.replica}.${r.stage}.${r.step}`;
      const sums = JSON.stringify(r.sumSquares);
      if (done.has(k) && done.get(k) !== sums) mismatches++;
      else done.set(k, sums);
    }
  }
  let lost = 0, duplicated = 0;
  for (let r = 0; r < t.replicas; r++) {
    for (let s = 0; s < t.stages; s++) {
      for (let step = 0; step < t.steps; step++) {
        const updates = stepped.get(`${r}.${s}.${step}`);
        if (!updates) { lost += t.microbatches; continue; }
        for (const mbs of updates) {
          for (let mb = 0; mb < t.microbatches; mb++) {
            const n = mbs.filter((x) => x === mb).length;
            if (n === 0) lost++;
            if (n > 1) duplicated += n - 1;
          }
          duplicated += mbs.filter((x) => !(x >= 0 && x < t.microbatches)).length;
        }
      }
    }
  }
  return { lost, duplicated, mismatches };
}
