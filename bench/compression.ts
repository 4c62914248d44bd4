// `npm run bench -- compression`: what a stage boundary costs on the wire and
// what compressing it costs in quality. Trains the `wide` preset (d = 256,
// 2 stages) for the same token budget without a bottleneck and with
// bottlenecks of several widths, with and without MX int8, and measures the
// real frames crossing the boundary (encodeFrame with the codecs a run uses)
// against the activation in bf16 (2 bytes × tokens × d), so that sending fp32
// as bf16 would not count as compression.
//
// Quality runs use the in-process pipeline: the same engine calls a NATS run
// makes (test/pipeline/equivalence.test.ts holds them bitwise equal).
import { createTokenizer, TokenDataset, tokenizeCorpus } from '../runtime/data/index.ts';
import { boundaryCodecs, FRAME_CODECS } from '../runtime/codecs/index.ts';
import { LocalPipeline } from '../runtime/train/local-pipeline.ts';
import { preset } from '../runtime/config/presets.ts';
import { splitLayers } from '../native/index.ts';
import type { LlamaConfig } from '../schemas/model-config.ts';
import { decodeFrame, encodeFrame, type FrameKind } from '../schemas/tensor-frame.ts';

interface Variant {
  readonly name: string;
  readonly width?: number;                 // bottleneck k at the boundary; none: plain model
  readonly quant: 'none' | 'mxint8';
  readonly embed: boolean;                 // the receiving stage re-embeds the tokens
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const arg = (args: string[], name: string, fallback: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback);

export async function benchCompression(args: string[]): Promise<Record<string, unknown>> {
  const base = preset('wide');
  const steps = arg(args, 'steps', base.training.steps);
  const evalEvery = arg(args, 'eval-every', 50);
  const valBatchCount = arg(args, 'val-batches', 16);
  const reps = arg(args, 'reps', 200);
  const t = { ...base.training, steps, seed: arg(args, 'seed', base.training.seed) };
  const { dModel: d } = base.model;
  const B = t.batchSize, T = t.seqLen, M = t.microbatches;
  const at = splitLayers(base.model.nLayers, t.stages)[1][0];  // the one boundary of 2 stages
  const only = args.find((a) => a.startsWith('--only='))?.slice(7).split(',');
  const variants: Variant[] = [
    { name: 'raw', quant: 'none' as const, embed: false },
    ...[8, 16, 32, 64, 128].map((r) => ({ name: `k=d/${r}`, width: d / r, quant: 'mxint8' as const, embed: true })),
    { name: 'k=d/64 no-embed', width: d / 64, quant: 'mxint8' as const, embed: false },
    { name: 'k=d/64 fp32 no-embed', width: d / 64, quant: 'none' as const, embed: false },
  ].filter((v) => !only || only.includes(v.name));
  const dataset = new TokenDataset(tokenizeCorpus(createTokenizer(t.tokenizer)));
  const valBatches = dataset.valBatches(B, T, valBatchCount);
  const bf16Bytes = 2 * B * T * d;
  console.log(`compression bench: d=${d} L=${base.model.nLayers}, ${t.stages} stages (boundary at layer ${at}), ${steps} steps of ${M}×${B}×${T} tokens, val on ${valBatchCount}×${B}×${T}`);
  console.log(`the activation in bf16: ${bf16Bytes} bytes a microbatch`);

  const results = [];
  for (const v of variants) {
    const model: LlamaConfig = v.width === undefined
      ? base.model
      : { ...base.model, bottlenecks: [{ at, width: v.width }], bottleneckQuant: v.quant, bottleneckEmbed: v.embed };
    const pipeline = new LocalPipeline(model, { ...base.optim, totalSteps: steps }, t.stages, t.seed, t.cpuThreads);
    const validate = () => valBatches.reduce((s, b) => s + pipeline.evalLoss(b, B, T), 0) / valBatches.length;
    const curve: Array<{ step: number; tokens: number; seconds: number; val_loss: number }> = [];
    const began = performance.now();
    let trainSeconds = 0;
    for (let step = 0; step < steps; step++) {
      const mbs = Array.from({ length: M }, (_, microbatch) => dataset.batchAt({ seed: t.seed, replica: 0, step, microbatch, batchSize: B, seqLen: T, split: 'train' }));
      const t0 = performance.now();
      pipeline.trainStep(mbs, B, T, t.maxGradNorm);
      trainSeconds += (performance.now() - t0) / 1000;
      if ((step + 1) % evalEvery === 0 || step + 1 === steps) {
        curve.push({ step: step + 1, tokens: (step + 1) * M * B * T, seconds: +trainSeconds.toFixed(2), val_loss: +validate().toFixed(4) });
      }
    }
    const valLoss = curve[curve.length - 1].val_loss;

    // The frames this boundary sends, from the trained model: its activation
    // forward and its gradient backward, with the codecs a run would use.
    const [sender, receiver] = pipeline.stages;
    const batch = valBatches[0];
    const act = sender.forwardTrain(0, batch.tokens, B, T) as Float32Array;
    receiver.forwardTrain(0, act, B, T, batch.targets, batch.tokens);
    const grad = receiver.backward(0, null)!;
    sender.backward(0, grad);
    sender.zeroGrad();
    receiver.zeroGrad();
    const width = v.width ?? d;
    const codecs = boundaryCodecs(model, at, t.lz4);
    const frame = (kind: FrameKind, data: Float32Array) => ({ run: 'bench', replica: 0, stage: kind === 'act' ? 1 : 0, step: 0, microbatch: 0, kind, shape: [B, T, width], data });
    const actFrame = encodeFrame(frame('act', act), codecs);
    const gradFrame = encodeFrame(frame('grad', grad), codecs);
    const expect = { run: 'bench', replica: 0, stage: 1, kind: 'act' as const, width, maxSeqLen: T, codecs: FRAME_CODECS };
    const decoded = decodeFrame(actFrame, expect);
    const lossless = decoded.data.every((x, i) => Object.is(x, act[i]) || (x === 0 && act[i] === 0));
    const encodeTimes: number[] = [], decodeTimes: number[] = [];
    for (let r = 0; r < reps; r++) {
      const t0 = performance.now();
      const bytes = encodeFrame(frame('act', act), codecs);
      const t1 = performance.now();
      decodeFrame(bytes, expect);
      decodeTimes.push(performance.now() - t1);
      encodeTimes.push(t1 - t0);
    }
    const f32Bytes = act.byteLength;
    const result = {
      variant: v.name,
      width,
      quant: v.quant,
      embed: v.embed,
      codecs: decoded.codecs,
      act_frame_bytes: actFrame.byteLength,
      grad_frame_bytes: gradFrame.byteLength,
      ratio_vs_bf16: +(bf16Bytes / actFrame.byteLength).toFixed(1),
      lossless_on_wire: lossless,
      val_loss: valLoss,
      encode_MBps: +(f32Bytes / median(encodeTimes) / 1e3).toFixed(1),
      decode_MBps: +(f32Bytes / median(decodeTimes) / 1e3).toFixed(1),
      encode_us: +(median(encodeTimes) * 1e3).toFixed(1),
      decode_us: +(median(decodeTimes) * 1e3).toFixed(1),
      train_tok_s: Math.round((steps * M * B * T) / trainSeconds),
      wall_s: +((performance.now() - began) / 1000).toFixed(1),
      curve,
    };
    console.log(`${v.name.padEnd(9)} frame ${String(actFrame.byteLength).padStart(8)} B (${result.codecs.join('+') || 'f32'}), ratio ${String(result.ratio_vs_bf16).padStart(6)}× vs bf16, val loss ${valLoss.toFixed(4)}, encode ${result.encode_us} µs, decode ${result.decode_us} µs, lossless ${lossless}, ${result.train_tok_s} tok/s`);
    results.push(result);
  }
  const raw = results[0];
  const headline = results.find((r) => r.width === d / 64 && r.quant === 'mxint8' && r.embed) ?? results[results.length - 1];
  const gap = (r: { val_loss: number }) => +((100 * (r.val_loss - raw.val_loss)) / raw.val_loss).toFixed(2);
  for (const r of results.slice(1)) console.log(`${r.variant}: ratio ${r.ratio_vs_bf16}×, loss gap ${gap(r)}%`);
  return {
    bench: 'compression',
    bytes_per_microbatch_raw: bf16Bytes,
    bytes_per_microbatch_wire: headline.act_frame_bytes,
    ratio: headline.ratio_vs_bf16,
    val_loss_raw: raw.val_loss,
    val_loss_compressed: headline.val_loss,
    loss_gap_pct: gap(headline),
    encode_MBps: headline.encode_MBps,
    decode_MBps: headline.decode_MBps,
    headline: headline.variant,
    config: { dModel: d, nLayers: base.model.nLayers, stages: t.stages, boundary: at, steps, seed: t.seed, tokens: steps * M * B * T, batch: B, seq: T, microbatches: M },
    variants: results.map((r) => ({ ...r, loss_gap_pct: gap(r) })),
  };
}
