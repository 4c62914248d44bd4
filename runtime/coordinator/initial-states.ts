// A run that starts from given stage states (`caravan coordinator
// --from-states DIR`): states of one moment, from any split (an in-process
// run's checkpoints, or `caravan repartition`'s output), re-sharded for this
// run's split (runtime/checkpoint/reshard-states.ts) and stored before the
// run's first start as each slot's checkpoint, under a record no host holds
// (generation 0). The first host given a slot starts from it, as a
// replacement would. The control log gets a snapshot whose replicas start at
// the states' optimizer step, so the Replica actors open that step first;
// the steps before it have no loss in this run (null), unless the states come
// with the losses of the run they were taken from (a live re-split:
// resplit.ts). Every replica starts from the same states, but in a run with
// the Bridge re-split live: each replica from its own, and the Bridge from
// the outer step they follow (resplit-bridge.ts).
import { CONTROL_SNAPSHOT_VERSION } from '../../schemas/control-snapshot.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import { modelDifference } from '../../native/index.ts';
import { reshardStitched } from '../checkpoint/reshard-states.ts';
import { statesFromCheckpointDir } from '../export/run-stage-states.ts';
import { stitchStageStates, type StageStateBlob } from '../export/stitch-stages.ts';
import type { Logger } from '../log.ts';
import type { ControlLog } from '../transport/control-log.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import { seedBridgeOuterStep, type BridgeHandOver } from './resplit-bridge.ts';

/**
 * Stage states of one moment: a directory of checkpoints (--from-states), or blobs in hand, with their run's losses so
 * far (and a Bridge run's every replica's states and the Bridge's).
 */
export type GivenStates = { readonly dir: string } | {
  readonly what: string; readonly blobs: readonly StageStateBlob[]; readonly losses: ReadonlyArray<ReadonlyArray<number | null>>; readonly bridge?: BridgeHandOver;
};

/** Stores the states as every slot's starting checkpoint; resolves to the first step the run trains. */
export async function seedRunFromStates(o: {
  readonly from: GivenStates; readonly config: RunConfig; readonly slots: SlotStore; readonly controlLog: ControlLog; readonly bridges: BridgeStore; readonly log: Logger;
}): Promise<number> {
  const t = o.config.training;
  const what = 'dir' in o.from ? `--from-states ${o.from.dir}` : o.from.what;
  const bridge = 'bridge' in o.from ? o.from.bridge : undefined;
  if (t.bridge && !bridge) throw new Error(`${what}: a run with the Bridge cannot start from given states yet (its outer steps would have no record)`);
  if (t.audit) throw new Error(`${what}: a run with audits cannot start from given states yet`);
  const blobs = 'dir' in o.from ? await statesFromCheckpointDir(o.from.dir) : o.from.blobs;
  const losses = 'losses' in o.from ? o.from.losses : undefined;
  const whole = stitchStageStates(blobs);
  const differs = modelDifference(whole.model, o.config.model, { state: 'the states', here: "in the run's config" });
  if (differs) throw new Error(`${what}: ${differs}`);
  const step = whole.optimizerStep;
  if (!(step >= 1 && step < t.steps)) throw new Error(`${what}: the states are at optimizer step ${step}; the run's steps are 0–${t.steps - 1}, so it would train nothing from them`);
  const ranges = stageRanges(o.config);
  const states = reshardStitched(whole, blobs, ranges);
  // A Bridge run's replica goes on from its own states (its own AdamW moments), of the same step.
  const own = (r: number) => {
    const mine = stitchStageStates(bridge!.byReplica[r]);
    if (mine.optimizerStep !== step) throw new Error(`${what}: replica ${r}'s states are at optimizer step ${mine.optimizerStep}, replica 0's at ${step}`);
    return reshardStitched(mine, bridge!.byReplica[r], ranges);
  };
  for (let r = 0; r < t.replicas; r++) {
    const mine = r > 0 && bridge ? own(r) : states;
    for (let s = 0; s < t.stages; s++) await o.slots.seed(r, s, ranges[s], step - 1, mine[s].bytes);
  }
  if (bridge) await seedBridgeOuterStep({ config: o.config, handOver: bridge, states, bridges: o.bridges, log: o.log });
  await o.controlLog.writeSnapshot({
    version: CONTROL_SNAPSHOT_VERSION, seq: 0, entries: [],
    replicas: Array.from({ length: t.replicas }, (_, r) => ({ first_step: step, losses: Array.from({ length: step }, (_, i) => losses?.[r]?.[i] ?? null), skipped: [], rolled_back: [] })),
  });
  o.log.info({ from: what, from_stages: blobs.length, layers_by_stage: ranges.map(([b, e]) => e - b), step }, 'run seeded from given stage states: it trains from their optimizer step on');
  return step;
}
