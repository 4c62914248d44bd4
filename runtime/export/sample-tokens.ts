// Choosing the next token from logits: greedy at temperature 0, otherwise
// softmax at the temperature over the top-k, then the top-p nucleus, drawn
// with a seeded generator so a seed gives the same text every time.

export interface SamplingOptions {
  readonly temperature: number;  // 0: greedy
  readonly topK?: number;        // keep the k most likely (0 or absent: all)
  readonly topP?: number;        // keep the smallest set holding this much probability (1 or absent: all)
}

/** logits[V] → a token id; `random` draws uniformly from [0, 1). Ties go to the lower id. */
export function sampleToken(logits: Float32Array, options: SamplingOptions, random: () => number): number {
  const V = logits.length;
  let best = 0;
  for (let i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
  if (options.temperature === 0) return best;
  const order = Array.from({ length: V }, (_, i) => i).sort((a, b) => logits[b] - logits[a] || a - b);
  const k = options.topK && options.topK > 0 ? Math.min(options.topK, V) : V;
  const kept = order.slice(0, k);
  const weights = kept.map((i) => Math.exp((logits[i] - logits[best]) / options.temperature));
  let total = weights.reduce((s, w) => s + w, 0);
  const p = options.topP ?? 1;
  if (p < 1) {
    let mass = 0;
    let n = 0;
    while (n < kept.length && mass < p * total) mass += weights[n++];
    kept.length = weights.length = Math.max(n, 1);
    total = weights.reduce((s, w) => s + w, 0);
  }
  let r = random() * total;
  for (let i = 0; i < kept.length; i++) {
    r -= weights[i];
    if (r < 0) return kept[i];
  }
  return kept[kept.length - 1];
}
