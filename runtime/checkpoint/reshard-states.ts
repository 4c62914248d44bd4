// Stage states re-sharded for another split of the layers: the states of one
// moment (every layer once, one optimizer step) taken apart by tensor and put
// together again as one state per new stage, each with its parameters and
// both AdamW moments and the header a stage of that layer range loads.
// Nothing is computed: the engine's results do not depend on the split, so a
// run that goes on from re-sharded states ends with the weights it would have
// had unsplit (test/checkpoint/reshard-states.test.ts).
import { decodeSafeTensors, encodeSafeTensors, type SafeTensor } from '../../native/index.ts';
import { llamaTensorSpecs, type LlamaConfig } from '../../schemas/model-config.ts';
import { stitchStageStates, type StageStateBlob, type StitchedModel } from '../export/stitch-stages.ts';

/** A state's tensor-name prefixes: the parameters, then AdamW's first and second moments. */
const PREFIXES = ['', 'optimizer.exp_avg.', 'optimizer.exp_avg_sq.'] as const;

/** Layers [begin, end) of one stage. */
type LayerRange = readonly [number, number];

export interface ReshardedState {
  readonly layers: LayerRange;
  readonly bytes: Uint8Array;
}

/** `blobs`, the states of every stage at one step, as one state per range of `ranges` (which must cover the layers in order). */
export function reshardStageStates(blobs: readonly StageStateBlob[], ranges: readonly LayerRange[]): ReshardedState[] {
  // Stitching checks that the states are of one model and one step, and cover every layer once.
  return reshardStitched(stitchStageStates(blobs), blobs, ranges);
}

/** reshardStageStates for a caller that has stitched `blobs` already (into `whole`). */
export function reshardStitched(whole: StitchedModel, blobs: readonly StageStateBlob[], ranges: readonly LayerRange[]): ReshardedState[] {
  const model = whole.model as LlamaConfig;
  if (model.bottlenecks?.length) throw new Error('a model with residual bottlenecks is not re-sharded: each bottleneck belongs to the stage boundary it crosses');
  if (model.tiedEmbeddings && ranges.length > 1) throw new Error('a model with tied embeddings trains on one stage only');
  checkRanges(ranges, model.nLayers);
  const files = blobs.map(({ source, bytes }) => ({ source, file: decodeSafeTensors(bytes, source) }));
  const find = (name: string): SafeTensor => {
    for (const { file } of files) {
      const t = file.tensors.get(name);
      if (t) return { name, shape: t.shape, data: t.data };
    }
    throw new Error(`tensor ${name} is in no stage state`);
  };
  const meta = files[0].file.metadata;
  return ranges.map(([begin, end], s) => {
    const names = stageTensorNames(model, begin, end, s === 0, s === ranges.length - 1);
    const tensors = PREFIXES.flatMap((prefix) => names.map((name) => find(prefix + name)));
    return { layers: [begin, end], bytes: encodeSafeTensors(tensors, { ...meta, layer_begin: String(begin), layer_end: String(end) }) };
  });
}

/** The parameter tensors a stage of layers [begin, end) holds: the embedding on the first, the final norm and head on the last. */
function stageTensorNames(model: LlamaConfig, begin: number, end: number, first: boolean, last: boolean): string[] {
  return llamaTensorSpecs(model).map((t) => t.name).filter((name) => {
    const layer = /^model\.layers\.(\d+)\./.exec(name);
    if (layer) return Number(layer[1]) >= begin && Number(layer[1]) < end;
    if (name === 'model.embed_tokens.weight') return first;
    return last;  // model.norm.weight, lm_head.weight
  });
}

function checkRanges(ranges: readonly LayerRange[], nLayers: number): void {
  if (ranges.length === 0) throw new Error('no stages to re-shard into');
  let next = 0;
  for (const [begin, end] of ranges) {
    if (begin !== next || !(end > begin)) throw new Error(`the new split's ranges must cover layers [0, ${nLayers}) in order, each non-empty: got ${ranges.map(([b, e]) => `[${b}, ${e})`).join(' ')}`);
    next = end;
  }
  if (next !== nLayers) throw new Error(`the new split covers layers [0, ${next}), the model has ${nLayers}`);
}
