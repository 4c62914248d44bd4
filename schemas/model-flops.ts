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
