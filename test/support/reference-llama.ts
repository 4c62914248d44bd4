// A plain float64 forward pass of the model in docs/engine.md, for tests only.
// It follows the contract's formulas literally, one position and one head at a
// time, and shares no code with the ONNX graph or the engine, so agreement
// between any two of them means something. Slow on purpose; not for real sizes.

import { headDim, llamaTensorSpecs, type LlamaConfig } from '../../schemas/model-config.ts';

export type ReferenceWeights = (name: string) => ArrayLike<number>;

// y[o] = Σ_i W[o, i] x[i] for W stored [out, in] (y = x · Wᵀ).
function linear(w: ArrayLike<number>, x: Float64Array, out: number): Float64Array {
  const n = x.length;
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let acc = 0;
    for (let i = 0; i < n; i++) acc += w[o * n + i] * x[i];
    y[o] = acc;
  }
  return y;
}

function rmsNorm(x: Float64Array, w: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * inv * w[i]);
}

// Rotates head vector `v` (length hd) at offset `at` in place, for position p.
function rotate(v: Float64Array, at: number, hd: number, p: number, theta: number): void {
  const half = hd / 2;
  for (let i = 0; i < half; i++) {
    const a = p * Math.pow(theta, (-2 * i) / hd);
    const c = Math.cos(a);
    const s = Math.sin(a);
    const lo = v[at + i];
    const hi = v[at + i + half];
    v[at + i] = lo * c - hi * s;
    v[at + i + half] = hi * c + lo * s;
  }
}

/** Logits [B·T·V] for tokens [B, T] row-major. */
export function referenceLlamaLogits(config: LlamaConfig, weights: ReferenceWeights, tokens: ArrayLike<number>, B: number, T: number): Float64Array {
  const { vocabSize: V, dModel: d, nLayers, nHeads: H, nKvHeads: Hkv, ffnHidden: F, normEps: eps, ropeTheta: theta } = config;
  if (tokens.length !== B * T) throw new Error(`reference: ${tokens.length} tokens for B=${B} T=${T}`);
  if (T > config.maxSeqLen) throw new Error(`reference: T=${T} exceeds maxSeqLen ${config.maxSeqLen}`);
  const hd = headDim(config);
  const group = H / Hkv;
  const W = new Map(llamaTensorSpecs(config).map((s) => [s.name, weights(s.name)]));
  const get = (name: string): ArrayLike<number> => {
    const w = W.get(name);
    if (w === undefined) throw new Error(`reference: no tensor ${name}`);
    return w;
  };

  const logits = new Float64Array(B * T * V);
  for (let b = 0; b < B; b++) {
    const embed = get('model.embed_tokens.weight');
    // x[t] is the residual stream at position t, length d.
    const x: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const tok = tokens[b * T + t];
      if (!(tok >= 0 && tok < V)) throw new Error(`reference: token ${tok} out of range [0, ${V})`);
      x.push(Float64Array.from({ length: d }, (_, i) => embed[tok * d + i]));
    }

    for (let l = 0; l < nLayers; l++) {
      const p = `model.layers.${l}`;
      const q: Float64Array[] = [];
      const k: Float64Array[] = [];
      const v: Float64Array[] = [];
      for (let t = 0; t < T; t++) {
        const h = rmsNorm(x[t], get(`${p}.input_layernorm.weight`), eps);
        const qt = linear(get(`${p}.self_attn.q_proj.weight`), h, H * hd);
        const kt = linear(get(`${p}.self_attn.k_proj.weight`), h, Hkv * hd);
        for (let hh = 0; hh < H; hh++) rotate(qt, hh * hd, hd, t, theta);
        for (let hh = 0; hh < Hkv; hh++) rotate(kt, hh * hd, hd, t, theta);
        q.push(qt);
        k.push(kt);
        v.push(linear(get(`${p}.self_attn.v_proj.weight`), h, Hkv * hd));
      }
      for (let t = 0; t < T; t++) {
        const attn = new Float64Array(H * hd);
        for (let hh = 0; hh < H; hh++) {
          const kv = Math.floor(hh / group);
          // Causal: position t attends to positions 0..t only.
          const scores = new Float64Array(t + 1);
          for (let s = 0; s <= t; s++) {
            let dot = 0;
            for (let i = 0; i < hd; i++) dot += q[t][hh * hd + i] * k[s][kv * hd + i];
            scores[s] = dot / Math.sqrt(hd);
          }
          const max = Math.max(...scores);
          const probs = scores.map((z) => Math.exp(z - max));
          const sum = probs.reduce((a, w) => a + w, 0);
          for (let s = 0; s <= t; s++) {
            for (let i = 0; i < hd; i++) attn[hh * hd + i] += (probs[s] / sum) * v[s][kv * hd + i];
          }
        }
        const o = linear(get(`${p}.self_attn.o_proj.weight`), attn, d);
        for (let i = 0; i < d; i++) x[t][i] += o[i];
      }
      for (let t = 0; t < T; t++) {
        const h = rmsNorm(x[t], get(`${p}.post_attention_layernorm.weight`), eps);
        const gate = linear(get(`${p}.mlp.gate_proj.weight`), h, F);
        const up = linear(get(`${p}.mlp.up_proj.weight`), h, F);
        const act = gate.map((z, i) => (z / (1 + Math.exp(-z))) * up[i]);
        const down = linear(get(`${p}.mlp.down_proj.weight`), act, d);
        for (let i = 0; i < d; i++) x[t][i] += down[i];
      }
    }

    const head = get(config.tiedEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
    for (let t = 0; t < T; t++) {
      const h = rmsNorm(x[t], get('model.norm.weight'), eps);
      logits.set(linear(head, h, V), (b * T + t) * V);
    }
  }
  return logits;
}

/** Mean cross-entropy over all positions; logits are [N·V] for N = targets.length. */
export function crossEntropy(logits: ArrayLike<number>, targets: ArrayLike<number>): number {
  const N = targets.length;
  const V = logits.length / N;
  if (!Number.isInteger(V) || V <= 0) throw new Error(`crossEntropy: ${logits.length} logits do not split into ${N} rows`);
  let total = 0;
  for (let n = 0; n < N; n++) {
    const target = targets[n];
    if (!(target >= 0 && target < V)) throw new Error(`crossEntropy: target ${target} at ${n} out of range [0, ${V})`);
    let max = -Infinity;
    for (let j = 0; j < V; j++) max = Math.max(max, logits[n * V + j]);
    let sum = 0;
    for (let j = 0; j < V; j++) sum += Math.exp(logits[n * V + j] - max);
    total += max + Math.log(sum) - logits[n * V + target];
  }
  return total / N;
}
