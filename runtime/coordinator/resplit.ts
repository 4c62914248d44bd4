// A running run re-split live (`caravan repartition --live`): the layers go
// to the stages another way, and the run goes on without stopping its hosts.
// The coordinator takes the first step k past every step its replica has
// opened: step k−1 is committed as the replica's last (its stages upload
// their final states, as at a run's end). Those states of one moment are
// re-sharded by layer for the new split and seed a successor run, `<run>-sN`,
// which starts at step k with the losses so far (initial-states.ts). The
// run's state says `resplit` and names it: its hosts register there
// (host-process.ts), and this coordinator coordinates it. The run ends with
// its successor's summary, listing the re-splits on the way. Because the
// engine's results do not depend on the split, the weights are the ones the
// run would have had unsplit (test/checkpoint/reshard-states.test.ts).
//
// With the Bridge the run ends on an outer step's last step, and each
// replica goes on from its own states (resplit-bridge.ts). Not for a run with
// audits, of more than one replica without the Bridge (each has weights of
// its own, and nothing syncs them), or under credentials (a host's
// credentials are for one run id).
import { validateRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import type { HostEntry, Resplit, RunSummary, SlotRecord } from '../../schemas/run-records.ts';
import { measuredSplit } from '../config/speed-split.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import type { StageStateBlob } from '../export/stitch-stages.ts';
import type { Logger } from '../log.ts';
import { sha256Hex } from '../security/message-signature.ts';
import { openCoordinatorTransport } from '../transport/coordinator-transport.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import type { RunResults } from '../transport/run-results.ts';
import type { RunStateStore } from '../transport/run-state-store.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import { validateRunId } from '../transport/subjects.ts';
import type { ResplitReply } from '../../schemas/control-messages.ts';
import type { GivenStates } from './initial-states.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import { bridgeHandOver, bridgeResplitRefusal } from './resplit-bridge.ts';
import { bridgeSummary } from './run-summary.ts';
import type { Replicas } from './replicas.ts';
import type { LiveRunState } from './run-state.ts';

/** What a run that ended for a re-split hands its coordinator: the successor, its config, and the states it starts from. */
export class HandOver {
  constructor(readonly resplit: Resplit, readonly config: RunConfig, readonly states: GivenStates) {}
}

/** The run's config with the layers split as `stageLayers` (checked as a config is), or why not. */
export function resplitConfig(config: RunConfig, stageLayers: readonly number[]): RunConfig | string {
  try {
    // Every replica is in the run by then (decideResplit): the successor starts them all.
    const bridge = config.training.bridge && { ...config.training.bridge, startReplicas: config.training.replicas };
    return validateRunConfig({ ...config, training: { ...config.training, stages: stageLayers.length, stageLayers: [...stageLayers], ...(bridge ? { bridge } : {}) } });
  } catch (err) {
    return (err as Error).message;
  }
}

/** Why the run cannot be re-split live, if it cannot. */
export function resplitRefusal(config: RunConfig, secured: boolean): string | undefined {
  const t = config.training;
  const bridge = bridgeResplitRefusal(config);
  if (bridge) return bridge;
  if (t.audit) return 'a run with audits cannot be re-split live yet';
  if (t.replicas > 1 && !t.bridge) return 'a run of more than one replica without the Bridge cannot be re-split live: each replica has weights of its own';
  if (secured) return 'a run under credentials cannot be re-split live: its hosts\' credentials are for this run id only (re-split between runs: caravan repartition, then --from-states)';
  return undefined;
}

/** What deciding a re-split takes: the run, whether it is under credentials, its state and replicas. */
interface ResplitContext {
  readonly run: string; readonly config: RunConfig; readonly secured: boolean;
  readonly state: LiveRunState; readonly replicas: Replicas; readonly writes: OrderedWrites; readonly log: Logger;
}

/**
 * An operator's request (`caravan repartition --live`): the run ends at the first step past every step opened, and goes
 * on as its successor split `stageLayers`; the decision is kept in the run state (a restarted coordinator keeps to it).
 */
export function decideResplit(o: ResplitContext & {
  readonly stageLayers: number[];
  /** For a re-split by measured speeds: the holders slot by slot (replica-major), whom the successor gives the same slots. */
  readonly hostsBySlot?: string[];
}): ResplitReply {
  const refused = resplitRefusal(o.config, o.secured);
  if (refused) return { ok: false, reason: refused };
  const { state } = o;
  if (state.state.resplit) return { ok: false, reason: `the run is being re-split already, at step ${state.state.resplit.step}` };
  const next = resplitConfig(o.config, o.stageLayers);
  if (typeof next === 'string') return { ok: false, reason: next };
  const layers = stageRanges(o.config).map(([b, e]) => e - b);
  if (layers.join(',') === o.stageLayers.join(',')) return { ok: false, reason: `the run is split ${layers.join(',')} already` };
  const R = o.config.training.replicas;
  if (o.config.training.bridge && (o.replicas.finishing().length < R || state.state.left?.length)) {
    return { ok: false, reason: `with the Bridge, a run is re-split live only while all its ${R} replicas train: one that has not joined yet, has left or was retired would have no state to go on from` };
  }
  const step = o.replicas.endAll();
  if (typeof step === 'string') return { ok: false, reason: step };
  const resplit = {
    from_run: o.run, run: successorRunId(o.run), step, from_stage_layers: layers, stage_layers: [...o.stageLayers], at: Date.now(),
    ...(o.hostsBySlot ? { hosts_by_slot: o.hostsBySlot } : {}),
  };
  state.state.resplit = resplit;
  o.writes.write('re-split', () => state.save());
  o.log.info({ step, stage_layers: o.stageLayers, successor: resplit.run }, 're-split decided: the run ends before this step and goes on as its successor, split so');
  return { ok: true, step, run: resplit.run };
}

/**
 * training.resplitGain: once every slot's holder has reported its speed, the split those speeds call for
 * (config/speed-split.ts measuredSplit) is taken by a live re-split if its slowest stage is `resplitGain` times faster
 * than the run's; its holders keep their stages in the successor. Says whether it was decided.
 */
export async function resplitBySpeed(o: ResplitContext & {
  readonly hosts: () => Promise<HostEntry[]>;
  /** Every slot's record, replica-major: none while a slot has none (a replica not joined yet). */
  readonly slots: () => Promise<SlotRecord[] | undefined>;
}): Promise<boolean> {
  const gain = o.config.training.resplitGain;
  if (gain === undefined || o.state.state.resplit) return false;
  const slots = await o.slots();
  const m = slots && measuredSplit(o.config, await o.hosts(), slots);
  if (!slots || !m || m.pace_gain < gain || m.by_speed.join(',') === m.layers.join(',')) return false;
  o.log.info({ stage_tflops: m.stage_tflops, from: m.layers, to: m.by_speed, pace_gain: Number(m.pace_gain.toFixed(3)), resplit_gain: gain }, 're-splitting for the holders\' measured speeds');
  const reply = decideResplit({ ...o, stageLayers: m.by_speed, hostsBySlot: slots.map((x) => x.host) });
  if (!reply.ok) o.log.warn({ reason: reply.reason }, 'no re-split for the holders\' measured speeds');
  return reply.ok;
}

/** resplitBySpeed weighed at each checkpoint step replica 0 commits, one weighing at a time, until a re-split is decided. */
export function speedResplits(o: Omit<ResplitContext, 'replicas'> & { readonly replicas: () => Replicas; readonly runState: RunStateStore; readonly slots: SlotStore }): (replica: number, step: number) => void {
  const t = o.config.training;
  if (t.resplitGain === undefined) return () => {};
  const refused = resplitRefusal(o.config, o.secured);
  if (refused) {
    o.log.warn({ reason: refused }, 'training.resplitGain: this run cannot be re-split live; its split stays');
    return () => {};
  }
  const hosts = () => o.runState.hosts();
  const slots = async () => {
    const all = await Promise.all(Array.from({ length: t.replicas * t.stages }, (_, i) => o.slots.read(Math.floor(i / t.stages), i % t.stages)));
    return all.every((x) => x !== undefined) ? all : undefined;
  };
  let weighing = false;
  return (replica, step) => {
    if (replica !== 0 || weighing || o.state.state.resplit || (step + 1) % Math.max(1, t.checkpointEvery) !== 0) return;
    weighing = true;
    void resplitBySpeed({ ...o, replicas: o.replicas(), hosts, slots })
      .catch((err: Error) => o.log.warn({ err: err.message }, 'could not weigh a re-split for the holders\' speeds'))
      .finally(() => { weighing = false; });
  };
}

/** The successor's id: `<run>-s2`, then `-s3` for a run already re-split. */
export function successorRunId(run: string): string {
  const m = /^(.*)-s(\d+)$/.exec(run);
  return validateRunId(m ? `${m[1]}-s${Number(m[2]) + 1}` : `${run}-s2`);
}

/**
 * The final states the successor starts from, checked against the digests their holders reported where `finals` has
 * them: replica 0's (the run's, with one replica); with the Bridge every replica's, and the Bridge's after the last sync.
 */
export async function handedOverStates(o: {
  readonly config: RunConfig; readonly resplit: Resplit; readonly results: RunResults; readonly bridges: BridgeStore; readonly finals?: ReadonlyMap<string, string>;
  readonly losses: ReadonlyArray<ReadonlyArray<number>>;
}): Promise<GivenStates> {
  const statesOf = async (replica: number): Promise<StageStateBlob[]> => {
    const blobs: StageStateBlob[] = [];
    for (const [s, [begin, end]] of stageRanges(o.config).entries()) {
      const bytes = await o.results.finalState(replica, begin, end);
      if (!bytes) throw new Error(`re-split of run ${o.resplit.from_run}: the final state of replica ${replica} stage ${s} (layers [${begin}, ${end})) is missing from the object store`);
      const reported = o.finals?.get(`${replica}.${s}`);
      if (reported && sha256Hex(bytes) !== reported) throw new Error(`re-split of run ${o.resplit.from_run}: the final state of replica ${replica} stage ${s} is not the one its holder reported`);
      blobs.push({ source: `run ${o.resplit.from_run} replica ${replica} stage ${s}`, bytes });
    }
    return blobs;
  };
  const blobs = await statesOf(0);
  const bridge = o.config.training.bridge && await bridgeHandOver({
    config: o.config, resplit: o.resplit, bridges: o.bridges,
    byReplica: [blobs, ...await Promise.all(Array.from({ length: o.config.training.replicas - 1 }, (_, r) => statesOf(r + 1)))],
  });
  const losses = o.losses.map((l) => l.slice(0, o.resplit.step).map((x) => (Number.isFinite(x) ? x : null)));
  return { what: `the re-split of run ${o.resplit.from_run} at step ${o.resplit.step}`, blobs, losses, ...(bridge ? { bridge } : {}) };
}

/**
 * The run whose successor has ended: its state and summary say how (the successor's summary, with this re-split
 * first among `resplits`), and whoever listens on its channel hears it.
 */
export async function concludeResplit(o: { readonly nats: string; readonly run: string; readonly nkey?: string; readonly streamReplicas?: number; readonly config: RunConfig; readonly log: Logger },
  resplit: Resplit, result: RunSummary | Error): Promise<RunSummary> {
  const net = await openCoordinatorTransport({ url: o.nats, run: o.run, nkey: o.nkey, streamReplicas: o.streamReplicas, limits: edgeLimits(o.config) });
  try {
    const state = (await net.runState.readState())!;
    if (result instanceof Error) {
      await net.runState.writeState({ ...state, status: 'failed', reason: `its successor ${resplit.run}: ${result.message}`, updated: new Date().toISOString() });
      net.channel.failed(`run ${resplit.run}, which run ${o.run} went on as: ${result.message}`);
      throw result;
    }
    // With the Bridge: this run's syncs first, then the successor's (each by the stage of its own split).
    const bridge = o.config.training.bridge && await bridgeSummary(net.bridges, o.config.training.stages, resplit.step / o.config.training.bridge.syncEvery);
    const summary: RunSummary = {
      ...result, resplits: [resplit, ...(result.resplits ?? [])],
      ...(bridge ? { bridge_syncs: [...bridge.bridge_syncs, ...(result.bridge_syncs ?? [])] } : {}),
    };
    await net.runState.writeSummary(summary);
    await net.runState.writeState({ ...state, status: 'finished', updated: new Date().toISOString() });
    net.channel.finished(summary);
    o.log.info({ successor: resplit.run }, 'run finished as its successor did');
    return summary;
  } finally {
    await net.close();
  }
}
