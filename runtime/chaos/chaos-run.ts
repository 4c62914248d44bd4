// `caravan chaos`: a training run (an embedded 3-node NATS cluster by
// default) in which real processes are killed with SIGKILL at moments drawn
// from a seed — stage hosts at chosen points of their work, the coordinator,
// one NATS server — and replaced, followed by a comparison with a fault-free
// run of the same config. It counts from the control log how often each
// (step, microbatch) went into each stage's update, measures how long the
// pipeline stood still after each kill, and reports whether the final
// parameters are bit for bit the reference's. The processes it starts, and
// stopping them however the run ends, are chaos-fleet.ts's.
//
// With a cheat (`--cheat`, which needs audits) the stage hosts also play a
// dishonest holder of one slot (CARAVAN_CHAOS_CHEAT): the audits must catch
// it, so the run failing is the expected outcome, and the report says which
// slot and step the audit blamed, how long after the cheat began, and what
// the fault-free run's audits cost.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { AuditSummary, RecoveryCounts, RunState, RunSummary } from '../../schemas/run-records.ts';
import type { FaultPoint, FaultReached, FaultRequest } from '../../schemas/control-messages.ts';
import type { Logger } from '../log.ts';
import type { parseCheat } from '../host/fault-points.ts';
import { connectNats, type NatsConnection } from '../transport/connect.ts';
import { isRunning, isStopped, type CaravanChild } from '../train/caravan-child.ts';
import { newRunId, trainDistributed } from '../train/train-distributed.ts';
import { trainLocal } from '../train/train-local.ts';
import { openExistingRun, openRunResources, type RunResources } from '../transport/run-resources.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import { FaultInjection } from '../transport/fault-injection.ts';
import { followRunEvents } from '../transport/run-events.ts';
import { RunStateReader, type StreamStanding } from '../transport/run-state-reader.ts';
import { storedStageReports } from '../transport/stored-reports.ts';
import type { RunNames } from '../transport/subjects.ts';
import { ChaosFleet } from './chaos-fleet.ts';
import { planKills, type KillKind, type KillTarget, type PlannedKill } from './kill-plan.ts';

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
  /** The coordinator's control-log snapshots: entries between them (its default where undefined). */
  readonly snapshotEvery?: number;
  /** A dishonest holder for the audits (training.audit) to catch: the chaos run's stage hosts cheat so. */
  readonly cheat?: Cheat;
}

export type Cheat = ReturnType<typeof parseCheat>;

export interface KillRecord {
  readonly target: string;          // 'stage' | 'stall' | 'partition' | 'coordinator' | 'coordinator-audit' | 'nats' | 'nats-partition' | 'nats-checkpoint' | 'pause-coordinator' | 'pause-nats'
  readonly kind: KillKind;          // the planned kind: for 'stage', the point it was killed at
  readonly detail: string;          // where: slot and point, or server name
  readonly afterStep: number;       // steps of replica 0 committed when it struck
  readonly recovery_s: number;      // from the kill to the next step committed (by the struck slot's replica; replica 0's otherwise)
}

export interface ChaosReport {
  /** Parameters equal to the fault-free run's, nothing lost or doubled. */
  readonly ok: boolean;
  readonly kills: number;
  readonly kills_by_target: Record<string, number>;
  /** Faults by planned kind: a stage kill counts under its point. */
  readonly faults_by_kind: Record<string, number>;
  readonly lost_microbatches: number;
  readonly duplicated_microbatches: number;
  readonly replay_mismatches: number;   // replayed steps whose Σg² differed from the first time
  readonly params_match_reference: boolean;
  readonly recovery_s: Percentiles;
  readonly recovery_s_by_kind: Record<string, Percentiles>;
  readonly params_sha256: string;
  readonly reference_params_sha256: string;
  readonly hosts_replaced_and_refused: number;
  /** Host processes its supervisor started again (RESTART_DELAY_MS after each kill, or after a replaced host left). */
  readonly hosts_restarted: number;
  /** The recovery events the coordinator counted (its summary): they must account for the kills. */
  readonly recoveries: RecoveryCounts;
  readonly wall_seconds: number;
  readonly kill_log: KillRecord[];
  /** What each restart of the coordinator replayed of the control log (the run state's `replays`). */
  readonly control_replays: NonNullable<RunState['replays']>;
  /** With training.audit: the chaos run's audits, and the fault-free run's. */
  readonly audits?: AuditSummary;
  readonly reference_audits?: AuditSummary;
}

/** What the audits made of a cheating holder (ChaosOptions.cheat). */
export interface CheatReport {
  /** The chaos run's id: its processes carry it on their command lines. */
  readonly run: string;
  readonly cheat: Cheat;
  /** An audit found a difference. */
  readonly caught: boolean;
  /** The first difference: the slot, step and holder the audit blamed. */
  readonly detected: AuditSummary['failed'][number] | null;
  /** Detected step − the step the cheat began at. */
  readonly detection_lag_steps: number | null;
  /** Blamed on the cheating slot, at or after the step it began: a caught cheat that accused an honest slot or step is not a pass. */
  readonly blamed_cheater: boolean;
  /** Why the chaos run failed (the audit's message when caught), or null if it finished. */
  readonly run_failed: string | null;
  /** The cheating run's audits as its live state held them when it ended. */
  readonly audits: AuditSummary | null;
  readonly reference_audits: AuditSummary | null;
  /** Σ over the fault-free run's slots of busy_ms in each holder's final report: its engine time. */
  readonly reference_compute_ms: number | null;
  /** The fault-free run's replay_ms / reference_compute_ms: the auditor's CPU time per unit of the stages'. */
  readonly audit_overhead: number | null;
  /** The run ended (after the catch's rewind) with the fault-free run's weights, replica by replica. */
  readonly params_match_reference: boolean;
  readonly params_sha256: string | null;
  /** The catch's rewinds: the replica trained again from its start, the steps it had committed and recomputed, the host banned. */
  readonly rewinds: NonNullable<AuditSummary['rewinds']>;
  readonly reference_params_sha256: string;
  readonly kills: number;
  readonly kill_log: KillRecord[];
  /** What each restart of the coordinator replayed of the control log. */
  readonly control_replays: NonNullable<RunState['replays']>;
  readonly wall_seconds: number;
}

/**
 * A chaos run that could not finish, as much of it as there is to debug
 * from: what went wrong, what the driver was waiting for, the kills so far,
 * and where the run stood (its status, each slot's holder, each host).
 */
export interface ChaosFailure {
  readonly ok: false;
  readonly run: string;
  /** The NATS server (or cluster seed) it ran on, stopped since like every process it started. */
  readonly nats_url: string | null;
  /** What went wrong, in one line. */
  readonly error: string;
  /** What the driver was waiting for when it gave up, if it was waiting. */
  readonly waiting_for: string | null;
  readonly committed_steps: number;
  /** Every line the driver said, in order: kills, stalls, recoveries. */
  readonly events: string[];
  /** The kills whose recovery was measured before the failure. */
  readonly kill_log: KillRecord[];
  readonly run_status: string | null;
  readonly slots: Array<{ replica: number; stage: number; host: string; generation: number; from_step: number | null }>;
  readonly hosts: Array<{ host: string; status: string; slot: string | null }>;
  /** Each stream of the run and its consumers, as JetStream saw them at the end: which delivery a stall waits on. */
  readonly streams: StreamStanding[];
  readonly hosts_restarted: number;
  readonly hosts_replaced_and_refused: number;
  readonly wall_seconds: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
// Past nats-server's longest election timeout (9 s): leadership must move while the server is cut off.
const SERVER_PARTITION_MS = 10_000;

export async function runChaos(o: ChaosOptions): Promise<ChaosReport | CheatReport | ChaosFailure> {
  const t = o.config.training;
  const events: string[] = [];
  const say = (line: string) => { events.push(line); o.onEvent?.(line); };
  const plan = planKills({ kills: o.kills, seed: o.seed, steps: t.steps, stages: t.stages, replicas: t.replicas, checkpointEvery: t.checkpointEvery, natsServers: o.natsServers, targets: o.targets, audits: (t.audit?.rate ?? 0) > 0, bridge: t.bridge !== undefined });

  say('reference: the same config without faults');
  const reference = await referenceRun(o);

  const began = performance.now();
  const run = newRunId();
  const dir = await mkdtemp(join(tmpdir(), 'caravan-chaos-'));
  const configFile = join(dir, 'run.json');
  const watch = new TrainingWatch();
  const fleet = new ChaosFleet({
    run, configFile, snapshotEvery: o.snapshotEvery, heartbeatMs: o.heartbeatMs, heartbeatTimeoutMs: o.heartbeatTimeoutMs, log: o.log, childLogLevel: o.childLogLevel,
    cheat: o.cheat && `${o.cheat.mode}/${o.cheat.replica}/${o.cheat.stage}/${o.cheat.from}`, fail: (err) => watch.fail(err),
    // Hosts reach NATS through links the driver can cut only when the plan partitions one: a proxy costs every frame a hop.
    partitions: plan.some((k) => k.target.kind === 'stage' && k.target.point === 'partition'),
    serverPartitions: plan.some((k) => k.target.kind === 'nats-partition'),
  });
  let nc: NatsConnection | undefined;
  let runState: RunStateReader | undefined;
  let striker: Striker | undefined;
  // Stopped from outside (Ctrl-C, a test's timeout), the driver still ends its servers, coordinator and hosts.
  const onSignal = () => { void fleet.stop().finally(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const url = await fleet.startNats(o.natsServers);
    nc = await connectNats(url, `caravan-chaos-${run}`);
    const res = await openRunResources(nc, run, { limits: edgeLimits(o.config) });
    runState = new RunStateReader(res);
    striker = new Striker(fleet, watch, runState, new FaultInjection(nc, res.names), say, o.heartbeatTimeoutMs);
    await writeFile(configFile, JSON.stringify(o.config));
    fleet.spawnCoordinator();
    for (let i = 0; i < t.stages * t.replicas + o.standbys; i++) await fleet.spawnHost();
    await watch.follow(nc, res.names);
    striker.listen();
    const ended = strikeAll(plan, watch, striker);

    if (o.cheat) {
      // Caught, the cheater is banned and its replica trained again: the run should end with the honest weights. A run
      // that fails is reported as such, not thrown (the fleet still stops below).
      const failure = await ended.then(() => undefined, (err: Error) => err);
      await striker.recovered();
      return cheatReport({ run, cheat: o.cheat, failure, state: await endedState(runState), summary: watch.summary, reference, kills: striker.kills, began });
    }
    await ended;
    await striker.recovered();
    const counts = await countContributions(res, o.config);
    const replays = (await runState.state().catch(() => undefined))?.replays ?? [];
    return chaosReport({ summary: watch.summary!, reference, kills: striker.kills, counts, replays, refused: fleet.refused, restarted: fleet.restarted, began });
  } catch (err) {
    // A failure still ends in a report of where the run stood (read before the fleet stops); one while setting up
    // (starting the servers, creating the run's streams) in a report with nothing yet to read.
    if (!(err instanceof Error)) throw err;
    return await failureReport(err, { run, watch, runState, fleet, kills: striker?.kills ?? [], events, began });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await nc?.close().catch(() => {});
    await fleet.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Strikes every planned kill as its step comes (none after the run ended), then waits for the end of the run. */
async function strikeAll(plan: readonly PlannedKill[], watch: TrainingWatch, striker: Striker): Promise<void> {
  for (const kill of plan) {
    await watch.until(`step ${kill.afterStep}`, () => watch.committedSteps >= kill.afterStep || watch.summary !== undefined);
    if (watch.summary) break;
    await striker.strike(kill);
  }
  await watch.until('the end of the run', () => watch.summary !== undefined, 600_000);
}

/**
 * The run's state once the coordinator recorded how the run ended: it saves
 * the state (audits included) before it says the run failed, but a child's
 * exit may have been heard first. Whatever it holds after 15 s otherwise.
 */
async function endedState(runState: RunStateReader): Promise<RunState | undefined> {
  const deadline = performance.now() + 15_000;
  let state: RunState | undefined;
  do {
    state = await runState.state().catch(() => state);
    if (state?.status === 'failed' || state?.status === 'finished') break;
    await sleep(100);
  } while (performance.now() < deadline);
  return state;
}

async function failureReport(err: Error, o: { run: string; watch: TrainingWatch; runState: RunStateReader | undefined; fleet: ChaosFleet; kills: KillRecord[]; events: string[]; began: number }): Promise<ChaosFailure> {
  // The servers may be the reason: what cannot be read is left empty rather than hiding the error.
  const [state, slots, hosts, streams] = await Promise.all([
    o.runState?.state().catch(() => undefined), o.runState?.slots().catch(() => []) ?? [], o.runState?.hosts().catch(() => []) ?? [],
    o.runState?.streams().catch(() => []) ?? [],
  ]);
  return {
    ok: false, run: o.run, nats_url: o.fleet.url ?? null, error: err.message, waiting_for: o.watch.waitingFor ?? null, committed_steps: o.watch.committedSteps,
    events: o.events, kill_log: o.kills, run_status: state?.status ?? null,
    slots: slots.map((r) => ({ replica: r.replica, stage: r.stage, host: r.host, generation: r.generation, from_step: r.checkpoint?.step ?? null })),
    hosts: hosts.map((h) => ({ host: h.host, status: h.status, slot: h.replica !== undefined ? `${h.replica}.${h.stage}` : null })),
    streams,
    hosts_restarted: o.fleet.restarted, hosts_replaced_and_refused: o.fleet.refused, wall_seconds: (performance.now() - o.began) / 1000,
  };
}

/**
 * What the chaos run has seen of training: replica 0's committed steps, each
 * with the time it was seen; the summary once the run finished; and the
 * first failure, of the run or of a child. `until` waits on it.
 */
class TrainingWatch {
  private readonly commits: Array<{ replica: number; step: number; at: number }> = [];
  /** Replica 0's steps committed so far. */
  committedSteps = 0;
  summary: RunSummary | undefined;
  private failure: Error | undefined;

  fail(err: Error): void {
    this.failure ??= err;
  }

  async follow(nc: NatsConnection, names: RunNames): Promise<void> {
    await followRunEvents(nc, names, {
      progress: (p) => {
        this.commits.push({ replica: p.replica, step: p.step, at: performance.now() });
        if (p.replica !== 0) return;
        this.committedSteps = Math.max(this.committedSteps, p.step + 1);
      },
      finished: (s) => { this.summary = s; },
      failed: (f) => this.fail(new Error(f.reason)),
    });
  }

  /** The first commit seen after `at` (a performance.now() time), if any. */
  /** The first commit of `replica` seen after `at` (a performance.now() time), if any. */
  commitAfter(at: number, replica = 0): { step: number; at: number } | undefined {
    return this.commits.find((c) => c.at > at && c.replica === replica);
  }

  /** What the last `until` still waiting was waiting for. */
  waitingFor: string | undefined;

  /** Resolves once `cond` holds; rejects with the first failure, or when `timeoutMs` has passed. */
  async until(what: string, cond: () => boolean, timeoutMs = 120_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    this.waitingFor = what;
    while (!cond()) {
      if (this.failure) throw this.failure;
      if (performance.now() > deadline) throw new Error(`chaos: timed out waiting for ${what}`);
      await sleep(20);
    }
    if (this.waitingFor === what) this.waitingFor = undefined;
  }
}

type StageTarget = Extract<KillTarget, { kind: 'stage' }>;

/**
 * Strikes planned kills on the run under way, replaces what it killed, and
 * times each recovery: from the kill to the next step replica 0 commits.
 */
class Striker {
  private readonly reached: FaultReached[] = [];
  /** The kills whose recovery was measured, in the order they recovered. */
  readonly kills: KillRecord[] = [];
  private readonly pendingRecoveries: Array<Promise<void>> = [];

  constructor(
    private readonly fleet: ChaosFleet,
    private readonly watch: TrainingWatch,
    private readonly runState: RunStateReader,
    private readonly faults: FaultInjection,
    private readonly say: (line: string) => void,
    private readonly heartbeatTimeoutMs: number,
  ) {}

  /** Starts hearing which hosts reached the fault point they were armed with. */
  listen(): void {
    this.faults.onReached((r) => { this.reached.push(r); });
  }

  async strike(kill: PlannedKill): Promise<void> {
    if (kill.target.kind === 'coordinator') await this.strikeCoordinator();
    else if (kill.target.kind === 'coordinator-audit') await this.strikeCoordinatorMidAudit();
    else if (kill.target.kind === 'nats') await this.strikeNats(kill);
    else if (kill.target.kind === 'nats-partition') await this.partitionNats(kill);
    else if (kill.target.kind === 'pause') await this.pause(kill, kill.target.process);
    else if (kill.target.kind === 'nats-checkpoint') await this.strikeNatsAtCheckpoint(kill, kill.target);
    else await this.strikeStage(kill, kill.target);
  }

  /**
   * Freezes the coordinator or a NATS server (SIGSTOP) for three heartbeat
   * timeouts (at least 3 s), as a GC or disk stall would, then thaws it.
   * Neither is a host's fault: a paused coordinator's clock stops with it,
   * and one whose server stops answering counts nobody's silence meanwhile
   * (link-watch.ts), so no slot should change hands for it.
   */
  private async pause(kill: PlannedKill, process: 'coordinator' | 'nats'): Promise<void> {
    const pauseMs = Math.max(3_000, 3 * this.heartbeatTimeoutMs);
    const stopped = this.fleet.pausable(process, kill.afterStep);
    const detail = `${stopped.name} paused ${(pauseMs / 1000).toFixed(1)} s`;
    const at = performance.now();
    stopped.signal('SIGSTOP');
    this.say(`paused ${stopped.name} (SIGSTOP) at step ${this.watch.committedSteps}`);
    await sleep(pauseMs);
    stopped.signal('SIGCONT');
    this.say(`resumed it (SIGCONT) after ${(pauseMs / 1000).toFixed(1)} s`);
    this.recoveryAfter(at, { target: `pause-${process}`, kind: `pause-${process}`, detail, afterStep: this.watch.committedSteps });
  }

  /**
   * The driver's own reads of the run state, tried again for up to 30 s: on
   * a cluster, a server the driver is connected to may be paused or catching
   * up, and a KV read then fails for a while ("JetStream system temporarily
   * unavailable", a timeout) though nothing is wrong with the run.
   */
  private async patiently<T>(what: string, read: () => Promise<T>): Promise<T> {
    const deadline = performance.now() + 30_000;
    for (;;) {
      try {
        return await read();
      } catch (err) {
        if (performance.now() > deadline) throw new Error(`chaos: cannot read ${what} for 30 s: ${(err as Error).message}`);
        await sleep(250);
      }
    }
  }

  /** Resolves once every recovery is measured or given up on. */
  async recovered(): Promise<void> {
    await Promise.all(this.pendingRecoveries);
  }

  private async strikeCoordinator(during?: string): Promise<void> {
    const at = performance.now();
    await this.fleet.kill(this.fleet.coordinator);
    const detail = `the coordinator${during ? ` ${during}` : ''}`;
    this.say(`killed ${detail} at step ${this.watch.committedSteps}`);
    this.fleet.spawnCoordinator();
    const kind = during ? 'coordinator-audit' : 'coordinator';
    this.recoveryAfter(at, { target: kind, kind, detail, afterStep: this.watch.committedSteps });
  }

  /** The coordinator killed once the run's state shows an audit it drew and has not done (or not at all, if the run ends first). */
  private async strikeCoordinatorMidAudit(): Promise<void> {
    for (;;) {
      if (this.watch.summary) return;
      const pending = (await this.patiently('the run state', () => this.runState.state()))?.audits?.pending?.[0];
      if (pending) return this.strikeCoordinator(`while it audited slot ${pending.replica}.${pending.stage} up to step ${pending.to.step}`);
      await sleep(10);
    }
  }

  private async strikeNats(kill: PlannedKill, during?: { holder: CaravanChild; detail: string }): Promise<void> {
    const servers = this.fleet.cluster!.servers;
    const victim = servers[Math.floor(kill.afterStep % servers.length)];
    const at = performance.now();
    await victim.kill('SIGKILL');
    const detail = `NATS server ${victim.name}${during ? ` while ${during.detail}` : ''}`;
    this.say(`killed ${detail} at step ${this.watch.committedSteps}`);
    // The holder stopped at its fault point goes on, against the servers that are left.
    during?.holder.process.kill('SIGCONT');
    const kind = during ? 'nats-checkpoint' : 'nats';
    this.recoveryAfter(at, { target: kind, kind, detail, afterStep: this.watch.committedSteps });
    // Back after the pipeline moved on without it (a quorum of two), before anything else is killed.
    const movedOn = () => this.watch.summary !== undefined || this.watch.commitAfter(at) !== undefined;
    await Promise.race([this.watch.until('a step without the killed server', movedOn, 120_000), sleep(30_000)]);
    await victim.restart();
    this.say(`NATS server ${victim.name} restarted`);
  }

  /**
   * A NATS server cut off from the other two for longer than a Raft election
   * can take (nats-server's is 4–9 s), then healed. Leaders it held move to
   * the two; its clients keep their connections to it and hear nothing
   * through it meanwhile, so hosts connected there look lost and their slots
   * go to standbys elsewhere, as a datacenter cut off would. Healed, it must
   * catch up before anything else is struck.
   */
  private async partitionNats(kill: PlannedKill): Promise<void> {
    const cluster = this.fleet.cluster!;
    const victim = cluster.servers[Math.floor(kill.afterStep % cluster.servers.length)];
    const at = performance.now();
    cluster.partition(victim, true);
    const detail = `NATS server ${victim.name} cut off from the others ${(SERVER_PARTITION_MS / 1000).toFixed(0)} s`;
    this.say(`cut NATS server ${victim.name} off from the other servers at step ${this.watch.committedSteps}`);
    await sleep(SERVER_PARTITION_MS);
    cluster.partition(victim, false);
    this.say(`healed NATS server ${victim.name}'s routes`);
    this.recoveryAfter(at, { target: 'nats-partition', kind: 'nats-partition', detail, afterStep: this.watch.committedSteps });
    await victim.awaitHealthy(60_000);
    this.say(`NATS server ${victim.name} caught up`);
  }

  /** A NATS server killed while the slot's holder has a checkpoint uploaded but not yet reported. */
  private async strikeNatsAtCheckpoint(kill: PlannedKill, target: { replica: number; stage: number }): Promise<void> {
    const found = await this.liveHolder(target);
    if (!found) return;
    const detail = `replica ${target.replica} stage ${target.stage} had uploaded a checkpoint and not yet reported it`;
    await this.reachFaultPoint('checkpoint', found.host, found.holder, `replica ${target.replica} stage ${target.stage} (checkpoint)`);
    if (this.watch.summary || !isRunning(found.holder)) return;
    await this.strikeNats(kill, { holder: found.holder, detail });
  }

  /**
   * The running child holding a slot. The slot may still name a holder
   * killed a moment ago (two kills of one slot in a row): this waits until it
   * is handed to a live host. Undefined once the run has ended.
   */
  private async liveHolder(target: { replica: number; stage: number }): Promise<{ host: string; holder: CaravanChild } | undefined> {
    const read = () => this.patiently(`slot ${target.replica}.${target.stage}`, () => this.runState.slot(target.replica, target.stage));
    let slot = await read();
    const deadline = performance.now() + Math.max(30_000, 20 * this.heartbeatTimeoutMs);
    const child = () => (slot ? this.fleet.child(pidOf(slot.record.host)) : undefined);
    while (!(child() && isRunning(child()!)) && performance.now() < deadline && !this.watch.summary) {
      await sleep(100);
      slot = await read();
    }
    if (this.watch.summary) return undefined;
    if (!slot) throw new Error(`chaos: slot ${target.replica}.${target.stage} has no holder`);
    const holder = child();
    if (!holder || !isRunning(holder)) throw new Error(`chaos: the holder of slot ${target.replica}.${target.stage} (${slot.record.host}) is not a running child, and no live host took the slot over`);
    return { host: slot.record.host, holder };
  }

  private async strikeStage(kill: PlannedKill, target: StageTarget): Promise<void> {
    const found = await this.liveHolder(target);
    if (!found) return;
    const { host, holder } = found;
    const detail = `replica ${target.replica} stage ${target.stage} (${target.point})`;
    if (target.point === 'stall' || target.point === 'partition') return this.isolateStage(target, host, holder, detail);
    let at: number;
    if (target.point === 'anytime') {
      await sleep(Math.floor(50 + (kill.afterStep * 37) % 200));
      at = performance.now();
    } else {
      await this.reachFaultPoint(target.point, host, holder, detail);
      if (this.watch.summary) return;
      at = performance.now();
    }
    await this.fleet.kill(holder);  // its supervisor starts it again, as a standby
    this.say(`killed ${detail} at step ${this.watch.committedSteps}`);
    this.recoveryAfter(at, { target: 'stage', kind: target.point, detail, afterStep: this.watch.committedSteps }, target.replica);
  }

  /** Arms `host` to stop at `point`, and waits until it got there, is gone, or the run ended. */
  private async reachFaultPoint(point: FaultPoint, host: string, holder: CaravanChild, detail: string): Promise<void> {
    const request: FaultRequest = { point, after: 1 };
    // Arming again replaces the request, so a reply lost on the way is simply asked for again.
    const reply = await this.patiently(`the answer of ${host} to being armed`, () => this.faults.arm(host, request));
    if (!reply.ok) throw new Error(`chaos: ${reply.error}`);
    const from = this.reached.length;
    // The host says it got there (core NATS), then stops itself. A cluster chaos run lost that word once, in a server's
    // failover: the host stood stopped, was replaced, and the driver waited for it until the run ended, the faults
    // after it never struck. So a holder found stopped got there too.
    const there = () => this.reached.slice(from).some((r) => r.pid === holder.process.pid) || this.watch.summary !== undefined || !isRunning(holder) || isStopped(holder);
    await this.watch.until(`${detail} to reach its fault point`, there, 120_000);
  }

  /**
   * Frozen (stall: SIGSTOP) or cut off from NATS (partition: its links stop
   * carrying bytes, nothing is dropped) past the heartbeat timeout: replaced.
   * Thawed or reconnected, it must see that and leave (exit 3).
   */
  private async isolateStage(target: StageTarget, host: string, holder: CaravanChild, detail: string): Promise<void> {
    const at = performance.now();
    const slot = `replica ${target.replica} stage ${target.stage}`;
    const stall = target.point === 'stall';
    if (stall) holder.process.kill('SIGSTOP');
    else this.fleet.partition(holder, true);
    this.say(`${stall ? `stalled ${slot} (SIGSTOP)` : `cut ${slot} off from NATS (partition)`} at step ${this.watch.committedSteps}`);
    let handedOver = false;
    // Generous: right after other faults (a coordinator restarting, standbys still starting) on a loaded machine, a
    // hand-over takes far longer than the heartbeat timeout.
    const deadline = performance.now() + Math.max(30_000, 20 * this.heartbeatTimeoutMs);
    while (!handedOver && performance.now() < deadline) {
      handedOver = (await this.patiently(`slot ${target.replica}.${target.stage}`, () => this.runState.slot(target.replica, target.stage)))?.record.host !== host;
      if (!handedOver) await sleep(100);
    }
    if (!handedOver) throw new Error(`chaos: slot ${target.replica}.${target.stage} was not handed over while its host was ${stall ? 'stopped' : 'cut off'}`);
    if (stall) holder.process.kill('SIGCONT');
    else this.fleet.partition(holder, false);
    const exit = await Promise.race([holder.exited, sleep(30_000).then(() => undefined)]);
    const back = stall ? 'SIGCONT' : 'its links were healed';
    // Back after the run finished, it sees that first and leaves as a standby would.
    const finishedMeanwhile = exit?.code === 0 && this.watch.summary !== undefined;
    if (!exit || (exit.code !== 3 && !finishedMeanwhile)) throw new Error(`chaos: the replaced host of slot ${target.replica}.${target.stage} did not refuse to go on after ${back} (${exit ? `exit ${exit.code ?? exit.signal}` : 'still running after 30 s'}): ${holder.lastLine()}`);
    this.say(`the ${stall ? 'stalled' : 'cut-off'} host came back and left${finishedMeanwhile ? ' (the run had finished)' : ''}: ${holder.lastLine()}`);
    this.recoveryAfter(at, { target: target.point, kind: target.point, detail, afterStep: this.watch.committedSteps }, target.replica);
  }

  /** Times the recovery from a kill at `at` in the background; the record joins `kills` once a step is committed after it. */
  private recoveryAfter(at: number, record: Omit<KillRecord, 'recovery_s'>, replica = 0): void {
    const recovered = () => this.watch.summary !== undefined || this.watch.commitAfter(at, replica) !== undefined;
    this.pendingRecoveries.push(this.watch.until(`a step committed after killing ${record.detail}`, recovered, 180_000).then(() => {
      const next = this.watch.commitAfter(at, replica);
      const recovery = next ? (next.at - at) / 1000 : (performance.now() - at) / 1000;
      this.kills.push({ ...record, recovery_s: recovery });
      this.say(`recovered from ${record.detail} in ${recovery.toFixed(2)} s`);
    }, (err: Error) => this.say(`recovery from ${record.detail} not measured: ${err.message}`)));
  }
}

interface ChaosOutcome {
  readonly summary: RunSummary;
  readonly reference: Reference;
  readonly kills: KillRecord[];
  readonly counts: Contributions;
  readonly replays: NonNullable<RunState['replays']>;
  readonly refused: number;
  readonly restarted: number;
  /** performance.now() when the chaos run (after the reference) began. */
  readonly began: number;
}

function chaosReport({ summary, reference: { hashes: reference, audits }, kills, counts, replays, refused, restarted, began }: ChaosOutcome): ChaosReport {
  const hashes = summary.params_sha256_by_replica;
  const match = hashes.length === reference.length && hashes.every((h, i) => h === reference[i]);
  const byTarget: Record<string, number> = {};
  const byKind: Record<string, number[]> = {};
  for (const k of kills) {
    byTarget[k.target] = (byTarget[k.target] ?? 0) + 1;
    (byKind[k.kind] ??= []).push(k.recovery_s);
  }
  return {
    ok: match && counts.lost === 0 && counts.duplicated === 0,
    kills: kills.length,
    kills_by_target: byTarget,
    faults_by_kind: Object.fromEntries(Object.entries(byKind).map(([k, xs]) => [k, xs.length])),
    lost_microbatches: counts.lost,
    duplicated_microbatches: counts.duplicated,
    replay_mismatches: counts.mismatches,
    params_match_reference: match,
    recovery_s: percentiles(kills.map((k) => k.recovery_s)),
    recovery_s_by_kind: Object.fromEntries(Object.entries(byKind).map(([k, xs]) => [k, percentiles(xs)])),
    params_sha256: summary.params_sha256,
    reference_params_sha256: reference[0]!,  // replica 0 always trains
    hosts_replaced_and_refused: refused,
    hosts_restarted: restarted,
    recoveries: summary.recoveries,
    wall_seconds: (performance.now() - began) / 1000,
    kill_log: kills,
    control_replays: replays,
    ...(summary.audits ? { audits: summary.audits } : {}),
    ...(audits ? { reference_audits: audits } : {}),
  };
}

interface CheatOutcome {
  readonly run: string;
  readonly cheat: Cheat;
  /** Why the chaos run failed; undefined if it finished. */
  readonly failure: Error | undefined;
  readonly state: RunState | undefined;
  readonly summary: RunSummary | undefined;
  readonly reference: Reference;
  readonly kills: KillRecord[];
  readonly began: number;
}

function cheatReport({ run, cheat, failure, state, summary, reference, kills, began }: CheatOutcome): CheatReport {
  const audits = state?.audits ?? summary?.audits ?? null;
  const detected = audits?.failed[0] ?? null;
  const ref = reference.audits;
  return {
    run,
    cheat,
    caught: detected !== null,
    detected,
    detection_lag_steps: detected ? detected.step - cheat.from : null,
    blamed_cheater: detected !== null && detected.replica === cheat.replica && detected.stage === cheat.stage && detected.step >= cheat.from,
    run_failed: failure?.message ?? null,
    audits,
    reference_audits: ref ?? null,
    reference_compute_ms: reference.computeMs ?? null,
    audit_overhead: ref && reference.computeMs ? ref.replay_ms / reference.computeMs : null,
    params_match_reference: summary !== undefined && summary.params_sha256_by_replica.length === reference.hashes.length && summary.params_sha256_by_replica.every((h, i) => h === reference.hashes[i]),
    params_sha256: summary?.params_sha256 ?? null,
    rewinds: audits?.rewinds ?? [],
    reference_params_sha256: reference.hashes[0]!,
    kills: kills.length,
    kill_log: kills,
    control_replays: state?.replays ?? [],
    wall_seconds: (performance.now() - began) / 1000,
  };
}

/** The fault-free run: its parameter hashes by replica; with training.audit, what its audits found and the compute they are set against. */
interface Reference {
  readonly hashes: ReadonlyArray<string | null>;
  readonly audits?: AuditSummary;
  /** Σ over every slot of busy_ms in its holder's final report. */
  readonly computeMs?: number;
}

/**
 * In process for one replica (equal bit for bit to the pipeline, see
 * test/pipeline), over NATS otherwise, and also with audits: the coordinator
 * is what runs them.
 */
async function referenceRun(o: ChaosOptions): Promise<Reference> {
  const t = o.config.training;
  if (t.replicas === 1 && !t.audit) return { hashes: [(await trainLocal({ ...o.config, valEvery: 0, valBatches: 1 })).paramsSha256] };
  let computeMs: number | undefined;
  const summary = await trainDistributed({
    config: o.config, log: o.log,
    onFinished: t.audit ? async ({ url, run }) => { computeMs = await stageComputeMs(url, run); } : undefined,
  });
  return { hashes: summary.params_sha256_by_replica, audits: summary.audits, computeMs };
}

/** The engine time of a finished run's stage hosts: busy_ms summed over the slots' final reports (one a slot in a run without faults). */
async function stageComputeMs(url: string, run: string): Promise<number> {
  const nc = await connectNats(url, `caravan-chaos-reference-${run}`);
  try {
    let ms = 0;
    for await (const r of storedStageReports(await openExistingRun(nc, run, url))) if (r.type === 'final') ms += r.counters.compute.busy_ms;
    return ms;
  } finally {
    await nc.close().catch(() => {});
  }
}

function pidOf(host: string): number {
  return Number(host.split('-').pop());
}

/** Recovery times, s: the median, the 95th percentile (nearest rank) and the largest; 0 for none. */
export interface Percentiles {
  readonly median: number;
  readonly p95: number;
  readonly max: number;
}

function percentiles(values: readonly number[]): Percentiles {
  const xs = [...values].sort((a, b) => a - b);
  if (!xs.length) return { median: 0, p95: 0, max: 0 };
  const m = Math.floor(xs.length / 2);
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    median: round(xs.length % 2 ? xs[m] : (xs[m - 1] + xs[m]) / 2),
    p95: round(xs[Math.min(xs.length - 1, Math.ceil(0.95 * xs.length) - 1)]),
    max: round(xs[xs.length - 1]),
  };
}

export interface Contributions {
  readonly lost: number;
  readonly duplicated: number;
  readonly mismatches: number;
}

/**
 * From the control log: every update a stage applied (first run and every
 * replay) must hold each microbatch of its step exactly once, and every
 * (replica, stage, step) must have been applied. A replayed step must also
 * report the same Σg² as the first time.
 */
export async function countContributions(res: RunResources, config: RunConfig): Promise<Contributions> {
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
