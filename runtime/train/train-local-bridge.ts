// DiLoCo in one process: the reference a run with replicas and the Bridge
// must equal bit for bit. R LocalPipelines train on their own data shards;
// every syncEvery steps each stage's contributions are made as hosts make
// them (runtime/host/bridge-sync.ts: θ, or θsync − θ in MX int8, or its top-k
// with error feedback), put through the same encoding and decoding, combined
// by the same outer optimizer (runtime/bridge/outer-step.ts), and the result
// is every replica's parameters from then on. Which replicas an outer step
// combined is the run's to say (a quorum after a timeout leaves some out), and
// so is when a replica joined: `combined` and `joined` replay them from the
// run's Bridge records and summary.
import { loadTokens, TokenDataset } from '../data/index.ts';
import { hashStages } from '../../native/index.ts';
import type { RunPreset } from '../config/presets.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import { decodeParams, encodeParams, topK } from '../bridge/bridge-payload.ts';
import { outerStep, type Contribution } from '../bridge/outer-step.ts';
import { LocalPipeline } from './local-pipeline.ts';
import { joiningState } from '../bridge/joining-state.ts';
import type { MembershipChange } from '../../schemas/run-records.ts';

export interface LocalBridgeOptions extends RunPreset {
  readonly dataFile?: string;
  /** The replicas whose contributions stage `stage`'s outer step `outer` combined (default: every member). */
  readonly combined?: (stage: number, outer: number) => readonly number[];
  /**
   * Replicas that joined after the start (training.bridge.startReplicas), as the run's summary has them: each
   * trains from step outer·H, from the state a joining replica's slots start from (runtime/bridge/joining-state.ts).
   */
  readonly joined?: readonly MembershipChange[];
  /** Replicas that left before the end (`caravan leave`), as the run's summary has them: each trains to its `step`. */
  readonly left?: readonly MembershipChange[];
}

export interface LocalBridgeSummary {
  readonly losses: Array<Array<number | null>>;  // by replica, by step: null before a replica joined
  readonly outerSteps: number;
  /** Of every replica's stages, in replica order (equal after a final sync); null for one that never joined. */
  readonly paramsSha256ByReplica: Array<string | null>;
}

export async function trainLocalBridge(o: LocalBridgeOptions): Promise<LocalBridgeSummary> {
  const { model, optim, training: t } = o;
  const bridge = t.bridge;
  if (!bridge) throw new Error('trainLocalBridge: the config has no Bridge (training.bridge)');
  const R = t.replicas, H = bridge.syncEvery;
  const dataset = new TokenDataset(await loadTokens(o, o.dataFile));
  const ranges = stageRanges(o);
  const pipelines = Array.from({ length: R }, () => new LocalPipeline(model, optim, ranges, t.seed, t.cpuThreads));
  // By stage: θ and the outer momentum after the last outer step (every replica starts from the same θ).
  const sync: Array<{ theta: Float32Array; momentum: Float32Array }> = pipelines[0].stages.map((s) => ({ theta: s.params().slice(), momentum: new Float32Array(s.paramCount) }));
  // By replica, by stage: what top-k left out of the pseudo-gradients so far.
  const residuals = pipelines.map((p) => p.stages.map((s) => new Float32Array(bridge.payload === 'topk' ? s.paramCount : 0)));
  const losses: Array<Array<number | null>> = pipelines.map(() => []);
  // The step each replica trains from: 0 for those that start the run, never for one that did not join.
  const firstStep = pipelines.map((_, r) => (r < bridge.startReplicas ? 0 : Infinity));
  for (const j of o.joined ?? []) firstStep[j.replica] = j.outer * H;
  // And the last step each trains.
  const lastStep = pipelines.map(() => Infinity);
  for (const l of o.left ?? []) lastStep[l.replica] = l.step;
  const members = (outer: number) => pipelines.map((_, r) => r).filter((r) => firstStep[r] < outer * H && outer * H - 1 <= lastStep[r]);
  let outerSteps = 0;
  for (let step = 0; step < t.steps; step++) {
    pipelines.forEach((pipeline, replica) => {
      if (step > lastStep[replica]) return;
      if (step < firstStep[replica]) { losses[replica].push(null); return; }
      if (step === firstStep[replica] && step > 0) {
        pipeline.stages.forEach((stage, s) => stage.loadState(joiningState(o, s, sync[s].theta, step), `replica ${replica}'s joining state`));
      }
      const microbatches = Array.from({ length: t.microbatches }, (_, microbatch) =>
        dataset.batchAt({ seed: t.seed, replica, shards: R, step, microbatch, batchSize: t.batchSize, seqLen: t.seqLen, split: 'train' }));
      losses[replica].push(pipeline.trainStep(microbatches, t.batchSize, t.seqLen, t.maxGradNorm, t.nonFinite).loss);
    });
    if ((step + 1) % H !== 0) continue;
    const outer = (step + 1) / H;
    outerSteps = outer;
    sync.forEach((before, stage) => {
      const contributions: Contribution[] = members(outer).map((replica) => {
        const pipeline = pipelines[replica];
        const theta = pipeline.stages[stage].params();  // [paramCount], model order
        let values = theta;
        if (bridge.payload !== 'fp32') values = Float32Array.from(theta, (x, i) => before.theta[i] - x);
        if (bridge.payload === 'topk') {
          const residual = residuals[replica][stage];
          for (let i = 0; i < values.length; i++) values[i] += residual[i];
          residual.set(values);
          for (const i of topK(values, bridge.topkFraction).indices) residual[i] = 0;
        }
        const where = `replica ${replica} stage ${stage} outer step ${outer}`;
        return { replica, ...decodeParams(encodeParams(values, bridge.payload, bridge.topkFraction).bytes, { length: values.length, kind: bridge.payload }, where) };
      });
      const used = new Set(o.combined?.(stage, outer) ?? contributions.map((c) => c.replica));
      const next = outerStep({
        sync: before.theta, momentum: before.momentum, contributions: contributions.filter((c) => used.has(c.replica)),
        outer: bridge.outer, lr: bridge.outerLr, mu: bridge.outerMomentum,
      });
      sync[stage] = next;
      for (const replica of members(outer)) pipelines[replica].stages[stage].setParams(next.theta);
    });
  }
  return { losses, outerSteps, paramsSha256ByReplica: pipelines.map((p, r) => (firstStep[r] < Infinity ? hashStages(p.stages) : null)) };
}
