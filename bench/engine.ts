// `npm run bench -- engine`: the native engine's forward beside
// onnxruntime-node's on the same weights and batch (alternated, medians),
// training throughput in achieved GFLOP/s, and a plain cblas_sgemm of the
// model's main GEMM shape as this machine's practical fp32 peak.
import { engineInfo, sgemmGflops, type EngineStage } from '../native/index.ts';
import { buildLlamaOnnx, openOnnxSession, runSessionLogits } from '../runtime/onnx/index.ts';
import { LocalPipeline } from '../runtime/train/local-pipeline.ts';
import { preset } from '../runtime/config/presets.ts';
import { forwardFlopsPerToken, trainFlopsPerToken } from '../schemas/model-flops.ts';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function seconds<T>(f: () => T): [number, T] {
  const t0 = performance.now();
  const out = f();
  return [(performance.now() - t0) / 1000, out];
}

export async function benchEngine(args: string[]): Promise<Record<string, unknown>> {
  const reps = Number(args.find((a) => a.startsWith('--reps='))?.slice(7) ?? 5);
  const { model, optim, training } = preset('bench');
  const B = training.batchSize, T = training.seqLen, N = B * T;
  const pipeline = new LocalPipeline(model, optim, 1, training.seed);
  const stage: EngineStage = pipeline.stages[0];
  const tokens = Int32Array.from({ length: N }, (_, i) => (i * 2654435761) % model.vocabSize >>> 0);
  const targets = Int32Array.from({ length: N }, (_, i) => (i * 40503 + 1) % model.vocabSize);
  console.log(`engine bench: d=${model.dModel} L=${model.nLayers} H=${model.nHeads} F=${model.ffnHidden} V=${model.vocabSize}, B=${B} T=${T}, ${reps} reps`);
  console.log(`engine: ${JSON.stringify(engineInfo())}`);

  const session = await openOnnxSession(buildLlamaOnnx(model, (name) => stage.param(name)), { graphOptimizationLevel: 'all' });
  // Warm both, and check they compute the same thing before timing them.
  const ours = pipeline.logits(tokens, B, T);
  const theirs = await runSessionLogits(session, tokens, B, T);
  let maxDiff = 0;
  for (let i = 0; i < ours.length; i++) maxDiff = Math.max(maxDiff, Math.abs(ours[i] - theirs[i]));
  const nativeTimes: number[] = [], ortTimes: number[] = [];
  for (let r = 0; r < reps; r++) {
    nativeTimes.push(seconds(() => pipeline.logits(tokens, B, T))[0]);
    const t0 = performance.now();
    await runSessionLogits(session, tokens, B, T);
    ortTimes.push((performance.now() - t0) / 1000);
  }
  await session.release();
  const nativeFwd = N / median(nativeTimes), ortFwd = N / median(ortTimes);
  console.log(`forward: native ${nativeFwd.toFixed(0)} tok/s, onnxruntime ${ortFwd.toFixed(0)} tok/s (max |Δlogit| ${maxDiff.toExponential(2)})`);

  pipeline.trainStep([{ tokens, targets }], B, T, training.maxGradNorm);  // warm-up
  const stepTimes = Array.from({ length: reps }, () => seconds(() => pipeline.trainStep([{ tokens, targets }], B, T, training.maxGradNorm))[0]);
  const trainTokS = N / median(stepTimes);
  const trainGflops = (trainTokS * trainFlopsPerToken(model, T)) / 1e9;
  // The model's largest GEMM: [B·T, d] · [d, F].
  const sgemm = median(Array.from({ length: reps }, () => sgemmGflops(N, model.ffnHidden, model.dModel, 5)));
  console.log(`train: ${trainTokS.toFixed(0)} tok/s = ${trainGflops.toFixed(1)} GFLOP/s; plain sgemm ${N}×${model.dModel}·${model.dModel}×${model.ffnHidden}: ${sgemm.toFixed(1)} GFLOP/s (ratio ${(trainGflops / sgemm).toFixed(2)})`);
  return {
    bench: 'engine',
    config: { ...model, batch: B, seq: T },
    native_fwd_tok_s: Math.round(nativeFwd),
    ort_fwd_tok_s: Math.round(ortFwd),
    fwd_ratio: +(nativeFwd / ortFwd).toFixed(3),
    native_fwd_gflops: +((nativeFwd * forwardFlopsPerToken(model, T)) / 1e9).toFixed(1),
    train_tok_s: Math.round(trainTokS),
    train_gflops: +trainGflops.toFixed(1),
    sgemm_gflops: +sgemm.toFixed(1),
    train_vs_sgemm: +(trainGflops / sgemm).toFixed(3),
    fwd_max_abs_diff: maxDiff,
    reps,
  };
}
