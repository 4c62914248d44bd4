// Layers per stage for stages of different speeds: the split whose slowest
// stage is as fast as can be, so the pipeline's pace (set by its slowest
// stage) is the best any contiguous split allows. A stage's time is its
// forward FLOPs — its layers, and the LM head on the last one (the embedding
// is a lookup) — over its speed; training is three forwards' worth
// (model-flops.ts), so the forward ranks splits as training does. Exact, by dynamic programming over
// (stages, layers): O(S·L²), a few million steps for 16 stages of 90 layers.
// With `fits`, a stage may hold only layers that fit its device's memory
// (schemas/model-memory.ts): the best split among those that fit.
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { HostEntry, SlotRecord } from '../../schemas/run-records.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

/**
 * Layers per stage (each at least one, summing to m.nLayers) for stages of relative speeds `speeds` (any unit:
 * TFLOPS, or a measured rate), minimising the slowest stage's time. Ties go to the split that gives later
 * stages fewer layers, so the result is one function of its inputs. `fits(s, begin, end)`: whether stage s can hold
 * layers [begin, end) (its device's memory); a split none of whose choices fit is refused by name.
 */
export function speedAwareLayers(m: LlamaConfig, seqLen: number, speeds: readonly number[], fits?: (stage: number, begin: number, end: number) => boolean): number[] {
  const S = speeds.length, L = m.nLayers;
  if (S < 1 || S > L) throw new Error(`cannot split ${L} layers into ${S} stages`);
  if (!speeds.every((v) => Number.isFinite(v) && v > 0)) throw new Error(`stage speeds must be positive numbers, got ${JSON.stringify(speeds)}`);
  const time = (s: number, begin: number, end: number) => (!fits || fits(s, begin, end) ? stageForwardFlopsPerToken(m, seqLen, begin, end) / speeds[s] : Infinity);
  // slowest[s][e]: the least possible slowest time of stages 0..s holding layers [0, e); from[s][e]: where stage s begins then.
  const slowest = Array.from({ length: S }, () => new Float64Array(L + 1).fill(Infinity));
  const from = Array.from({ length: S }, () => new Int32Array(L + 1).fill(-1));
  for (let e = 1; e <= L - (S - 1); e++) { slowest[0][e] = time(0, 0, e); from[0][e] = 0; }
  for (let s = 1; s < S; s++) {
    for (let e = s + 1; e <= L - (S - 1 - s); e++) {
      for (let b = e - 1; b >= s; b--) {
        const t = Math.max(slowest[s - 1][b], time(s, b, e));
        if (t < slowest[s][e]) { slowest[s][e] = t; from[s][e] = b; }
      }
    }
  }
  if (slowest[S - 1][L] === Infinity) throw new Error(`no split of ${L} layers into ${S} stages fits the stages' memory: the model needs more memory, or more stages`);
  const counts = new Array<number>(S);
  for (let s = S - 1, e = L; s >= 0; s--) {
    const b = from[s][e];
    counts[s] = e - b;
    e = b;
  }
  return counts;
}

/** The slowest stage's time per token of a split (layers per stage) on stages of speeds `speeds`: the pipeline's pace, in FLOPs over the speeds' unit. */
export function slowestStageTime(m: LlamaConfig, seqLen: number, layers: readonly number[], speeds: readonly number[]): number {
  let begin = 0, slowest = 0;
  layers.forEach((n, s) => {
    slowest = Math.max(slowest, stageForwardFlopsPerToken(m, seqLen, begin, begin + n) / speeds[s]);
    begin += n;
  });
  return slowest;
}

/** The split by the holders' measured speeds (a stage's speed: its slowest replica's holder), and what it would gain. */
export interface MeasuredSplit {
  readonly layers: number[];
  readonly stage_tflops: number[];
  readonly by_speed: number[];
  /** How much faster the slowest stage would be with `by_speed` than with `layers`: 1 when the run's split is already it. */
  readonly pace_gain: number;
}

/** The split the holders' measured speeds call for, or undefined while a slot's holder has no measurement. */
export function measuredSplit(config: RunConfig, hosts: readonly HostEntry[], slots: readonly SlotRecord[]): MeasuredSplit | undefined {
  const { model, training: t } = config;
  const speed = new Map(hosts.map((h) => [h.host, h.tflops]));
  const stageTflops: number[] = [];
  for (let s = 0; s < t.stages; s++) {
    const holders = slots.filter((x) => x.stage === s).map((x) => speed.get(x.host));
    if (holders.length === 0 || holders.some((v) => v === undefined)) return undefined;
    stageTflops.push(Math.min(...(holders as number[])));
  }
  const layers = stageRanges(config).map(([b, e]) => e - b);
  const bySpeed = speedAwareLayers(model, t.seqLen, stageTflops);
  const pace = (split: readonly number[]) => slowestStageTime(model, t.seqLen, split, stageTflops);
  return { layers, stage_tflops: stageTflops, by_speed: bySpeed, pace_gain: pace(layers) / pace(bySpeed) };
}
