// `caravan coordinator`: one per run. Writes the run config to KV, admits
// hosts (request/reply on ctl.register, heartbeats on core NATS), runs the
// Coordinator actor for membership and one Replica actor per replica for the
// steps. Everything it needs to go on lives in NATS: membership and slots in
// KV, the steps in the control log (opens and commits it wrote, the stages'
// reports). Killed and started again, it rebuilds the replicas by replaying
// that log, re-deciding each commit exactly as before, and only writes what
// is not there yet. At the end every stage has uploaded its final state, and
// the coordinator publishes the summary with a hash of the final parameters
// that does not depend on the split.
//
// It admits a key under one live host id at a time and, under credentials,
// only the run's host keys; it binds each slot to the key its host registered
// with, counts only reports signed by the slot's holder, and is the only
// writer of run state: the checkpoints holders report are recorded here, and
// the inputs they make unnecessary purged here.
//
// This file wires the pieces together and routes the Coordinator actor's
// commands to them: membership.ts (hosts), slot-table.ts (ASSIGN),
// replicas.ts (steps), reports.ts, control-log-replay.ts, run-summary.ts.
// Everything NATS is behind runtime/transport/coordinator-transport.ts.
import { createActor } from 'xstate';
import { coordinatorMachine, type CoordinatorCommand, type CoordinatorEvent, type CoordinatorMachineInput } from '../../actors/coordinator-machine.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { LeaveReply, ResplitReply, StageCounters } from '../../schemas/control-messages.ts';
import type { AuditSummary, RunState, RunSummary } from '../../schemas/run-records.ts';
import { startBridges } from '../bridge/bridge-runtime.ts';
import type { Logger } from '../log.ts';
import { HOST_KEYS_FILE, hostKeysCheck, hostKeysFileFor, readHostKeys } from '../security/run-host-keys.ts';
import { initRunMetrics } from '../telemetry/metrics.ts';
import { openCoordinatorTransport, type CoordinatorTransport } from '../transport/coordinator-transport.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import { followControlLog } from './control-log-replay.ts';
import { seedRunFromStates, type GivenStates } from './initial-states.ts';
import { concludeResplit, decideResplit, handedOverStates, HandOver, resplitConfig, speedResplits } from './resplit.ts';
import type { ReplayRead } from './control-log-snapshots.ts';
import { Audits } from './audits.ts';
import { Membership, restoreMembership } from './membership.ts';
import { OrderedWrites } from './ordered-writes.ts';
import { Replicas } from './replicas.ts';
import { bridgeMembers, joinReplica, strandReplica } from './replica-joins.ts';
import { Reports } from './reports.ts';
import { Rewinds } from './rewinds.ts';
import { finishRun } from './run-summary.ts';
import { LiveRunState } from './run-state.ts';
import { SlotTable } from './slot-table.ts';

export interface CoordinatorOptions {
  readonly nats: string;
  readonly run: string;
  readonly config: RunConfig;
  readonly log: Logger;
  readonly heartbeatTimeoutMs?: number;
  /**
   * A host whose heartbeats say its event loop has not turned for this long is stuck: its heartbeats no longer count,
   * and it is lost after the heartbeat timeout. Default: 10 × the heartbeat timeout. A host only slow (a long engine
   * call, a checkpoint) keeps its slot meanwhile.
   */
  readonly stuckTimeoutMs?: number;
  readonly streamReplicas?: number;
  /** An nkey seed file to authenticate to NATS with (the coordinator role of `caravan creds`). */
  readonly nkey?: string;
  /**
   * The run's host keys (`caravan creds` writes <dir>/<run>/host-keys.pub): only these may register. Under
   * credentials it defaults to host-keys.pub beside the seed and must exist; without, any key is admitted.
   */
  readonly hostKeys?: string;
  /**
   * Control-log entries followed between snapshots of the log (control-log-snapshots.ts): a restart replays the latest
   * snapshot and the log after it. Default CONTROL_SNAPSHOT_EVERY; 0: none (a restart replays the whole log). Runs with
   * audits keep in their snapshots what the audits may still replay.
   */
  readonly snapshotEvery?: number;
  /** Stage states of one moment (initial-states.ts): a new run starts from them; ignored once the run has begun. */
  readonly fromStates?: string;
  /** States in hand, for a run that goes on from another's re-split (resplit.ts); ignored once the run has begun. */
  readonly givenStates?: GivenStates;
  /** Hosts given the first slots in this order (a run re-split for its holders' speeds: each keeps its stage). */
  readonly preferredHosts?: readonly string[];
  /** The runs this one goes on from (live re-splits), first first: they hear its progress too. */
  readonly predecessors?: readonly string[];
}

/** The default of CoordinatorOptions.snapshotEvery: about 20 steps of a 16 × 3 run. */
export const CONTROL_SNAPSHOT_EVERY = 2048;
/** How many replays (one per coordinator restart) the run state keeps, newest last. */
const REPLAYS_KEPT = 20;

export async function runCoordinator(o: CoordinatorOptions): Promise<RunSummary> {
  const { config } = o;
  const log = o.log.child({ run: o.run });
  const hostKeys = hostKeysFileFor(o);
  if (hostKeys) {
    const keys = await readHostKeys(hostKeys).catch((err: Error) => {
      throw new Error(`run ${o.run}: ${err.message}; a coordinator under credentials admits only the run's host keys: run 'caravan creds' for the run (it writes ${HOST_KEYS_FILE} beside the seeds) or give --host-keys`);
    });
    log.info({ file: hostKeys, keys: keys.size }, 'admitting only the run\'s host keys');
  }
  const net = await openCoordinatorTransport({ url: o.nats, run: o.run, nkey: o.nkey, streamReplicas: o.streamReplicas, limits: edgeLimits(config), predecessors: o.predecessors });
  let handOver: HandOver | undefined;
  try {
    handOver = await handedOverBefore(o, net, log);
    if (!handOver) {
      const ended = await coordinateRun(o, net, log);
      if (!(ended instanceof HandOver)) return ended;
      handOver = ended;
    }
  } finally {
    await net.close();
  }
  // The run goes on as its successor, coordinated by this process; it ends as that one does.
  const next = await runCoordinator({
    ...o, run: handOver.resplit.run, config: handOver.config, fromStates: undefined, givenStates: handOver.states, preferredHosts: handOver.resplit.hosts_by_slot,
    predecessors: [...(o.predecessors ?? []), o.run],
  })
    .catch((err: Error) => err);
  return concludeResplit(o, handOver.resplit, next);
}

/**
 * A run re-split before this coordinator's restart: its successor goes on, from the final states read again (they
 * seed it only if it had not been seeded yet; the losses before the re-split are then not carried over).
 */
async function handedOverBefore(o: CoordinatorOptions, net: CoordinatorTransport, log: Logger): Promise<HandOver | undefined> {
  const prior = await net.runState.readState();
  if (prior?.status !== 'resplit' || !prior.resplit) return undefined;
  const next = resplitConfig(o.config, prior.resplit.stage_layers);
  if (typeof next === 'string') throw new Error(`run ${o.run} was re-split as ${prior.resplit.run}, but ${next}`);
  log.info({ successor: prior.resplit.run }, 'coordinator restarted: the run goes on as its successor');
  return new HandOver(prior.resplit, next, await handedOverStates({ config: o.config, resplit: prior.resplit, results: net.results, bridges: net.bridges, losses: [] }));
}

/** The run from its (re)start to its end, or to the hand-over to its successor. */
async function coordinateRun(o: CoordinatorOptions, net: CoordinatorTransport, log: Logger): Promise<RunSummary | HandOver> {
  const { config } = o;
  const prior = await net.runState.readState();
  if (prior?.status === 'finished') {
    const summary = await net.runState.readSummary();
    if (summary) { log.info('the run had already finished'); return summary; }
  }
  if (prior?.status === 'failed') throw new Error(`run ${o.run} failed earlier: ${prior.reason ?? 'no reason recorded'}`);
  const kept = await net.runState.readConfig();
  if (kept && JSON.stringify(kept) !== JSON.stringify(config)) {
    throw new Error(`run ${o.run} already exists with a different config: restart its coordinator with the same config, or use a new run id`);
  }
  if (!kept) await net.runState.writeConfig(config);
  let fromStep: number | undefined;
  const given = o.fromStates ? { dir: o.fromStates } : o.givenStates;
  if (given && !prior) fromStep = await seedRunFromStates({ from: given, config, slots: net.slots, controlLog: net.controlLog, bridges: net.bridges, log });
  else if (o.fromStates) log.info({ dir: o.fromStates }, 'the run has begun already: --from-states is not used again');
  const restore = prior ? await restoreMembership(net.runState, net.slots, config) : undefined;
  if (restore) log.info({ hosts: restore.hosts.length, running: restore.running, step: prior!.step }, 'coordinator restarted: resuming from KV and the control log');
  return await coordinate(o, net, prior, restore, log, fromStep);
}

async function coordinate(
  o: CoordinatorOptions, net: CoordinatorTransport, prior: RunState | undefined, restore: CoordinatorMachineInput['restore'], log: Logger,
  /** A new run seeded from given states (initial-states.ts): the first step it trains. */
  fromStep?: number,
): Promise<RunSummary | HandOver> {
  const t = o.config.training;
  const run = new LiveRunState(net.runState, prior, restore !== undefined, log);
  if (fromStep !== undefined) Object.assign(run.state, { step: fromStep, from_step: fromStep });
  await run.save();
  let settle!: (v: RunSummary | HandOver | Error) => void;
  const outcome = new Promise<RunSummary | HandOver | Error>((r) => { settle = r; });
  const heartbeatTimeoutMs = o.heartbeatTimeoutMs ?? 15_000;
  const stuckTimeoutMs = o.stuckTimeoutMs ?? 10 * heartbeatTimeoutMs;
  const stuck = new Set<string>();  // hosts whose last heartbeat said their event loop is stuck
  const tickMs = Math.min(1000, Math.max(50, Math.floor(heartbeatTimeoutMs / 10)));
  // Replicas that joined before a restart are in the run as much as those that started it.
  const active = bridgeMembers(o.config, run.state).map((m) => m.replica);
  const retired = (run.state.left ?? []).filter((l) => l.vacant).map((l) => l.replica);
  const coordinator = createActor(coordinatorMachine, {
    input: {
      stages: t.stages, replicas: t.replicas, startReplicas: t.bridge?.startReplicas, heartbeatTimeoutMs, tickMs, retireVacantMs: t.bridge?.retireVacantMs,
      preferredHosts: o.preferredHosts,
      restore: restore && { ...restore, active, retired },
    },
  });
  // Deaf to NATS (its server paused or cut off), the coordinator counts no host's silence against it.
  const silentMs = heartbeatTimeoutMs / 2;
  const link = net.watchLink({
    periodMs: tickMs, silentMs,
    changed: (up) => {
      if (up) log.info('NATS answers again: hosts are timed again, less the time the coordinator could not hear');
      else log.warn({ silent_ms: silentMs }, 'NATS does not answer this coordinator: no host is declared lost until it does');
      coordinator.send({ type: up ? 'LINK_BACK' : 'LINK_LOST' });
    },
  });
  const p = assemble(o, net, run, log, settle, (e) => coordinator.send(e));
  const hosts = net.channel.listen({
    register: (msg, respond) => p.membership.register(msg, respond),
    heartbeat: (host, key, loopLagMs) => {
      if (p.membership.isBanned(host)) return;  // caught by an audit: left to time out, and said once (rewinds.ts)
      if (!p.membership.heartbeatCounts(host, key)) log.warn({ host, key }, 'heartbeat refused: not under the key the host registered with');
      else if ((loopLagMs ?? 0) <= stuckTimeoutMs) {
        stuck.delete(host);
        p.membership.heardAgain(host, key);  // a standby declared lost is a standby again
        coordinator.send({ type: 'HEARTBEAT', host });
      }
      else if (!stuck.has(host)) {
        stuck.add(host);
        log.warn({ host, loop_lag_ms: loopLagMs, stuck_timeout_ms: stuckTimeoutMs }, 'host stuck: its event loop has not turned for longer than the stuck timeout; its heartbeats no longer count');
      }
    },
    ready: (host) => coordinator.send({ type: 'HOST_READY', host }),
    leave: (msg, respond) => respond(p.replicaLeaving(msg.replica)),
    resplit: (msg, respond) => respond(p.resplitRequested(msg.stage_layers)),
    failed: (reason) => settle(new Error(reason)),
    refused: (subject, err) => log.warn({ subject, err: err.message }, 'message refused'),
  });
  coordinator.on('*', (cmd: CoordinatorCommand) => {
    switch (cmd.type) {
      case 'ASSIGN': p.slotTable.assign(cmd); return;
      case 'STANDBY': p.membership.standby(cmd.host); return;
      case 'START_RUN': p.startRun(); return;
      case 'HOST_LOST': p.membership.lost(cmd.host, cmd.slot); return;
      case 'SLOT_VACANT': log.warn({ replica: cmd.replica, stage: cmd.stage, lost: cmd.lost }, 'slot vacant: no standby; waiting for a host to join'); return;
      case 'REPLICA_JOINED': p.replicaJoined(cmd.replica); return;
      case 'REPLICA_STRANDED': p.replicaStranded(cmd.replica, cmd.stage, cmd.vacantMs); return;
      case 'RUN_FINISHED': p.replicasFinished(); return;
    }
  });

  coordinator.start();
  log.info({ slots: t.stages * t.replicas }, restore ? 'coordinator resumed' : 'coordinator waiting for hosts');
  const result = await outcome;
  link.stop();
  coordinator.stop();
  p.stop();
  hosts.close();
  p.stopLog();
  await p.writes.drained();
  if (result instanceof HandOver) {
    // Its hosts hear it and register with the successor; this run's summary waits for the successor's end.
    run.state.status = 'resplit';
    await run.save();
    await p.metrics.shutdown();
    log.info({ successor: result.resplit.run, step: result.resplit.step, stage_layers: result.resplit.stage_layers }, 're-split: the run goes on as its successor');
    return result;
  }
  return conclude(result, run, net, p.metrics, log);
}

/** The coordinator's pieces, wired to each other, to NATS through `net`, and to the Coordinator actor through `send`. */
function assemble(
  o: CoordinatorOptions, net: CoordinatorTransport, run: LiveRunState, log: Logger, settle: (v: RunSummary | HandOver | Error) => void, send: (e: CoordinatorEvent) => void,
) {
  const { config } = o;
  const t = config.training;
  const writes = new OrderedWrites(settle);
  const hostKeys = hostKeysFileFor(o);
  const membership = new Membership({ run: o.run, store: net.runState, writes, log, recoveries: run.recoveries, send, runKey: hostKeys ? hostKeysCheck(hostKeys) : undefined });
  const slotTable = new SlotTable({ config, slots: net.slots, membership, writes, log, recoveries: run.recoveries });
  const counters = new Map<string, StageCounters>();  // the latest of every slot's holder, `${replica}.${stage}`
  const saveAudits = (summary: AuditSummary) => { run.state.audits = summary; return run.save(); };
  const audits: Audits | undefined = t.audit ? new Audits({
    run: o.run, config, slots: net.slots, evidence: net.evidence, log, failed: settle, prior: run.state.audits,
    caught: (c) => rewinds.caught(c),
    orphaned: (replica, stage, object) => rewinds.orphaned(replica, stage, object),
    rewound: () => rewinds.done,
    changed: saveAudits,
    epochOf: (replica) => replicas.epoch(replica),
  }) : undefined;
  const bySpeed = speedResplits({ run: o.run, config, secured: hostKeys !== undefined, state: run, replicas: () => replicas, writes, log, runState: net.runState, slots: net.slots });
  const replicas: Replicas = new Replicas({
    config, controlLog: net.controlLog, writes, run, log, counters,
    progress: (p) => { net.channel.progress(p); bySpeed(p.replica, p.step); },
    failed: settle, finished: (replica) => send({ type: 'REPLICA_FINISHED', replica }),
    committed: audits && ((replica, step, gradScale, skip) => audits.committed(replica, step, gradScale, skip)),
  });
  const bridges = t.bridge ? startBridges({ store: net.bridges, config, bridge: t.bridge, log, onError: settle, members: bridgeMembers(config, run.state) }) : undefined;
  // The run's metrics over OpenTelemetry (off unless OTEL_EXPORTER_OTLP_* names an endpoint): the live state, read when exported.
  const metrics = initRunMetrics({ service: 'caravan-coordinator', run: o.run }, () => run.state);
  // An audit's catch: the caught host banned, its replica trained again from its start (rewinds.ts).
  const rewinds: Rewinds = new Rewinds({
    config, controlLog: net.controlLog, slots: net.slots, membership, replicas, writes, log, failed: settle,
    evict: (host) => send({ type: 'HOST_EVICTED', host }),
    unfinished: (replica) => {
      replicasDone = false;
      reports.forgetFinals(replica);
      audits?.rewinding(replica);
      send({ type: 'REPLICA_REWOUND', replica });
    },
    restarted: (replica) => {
      reports.forgetFinals(replica);
      audits?.rewound(replica);
    },
    changed: () => { if (audits) void saveAudits(audits.result()); },
  });
  const reports = new Reports({ slots: net.slots, writes, log, replicas, bridges, audits, rewinds, counters, finalReported: () => maybeFinish(), failed: settle });
  let replicasDone = false;
  let finishing = false;
  function maybeFinish(): void {
    if (finishing || rewinds.busy || !replicasDone || reports.finals.size < t.stages * replicas.finishing().length) return;
    finishing = true;
    const { finals } = reports, { losses, skipped, rolledBack } = replicas;
    // The last intervals' audits finish before the summary says what they found; one of them may send a replica back to work.
    void (audits?.settled() ?? Promise.resolve())
      .then(() => {
        if (rewinds.busy) { finishing = false; return; }
        const resplit = run.state.resplit;
        if (resplit) {
          return handedOverStates({ config, resplit, results: net.results, bridges: net.bridges, finals, losses })
            .then((states) => settle(new HandOver(resplit, resplitConfig(config, resplit.stage_layers) as RunConfig, states)));
        }
        return finishRun({ run: o.run, config, state: run, results: net.results, bridges: net.bridges, counters, finals, active: replicas.active, finishing: replicas.finishing(), losses, skipped, rolledBack, audits: audits?.result() }).then(settle);
      })
      .catch((err: Error) => settle(err));
  }
  let stopLog = () => {};
  return {
    writes, membership, slotTable, metrics,
    startRun: () => {
      if (!run.start()) return;
      log.info({ stages: t.stages, replicas: t.replicas, steps: t.steps }, 'run started');
      const recorded = run.state.audits?.failed ?? [];
      const replayed = (read: ReplayRead) => {
        rewinds.resume(recorded);
        audits?.resume();
        // What this coordinator's start read: `caravan status` and `caravan chaos` show it.
        // (A fresh run has read nothing; one started from given states, only their snapshot at sequence 0.)
        if (read.log_seq > 0) {
          run.state.replays = [...(run.state.replays ?? []), read].slice(-REPLAYS_KEPT);
          void run.save();
        }
      };
      const snapshots = { every: o.snapshotEvery ?? CONTROL_SNAPSHOT_EVERY, settled: () => writes.drained(), needed: audits && ((r: number) => audits.firstNeeded(r)) };
      void (audits?.restore() ?? Promise.resolve())
        .then(() => followControlLog({ controlLog: net.controlLog, replicas, reports, rewinds, log, reading: (stop) => { stopLog = stop; }, replayed, snapshots }))
        .catch((err: Error) => settle(new Error(`control log: ${err.message}`)));
    },
    replicaJoined: (replica: number) => {
      if (!bridges) return settle(new Error(`replica ${replica} joined a run without the Bridge`));
      joinReplica({ replica, config, bridgeStore: net.bridges, slots: net.slots, bridges, replicas, run, writes, log });
    },
    replicaLeaving: (replica: number): LeaveReply => {
      if (!bridges) return { ok: false, reason: 'the run has no Bridge: its replicas train to the end' };
      const decided = replicas.retire(replica, t.bridge!.syncEvery);
      if (typeof decided === 'string') return { ok: false, reason: decided };
      bridges.leaving(replica, decided.outer);
      run.state.left = [...(run.state.left ?? []), { replica, outer: decided.outer, step: decided.lastStep, at: Date.now() }];
      void run.save();
      log.info({ replica, outer: decided.outer, last_step: decided.lastStep }, 'replica leaving: it contributes to this outer step last, and ends after this step');
      return { ok: true, outer: decided.outer, last_step: decided.lastStep };
    },
    // A slot vacant past training.bridge.retireVacantMs: its replica is retired where it stands, so that the others'
    // syncs stop waiting for it. Its remaining hosts keep their slots, idle, until the run ends.
    replicaStranded: (replica: number, stage: number, vacantMs: number) => strandReplica({ replica, stage, vacantMs, config, bridges, replicas, run, log }) && send({ type: 'REPLICA_RETIRED', replica }),
    // `caravan repartition --live`: the run ends at the first step past every step opened, and goes on as its successor.
    resplitRequested: (stageLayers: number[]): ResplitReply => decideResplit({ run: o.run, config, stageLayers, secured: hostKeys !== undefined, state: run, replicas, writes, log }),
    replicasFinished: () => {
      replicasDone = true;
      maybeFinish();
    },
    stop: () => {
      bridges?.stop();
      replicas.stop();
    },
    stopLog: () => stopLog(),
  };
}

/** Records how the run ended (its summary, or why it failed), says so to everyone listening, and returns the summary or throws. */
async function conclude(result: RunSummary | Error, run: LiveRunState, net: CoordinatorTransport, metrics: { shutdown(): Promise<void> }, log: Logger): Promise<RunSummary> {
  if (result instanceof Error) {
    log.debug({ stack: result.stack }, 'run failed');
    Object.assign(run.state, { status: 'failed', reason: result.message });
    await run.save();
    await metrics.shutdown();  // the last values go out before the process ends
    net.channel.failed(result.message);
    throw result;
  }
  await net.runState.writeSummary(result);
  run.state.status = 'finished';
  await run.save();
  await metrics.shutdown();
  net.channel.finished(result);
  return result;
}
