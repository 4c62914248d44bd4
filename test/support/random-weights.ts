// Deterministic small random weights for a LlamaConfig, so engine, ONNX and
// reference tests can build the same model from a seed.
import { mulberry32 } from '../../runtime/seeded-random.ts';
import { elementCount, llamaTensorSpecs, type LlamaConfig } from '../../schemas/model-config.ts';

export { mulberry32 };

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
