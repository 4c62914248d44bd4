// A run with the Bridge re-split live (resplit.ts): it ends on the last step
// of an outer step j (Replicas.endAll), so every replica's final parameters
// are the θ that sync left, while AdamW's moments stay each replica's own
// (DiLoCo's inner optimizer). The successor starts each replica from its own
// states, re-sharded by layer, and its Bridge from θ and the outer momentum
// after step j, re-sharded the same way: outer step j's record is written in
// the successor's store before any host starts, so its next sync combines
// from there and a host restoring at the boundary finds the θ it expects.
//
// The outer optimizer and the fp32 payload work value by value, so the
// weights do not depend on the split. MX int8 scales each block of 32 values:
// blocks fall alike under any split only if every tensor's size is a
// multiple of 32 (checked). Top-k keeps the largest values of each stage, so
// another split sends other values: refused.
import { EngineStage } from '../../native/index.ts';
import { llamaTensorSpecs } from '../../schemas/model-config.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { BridgeRecord, Resplit } from '../../schemas/run-records.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import { encodeParams } from '../bridge/bridge-payload.ts';
import { joiningState } from '../bridge/joining-state.ts';
import { reshardStageStates, type ReshardedState } from '../checkpoint/reshard-states.ts';
import { MX_BLOCK } from '../codecs/index.ts';
import type { StageStateBlob } from '../export/stitch-stages.ts';
import type { Logger } from '../log.ts';
import { sha256Hex } from '../security/message-signature.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';

/** What a Bridge run hands its successor besides replica 0's states: every replica's, and the Bridge's after outer step `outer`. */
export interface BridgeHandOver {
  /** The run re-split, and the outer step its last step ended. */
  readonly run: string;
  readonly outer: number;
  /** By replica, by stage of the old split: final states. */
  readonly byReplica: readonly (readonly StageStateBlob[])[];
  /** By stage of the old split: states whose parameters are the outer momentum (none for an outer optimizer without one). */
  readonly momentum?: readonly StageStateBlob[];
  /** The replicas outer step `outer` combined, and when: the successor's record of it says the same. */
  readonly replicas: number[];
  readonly firstMs: number;
  readonly finishedMs: number;
}

/** Why a run with the Bridge cannot be re-split live, if it cannot. */
export function bridgeResplitRefusal(config: RunConfig): string | undefined {
  const b = config.training.bridge;
  if (!b) return undefined;
  if (b.payload === 'topk') return 'a run whose Bridge sends top-k cannot be re-split live: top-k keeps the largest values of each stage, so another split would send other values';
  if (b.payload === 'mxint8') {
    const odd = llamaTensorSpecs(config.model).find((t) => t.shape.reduce((a, x) => a * x, 1) % MX_BLOCK !== 0);
    if (odd) return `a run whose Bridge sends MX int8 cannot be re-split live when a tensor's size is not a multiple of ${MX_BLOCK} (${odd.name}: ${odd.shape.join('×')}): its blocks would fall otherwise under another split (payload fp32 can)`;
  }
  return undefined;
}

/** The Bridge's part of a hand-over: outer step `resplit.step / H`'s momentum and record, read from the run's store. */
export async function bridgeHandOver(o: {
  readonly config: RunConfig; readonly resplit: Resplit; readonly bridges: BridgeStore;
  readonly byReplica: readonly (readonly StageStateBlob[])[];
}): Promise<BridgeHandOver> {
  const H = o.config.training.bridge!.syncEvery;
  if (o.resplit.step % H !== 0) throw new Error(`re-split of run ${o.resplit.from_run}: step ${o.resplit.step} is not at an outer step's boundary (every ${H} steps)`);
  const outer = o.resplit.step / H;
  const records: BridgeRecord[] = [];
  const momentum: StageStateBlob[] = [];
  for (const s of stageRanges(o.config).keys()) {
    const record = await o.bridges.readRecord(s, outer);
    if (!record) throw new Error(`re-split of run ${o.resplit.from_run}: outer step ${outer} of stage ${s} has no record`);
    records.push(record);
    if (!record.momentum) continue;
    const blob = await o.bridges.readObject(record.momentum);
    if (!blob || sha256Hex(blob) !== record.momentum_sha256) throw new Error(`re-split of run ${o.resplit.from_run}: the outer momentum ${record.momentum} is ${blob ? 'not the one its record names' : 'missing from the object store'}`);
    // A stage state whose parameters are the momentum: re-sharded by layer as parameters are.
    momentum.push({ source: `the outer momentum of stage ${s} after outer step ${outer}`, bytes: joiningState(o.config, s, { payload: blob, name: record.momentum }, o.resplit.step) });
  }
  return {
    run: o.resplit.from_run, outer, byReplica: o.byReplica, ...(momentum.length ? { momentum } : {}),
    replicas: records[0].replicas, firstMs: Math.min(...records.map((r) => r.first_ms)), finishedMs: Math.max(...records.map((r) => r.finished_ms)),
  };
}

/**
 * Writes outer step `handOver.outer`'s record for every stage of the successor's split: θ from replica 0's re-sharded
 * states (every replica's parameters are θ there), the momentum re-sharded alike, each object under its SHA-256.
 */
export async function seedBridgeOuterStep(o: {
  readonly config: RunConfig; readonly handOver: BridgeHandOver; readonly states: readonly ReshardedState[]; readonly bridges: BridgeStore; readonly log: Logger;
}): Promise<void> {
  const { outer } = o.handOver;
  const ranges = stageRanges(o.config);
  const momentum = o.handOver.momentum && reshardStageStates(o.handOver.momentum, ranges);
  for (const [stage, state] of o.states.entries()) {
    const params = stateParams(o.config, stage);
    const thetaBytes = encodeParams(params(state.bytes), 'fp32').bytes;
    const momentumBytes = momentum && encodeParams(params(momentum[stage].bytes), 'fp32').bytes;
    const record: BridgeRecord = {
      stage, outer, replicas: o.handOver.replicas,
      theta: await o.bridges.writeTheta(stage, outer, thetaBytes), theta_sha256: sha256Hex(thetaBytes),
      ...(momentumBytes ? { momentum: await o.bridges.writeMomentum(stage, outer, momentumBytes), momentum_sha256: sha256Hex(momentumBytes) } : {}),
      first_ms: o.handOver.firstMs, finished_ms: o.handOver.finishedMs, bytes_raw: 0, bytes_wire: 0, resharded_from: o.handOver.run,
    };
    // A coordinator killed while seeding, started again, seeds again: the record it wrote then stands if it is this one.
    const { record: standing } = await o.bridges.createRecord(record);
    if (standing.theta_sha256 !== record.theta_sha256 || standing.momentum_sha256 !== record.momentum_sha256) {
      throw new Error(`stage ${stage}: outer step ${outer} has a record already, of other parameters: the run had begun before it was seeded`);
    }
    await o.bridges.advanceOuter(stage, outer);
  }
  o.log.info({ outer, stages: o.states.length, momentum: momentum !== undefined }, 'the Bridge starts from the outer parameters and momentum the re-split run left, re-sharded');
}

/** The parameters of a state of the config's stage `stage`, in the engine's order (the order the Bridge's payloads use). */
function stateParams(config: RunConfig, stage: number): (bytes: Uint8Array) => Float32Array {
  const [layerBegin, layerEnd] = stageRanges(config)[stage];
  // The run's thread count: OpenBLAS's is process-wide.
  const engine = new EngineStage({ model: config.model, optim: config.optim, layerBegin, layerEnd, seed: config.training.seed, threads: config.training.cpuThreads });
  return (bytes) => {
    engine.loadState(bytes, `stage ${stage}'s re-sharded state`);
    return engine.params().slice();
  };
}
