// Deterministic small random weights for a LlamaConfig, so engine, ONNX and
// reference tests can build the same model from a seed.

import { elementCount, llamaTensorSpecs, type LlamaConfig } from '../../schemas/model-config.ts';

/** mulberry32: tiny, seedable, and good enough for test weights. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Matrices uniform in [-scale, scale); norm weights 1 ± scale, so the scale is
 * exercised without driving activations toward zero layer after layer.
 */
export function randomLlamaWeights(config: LlamaConfig, seed = 1, scale = 0.1): Map<string, Float32Array> {
  const rand = mulberry32(seed);
  const weights = new Map<string, Float32Array>();
  for (const spec of llamaTensorSpecs(config)) {
    const isNorm = spec.shape.length === 1;
    const data = new Float32Array(elementCount(spec.shape));
    for (let i = 0; i < data.length; i++) data[i] = (isNorm ? 1 : 0) + (2 * rand() - 1) * scale;
    weights.set(spec.name, data);
  }
  return weights;
}

export function randomTokens(n: number, vocabSize: number, seed = 7): Int32Array {
  const rand = mulberry32(seed);
  return Int32Array.from({ length: n }, () => Math.floor(rand() * vocabSize));
}
