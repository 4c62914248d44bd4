// Which layers each pipeline stage holds, and on which simulated device it
// runs. A run's `training.stageLayers` gives a count per stage (chosen, for
// hosts of different speeds, by runtime/config/speed-split.ts); without it
// the layers are split as evenly as possible. The engine's results do not
// depend on the split, so neither do the weights: only the pace does.
import type { RunConfig, SyntheticCompute } from './run-config.ts';

/** Layer ranges of `stages` stages, as even as possible, earlier stages taking the remainder. */
export function splitLayers(nLayers: number, stages: number): Array<[number, number]> {
  if (!Number.isSafeInteger(stages) || stages < 1 || stages > nLayers) {
    throw new Error(`cannot split ${nLayers} layers into ${stages} stages: stages must be an integer in [1, ${nLayers}]`);
  }
  return layerRanges(Array.from({ length: stages }, (_, s) => Math.floor(nLayers / stages) + (s < nLayers % stages ? 1 : 0)));
}

/** [begin, end) of each stage holding `counts[s]` layers, in order. */
export function layerRanges(counts: readonly number[]): Array<[number, number]> {
  let begin = 0;
  return counts.map((n) => [begin, (begin += n)] as [number, number]);
}

/** The run's stages' layer ranges: its `stageLayers`, else the even split. */
export function stageRanges(config: Pick<RunConfig, 'model' | 'training'>): Array<[number, number]> {
  const t = config.training;
  return t.stageLayers ? layerRanges(t.stageLayers) : splitLayers(config.model.nLayers, t.stages);
}

/** The simulated device of stage `s`: its entry in `stageDevices`, else the run's one device. */
export function stageDevice(synthetic: SyntheticCompute, s: number): SyntheticCompute {
  const own = synthetic.stageDevices?.[s];
  return own ? { ...synthetic, device: own.device, peakTflops: own.peakTflops, memoryGiB: own.memoryGiB } : synthetic;
}
