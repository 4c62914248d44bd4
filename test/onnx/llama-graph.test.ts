// The ONNX graph from buildLlamaOnnx, run on onnxruntime, against the float64
// reference forward: if these agree, the graph is a trustworthy oracle for the
// engine. Tolerance 1e-4 max abs on logits of order 1 (fp32 accumulation over
// d ≤ 48 leaves errors near 1e-6; a convention mistake gives errors near 1e-1).

import test from 'ava';
import { buildLlamaOnnx, LLAMA_ONNX_OPSET, type LlamaConfig } from '../../runtime/onnx/index.ts';
import { llamaTensorSpecs } from '../../schemas/model-config.ts';
import { onnx } from '../../runtime/onnx/onnx-graph.ts';
import { openOnnxSession, runOnnxLogits, runSessionLogits } from '../../runtime/onnx/onnx-logits.ts';
import { crossEntropy, referenceLlamaLogits } from '../support/reference-llama.ts';
import { randomLlamaWeights, randomTokens } from '../support/random-weights.ts';

const TOLERANCE = 1e-4;

const gqa: LlamaConfig = {
  vocabSize: 37,
  dModel: 32,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  ffnHidden: 48,
  maxSeqLen: 16,
  ropeTheta: 10000,
  normEps: 1e-5,
  tiedEmbeddings: false,
};

const mhaTied: LlamaConfig = { ...gqa, nKvHeads: 4, tiedEmbeddings: true, ropeTheta: 500000 };

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

function getter(weights: Map<string, Float32Array>): (name: string) => Float32Array {
  return (name) => {
    const w = weights.get(name);
    if (w === undefined) throw new Error(`no tensor ${name}`);
    return w;
  };
}

for (const [label, config] of [['GQA H=4 Hkv=2, untied', gqa], ['MHA H=Hkv=4, tied embeddings', mhaTied]] as const) {
  test(`ORT logits match the float64 reference: ${label}`, async (t) => {
    const weights = getter(randomLlamaWeights(config, 42));
    const model = buildLlamaOnnx(config, weights);
    const session = await openOnnxSession(model);
    try {
      // Several (B, T) through one session: the dims are dynamic, and T = maxSeqLen
      // takes the rotary tables and mask to their edge.
      for (const [B, T] of [[2, 7], [1, 1], [1, config.maxSeqLen]]) {
        const tokens = randomTokens(B * T, config.vocabSize, B * 100 + T);
        const got = await runSessionLogits(session, tokens, B, T);
        const want = referenceLlamaLogits(config, weights, tokens, B, T);
        t.is(got.length, B * T * config.vocabSize);
        const diff = maxAbsDiff(got, want);
        t.true(diff < TOLERANCE, `B=${B} T=${T}: max abs diff ${diff.toExponential(2)}`);
        // Guard against a vacuous pass (all-zero or constant logits).
        t.true(Math.max(...want.map(Math.abs)) > 0.05, `B=${B} T=${T}: reference logits are near zero`);
        const targets = randomTokens(B * T, config.vocabSize, 9);
        t.true(Math.abs(crossEntropy(got, targets) - crossEntropy(want, targets)) < TOLERANCE);
      }
    } finally {
      await session.release();
    }
  });
}

test('optimised and unoptimised sessions agree (ORT fusions keep the semantics)', async (t) => {
  const weights = getter(randomLlamaWeights(gqa, 3));
  const model = buildLlamaOnnx(gqa, weights);
  const tokens = randomTokens(2 * 7, gqa.vocabSize, 5);
  const all = await runOnnxLogits(model, tokens, 2, 7, { graphOptimizationLevel: 'all' });
  const none = await runOnnxLogits(model, tokens, 2, 7, { graphOptimizationLevel: 'disabled' });
  t.true(maxAbsDiff(all, none) < 1e-5);
});

test('the graph carries checkpoint tensors under their names and shapes, in model order', (t) => {
  for (const config of [gqa, mhaTied]) {
    const decoded = onnx.ModelProto.decode(buildLlamaOnnx(config, getter(randomLlamaWeights(config, 1))));
    t.is(Number(decoded.opsetImport[0]?.version), LLAMA_ONNX_OPSET);
    const graph = decoded.graph ?? t.fail('no graph');
    const inits = new Map((graph.initializer ?? []).map((i) => [i.name ?? '', (i.dims ?? []).map(Number)]));
    const specs = llamaTensorSpecs(config);
    const checkpointNames = [...inits.keys()].filter((n) => n.startsWith('model.layers') || n.endsWith('.weight'));
    t.deepEqual(checkpointNames, specs.map((s) => s.name));
    for (const spec of specs) t.deepEqual(inits.get(spec.name), [...spec.shape], spec.name);
    t.is(inits.has('lm_head.weight'), !config.tiedEmbeddings);
    t.deepEqual((graph.input ?? []).map((i) => i.name), ['input_ids']);
    t.deepEqual((graph.output ?? []).map((o) => o.name), ['logits']);
  }
});

test('a wrong weight shape names the tensor and both shapes', (t) => {
  const weights = randomLlamaWeights(gqa, 1);
  // k_proj sized as if there were no GQA (Hkv = H).
  const wrong = (name: string) => (name === 'model.layers.1.self_attn.k_proj.weight' ? new Float32Array(32 * 32) : weights.get(name)!);
  t.throws(() => buildLlamaOnnx(gqa, wrong), {
    message: 'buildLlamaOnnx: model.layers.1.self_attn.k_proj.weight: expected shape [16, 32] (512 values), got 1024 values',
  });

  const shaped = (name: string) =>
    name === 'model.layers.0.mlp.down_proj.weight'
      ? { data: weights.get(name)!, shape: [48, 32] } // stored [in, out] by mistake
      : weights.get(name)!;
  t.throws(() => buildLlamaOnnx(gqa, shaped), {
    message: 'buildLlamaOnnx: model.layers.0.mlp.down_proj.weight: expected shape [32, 48], got [48, 32]',
  });

  t.throws(() => buildLlamaOnnx(gqa, getter(new Map())), { message: /buildLlamaOnnx: reading model\.embed_tokens\.weight: no tensor/ });
  t.throws(() => buildLlamaOnnx({ ...gqa, nKvHeads: 3 }, getter(weights)), { message: /nHeads 4 is not divisible by nKvHeads 3/ });
});

test('runOnnxLogits rejects a token count that does not match B × T', async (t) => {
  const model = buildLlamaOnnx(gqa, getter(randomLlamaWeights(gqa, 1)));
  await t.throwsAsync(runOnnxLogits(model, new Int32Array(5), 2, 3), { message: /5 tokens for batch 2 × seq 3/ });
});
