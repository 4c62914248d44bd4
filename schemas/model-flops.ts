// Model FLOPs per token, PaLM's convention (appendix B): 2 per matmul
// weight per token forward, plus 2·2·T·d per layer for q·kᵀ and p·v over the
// full sequence; training counts three times the forward.
import type { LlamaConfig } from './model-config.ts';

export function forwardFlopsPerToken(m: LlamaConfig, T: number): number {
  const hd = m.dModel / m.nHeads;
  const perLayer = m.dModel * m.nHeads * hd * 2 + m.dModel * m.nKvHeads * hd * 2 + 3 * m.dModel * m.ffnHidden;
  const bottlenecks = (m.bottlenecks ?? []).reduce((n, b) => n + 2 * m.dModel * b.width, 0);  // down and up
  const matmulParams = m.nLayers * perLayer + bottlenecks + m.vocabSize * m.dModel;  // + the head
  return 2 * matmulParams + m.nLayers * 4 * T * m.dModel;
}

export function trainFlopsPerToken(m: LlamaConfig, T: number): number {
  return 3 * forwardFlopsPerToken(m, T);
}

/** Forward FLOPs per token of layers [begin, end) of the model, with the LM head when the slice ends the model (a pipeline stage). */
export function stageForwardFlopsPerToken(m: LlamaConfig, T: number, begin: number, end: number): number {
  const hd = m.dModel / m.nHeads;
  const perLayer = m.dModel * m.nHeads * hd * 2 + m.dModel * m.nKvHeads * hd * 2 + 3 * m.dModel * m.ffnHidden;
  const layers = end - begin;
  const head = end === m.nLayers ? m.vocabSize * m.dModel : 0;
  return 2 * (layers * perLayer + head) + layers * 4 * T * m.dModel;
}

/**
 * Backward FLOPs per token of layers [begin, end), split as zero-bubble
 * schedules run them (actors/pipeline-schedule.ts): `input` is B, what the
 * previous stage waits for; `weight` is W, what only the optimizer needs.
 *
 * A matmul y = x·A (A of n weights) costs 2n per token forward; its backward
 * is two matmuls of the same size, dx = dy·Aᵀ (2n, input) and dA = xᵀ·dy
 * (2n, weight). The attention products q·kᵀ and p·v have no weights: each of
 * the two has two input gradients (dq and dk, dp and dv), 2 · 4·T·d per
 * layer per token, all input. The LM head is a matmul on the last stage like
 * any other; the embedding is a lookup (no forward FLOPs) and its weight
 * gradient a scatter-add of the first stage's input gradient, counted by
 * neither, as in the forward. Norms and activations are not counted (PaLM).
 * So input + weight = 2 × stageForwardFlopsPerToken, as trainFlopsPerToken
 * has it, and input − weight = 8·T·d per layer.
 */
export function stageBackwardFlopsPerToken(m: LlamaConfig, T: number, begin: number, end: number): { input: number; weight: number } {
  const attention = (end - begin) * 4 * T * m.dModel;  // forward q·kᵀ and p·v
  const matmul = stageForwardFlopsPerToken(m, T, begin, end) - attention;  // 2 per weight
  return { input: matmul + 2 * attention, weight: matmul };
}

/**
 * Per-stage op costs for a pipeline schedule, in FLOPs per microbatch of
 * `tokens` tokens (divide by a rate for time): F the forward, B and W the
 * backward's two halves. `ranges` are the stages' [begin, end) layers
 * (native splitLayers). Structurally the schedule's OpCosts.
 */
export function opCostsFromFlops(m: LlamaConfig, T: number, ranges: readonly (readonly [number, number])[], tokens = T): Array<{ F: number; B: number; W: number }> {
  return ranges.map(([begin, end]) => {
    const { input, weight } = stageBackwardFlopsPerToken(m, T, begin, end);
    return { F: stageForwardFlopsPerToken(m, T, begin, end) * tokens, B: input * tokens, W: weight * tokens };
  });
}
