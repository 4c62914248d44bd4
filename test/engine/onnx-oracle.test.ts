// The independent oracle: onnxruntime running the same weights through a
// graph built in TypeScript must give the engine's logits within 1e-4 (fp32).
import test from 'ava';
import { DEFAULT_OPTIMIZER, EngineStage } from '../../native/index.ts';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { buildLlamaOnnx, runOnnxLogits } from '../../runtime/onnx/index.ts';
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { crossEntropy } from '../support/reference-llama.ts';
import { randomTokens } from '../support/random-weights.ts';

const gqa: LlamaConfig = { vocabSize: 97, dModel: 64, nLayers: 3, nHeads: 8, nKvHeads: 2, ffnHidden: 160, maxSeqLen: 32, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false };
const tied: LlamaConfig = { ...gqa, nKvHeads: 8, tiedEmbeddings: true, ropeTheta: 500000 };

const tokens = (n: number, vocab: number, seed: number) => randomTokens(n, vocab, seed);

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// A few training steps first, so the weights are not the symmetric initial ones.
function trained(config: LlamaConfig, stages: number): LocalPipeline {
  const p = new LocalPipeline(config, { ...DEFAULT_OPTIMIZER, lr: 1e-2, warmupSteps: 0 }, stages, 3);
  const B = 2, T = 16;
  for (let step = 0; step < 3; step++) {
    const tk = tokens(B * T, config.vocabSize, 100 + step);
    p.trainStep([{ tokens: tk, targets: tk.map((x) => (x * 7 + 1) % config.vocabSize) }], B, T, 1);
  }
  return p;
}

function weightsOf(stages: readonly EngineStage[]) {
  return (name: string) => {
    for (const s of stages) if (s.tensors().some((t) => t.name === name)) return s.param(name);
    throw new Error(`no stage holds ${name}`);
  };
}

for (const [label, config, stages] of [['GQA, untied head, 1 stage', gqa, 1], ['GQA, untied head, 3 stages', gqa, 3], ['MHA, tied head', tied, 1]] as const) {
  test(`engine logits equal onnxruntime's: ${label}`, async (t) => {
    const pipeline = trained(config, stages);
    const model = buildLlamaOnnx(config, weightsOf(pipeline.stages));
    for (const [B, T] of [[2, 16], [1, 32], [3, 5]]) {
      const tk = tokens(B * T, config.vocabSize, B * 100 + T);
      const ours = pipeline.logits(tk, B, T);
      const theirs = await runOnnxLogits(model, tk, B, T);
      t.is(ours.length, B * T * config.vocabSize);
      const diff = maxAbsDiff(ours, theirs);
      t.true(diff <= 1e-4, `B=${B} T=${T}: max |Δlogit| = ${diff}`);
      // And the loss the last stage computes equals cross-entropy of ORT's logits.
      const targets = tk.map((x) => (x * 5 + 3) % config.vocabSize);
      const loss = pipeline.evalLoss({ tokens: tk, targets }, B, T);
      t.true(Math.abs(loss - crossEntropy(Float64Array.from(theirs), targets)) <= 1e-4);
    }
  });
}
