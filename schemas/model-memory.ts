// What training one pipeline stage holds in device memory, for splitting
// layers over devices that differ in memory as well as speed. An estimate of
// the usual setup on a GPU, not of this repository's CPU engine:
// - mixed-precision AdamW, 16 bytes a parameter: bf16 weights and gradients
//   (2 + 2), fp32 master weights (4) and two fp32 moments (8);
// - activations with full recomputation: every layer keeps its bf16 input
//   (2·tokens·d bytes) for each microbatch in flight, and the layer being
//   recomputed its whole activations once: 34·tokens·d bytes, Korthikanti et
//   al.'s count with flash attention (no T² term);
// - under 1F1B, stage s of S has at most min(M, S − s) microbatches in flight.
// Buffers, the allocator's slack and the CUDA context are not counted: leave
// a margin below the device's memory.
import type { LlamaConfig } from './model-config.ts';
import type { RunConfig, StageDevice } from './run-config.ts';

const OPTIMIZER_BYTES_PER_PARAM = 16;
const RECOMPUTE_BYTES_PER_TOKEN_DIM = 34;

/** Parameters of layers [begin, end), with the embedding on the first stage and the final norm and LM head on the last. */
export function stageParams(m: LlamaConfig, begin: number, end: number): number {
  const hd = m.dModel / m.nHeads;
  const perLayer = m.dModel * m.nHeads * hd * 2 + m.dModel * m.nKvHeads * hd * 2 + 3 * m.dModel * m.ffnHidden + 2 * m.dModel;
  const embedding = begin === 0 ? m.vocabSize * m.dModel : 0;
  // A tied head is the embedding: on a one-stage split it is held once; split, the last stage holds a copy.
  const head = end === m.nLayers ? m.dModel + (m.tiedEmbeddings && begin === 0 ? 0 : m.vocabSize * m.dModel) : 0;
  return (end - begin) * perLayer + embedding + head;
}

/**
 * Bytes stage `stage` of `stages` (layers [begin, end)) holds while training microbatches of `microbatchTokens`
 * tokens, `microbatches` a step, under 1F1B.
 */
export function stageTrainingBytes(m: LlamaConfig, o: { begin: number; end: number; stage: number; stages: number; microbatches: number; microbatchTokens: number }): number {
  const inFlight = Math.min(o.microbatches, o.stages - o.stage);
  const layerInputs = (o.end - o.begin) * inFlight * 2 * o.microbatchTokens * m.dModel;
  const recomputed = RECOMPUTE_BYTES_PER_TOKEN_DIM * o.microbatchTokens * m.dModel;
  return OPTIMIZER_BYTES_PER_PARAM * stageParams(m, o.begin, o.end) + layerInputs + recomputed;
}

/** What each stage would hold training (GiB, schemas/model-memory.ts) with `layers` per stage, beside its device's memory where known. */
export function stageMemory(config: RunConfig, layers: readonly number[], devices: ReadonlyArray<Pick<StageDevice, 'memoryGiB'>>): Array<{ need_gib: number; have_gib: number | null }> {
  const t = config.training;
  let begin = 0;
  return layers.map((n, stage) => {
    const bytes = stageTrainingBytes(config.model, { begin, end: begin + n, stage, stages: layers.length, microbatches: t.microbatches, microbatchTokens: t.batchSize * t.seqLen });
    begin += n;
    return { need_gib: +(bytes / 2 ** 30).toFixed(1), have_gib: devices[stage]?.memoryGiB ?? null };
  });
}
