// A run's stage states (the safetensors each stage writes, local checkpoints
// or final states from the Object Store) stitched into one model: every
// parameter tensor in model order, checked to cover layers [0, L) exactly
// once, all from one model config and one optimizer step.
import { decodeSafeTensors, readStateHeader, type SafeTensor } from '../../native/index.ts';
import { llamaTensorSpecs, validateLlamaConfig, type LlamaConfig } from '../../schemas/model-config.ts';

export interface StitchedModel {
  readonly model: LlamaConfig;
  /** Parameter tensors in model order (transformers' Llama names). */
  readonly tensors: readonly SafeTensor[];
  readonly optimizerStep: number;
}

export interface StageStateBlob {
  readonly source: string;  // a path or object name, for errors
  readonly bytes: Uint8Array;
}

export function stitchStageStates(blobs: readonly StageStateBlob[]): StitchedModel {
  if (blobs.length === 0) throw new Error('no stage states to stitch');
  const stages = blobs.map(({ source, bytes }) => {
    const file = decodeSafeTensors(bytes, source);
    const h = readStateHeader(file.metadata, source);
    return { source, file, begin: h.layerBegin, end: h.layerEnd, model: h.model, modelJson: file.metadata.model, step: h.optimizerStep };
  }).sort((a, b) => a.begin - b.begin);

  const first = stages[0];
  validateLlamaConfig(first.model);
  let next = 0;
  for (const s of stages) {
    if (s.modelJson !== first.modelJson) throw new Error(`${s.source}: a different model config from ${first.source}`);
    if (s.step !== first.step) throw new Error(`${s.source}: optimizer step ${s.step}, but ${first.source} is at step ${first.step} (states of one moment are needed)`);
    if (s.begin !== next) {
      throw new Error(s.begin < next ? `${s.source}: layers [${s.begin}, ${s.end}) overlap the stage before` : `layers [${next}, ${s.begin}) are missing: no stage state holds them`);
    }
    next = s.end;
  }
  if (next !== first.model.nLayers) throw new Error(`layers [${next}, ${first.model.nLayers}) are missing: no stage state holds them`);

  const tensors: SafeTensor[] = [];
  for (const spec of llamaTensorSpecs(first.model)) {
    const holder = stages.find((s) => s.file.tensors.has(spec.name));
    const got = holder?.file.tensors.get(spec.name);
    if (!holder || !got) throw new Error(`tensor ${spec.name} is in no stage state`);
    if (got.shape.length !== spec.shape.length || got.shape.some((n, i) => n !== spec.shape[i])) {
      throw new Error(`${holder.source}: tensor ${spec.name} has shape [${got.shape.join(', ')}], the model needs [${spec.shape.join(', ')}]`);
    }
    tensors.push({ name: spec.name, shape: spec.shape, data: got.data });
  }
  return { model: first.model, tensors, optimizerStep: first.step };
}
