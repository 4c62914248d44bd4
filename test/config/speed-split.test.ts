// Layers per stage for stages of different speeds
// (runtime/config/speed-split.ts): the split's slowest stage is as fast as
// the best of every contiguous split, found by brute force on small models;
// faster stages get more layers, the LM head's stage fewer; the result is a
// function of its inputs; bad speeds are refused. The config takes a split
// (training.stageLayers) and a device per stage (synthetic.stageDevices)
// only when they fit the run, each refused by name otherwise. With memory
// limits, the split is the fastest of those that fit (schemas/model-memory.ts),
// and refused by name when none does.
import test from 'ava';
import { stageMemory, stageParams, stageTrainingBytes } from '../../schemas/model-memory.ts';
import { SIMULATE_PRESETS, splitStages } from '../../runtime/synthetic/simulate-presets.ts';
import { speedAwareLayers } from '../../runtime/config/speed-split.ts';
import { stageForwardFlopsPerToken } from '../../schemas/model-flops.ts';
import { PRESETS } from '../../runtime/config/presets.ts';
import { validateRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { layerRanges, stageDevice, stageRanges } from '../../schemas/stage-layers.ts';
import { mulberry32 } from '../../runtime/seeded-random.ts';

const model = (nLayers: number, vocabSize = 32000) => ({ vocabSize, dModel: 512, nLayers, nHeads: 8, nKvHeads: 8, ffnHidden: 1376, maxSeqLen: 256, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false });

/** The slowest stage's time of `counts` on stages of `speeds`. */
function slowest(m: ReturnType<typeof model>, counts: readonly number[], speeds: readonly number[]): number {
  return Math.max(...layerRanges(counts).map(([b, e], s) => stageForwardFlopsPerToken(m, 128, b, e) / speeds[s]));
}

/** Every way to give L layers to S stages, each at least one. */
function compositions(L: number, S: number): number[][] {
  if (S === 1) return [[L]];
  const out: number[][] = [];
  for (let first = 1; first <= L - (S - 1); first++) for (const rest of compositions(L - first, S - 1)) out.push([first, ...rest]);
  return out;
}

test('the slowest stage is as fast as the best contiguous split allows (brute force, 300 random cases)', (t) => {
  const rand = mulberry32(5);
  for (let i = 0; i < 300; i++) {
    const L = 2 + Math.floor(rand() * 9), S = 1 + Math.floor(rand() * Math.min(L, 5));
    const m = model(L, rand() < 0.5 ? 256 : 32000);
    const speeds = Array.from({ length: S }, () => 10 + Math.floor(rand() * 990));
    const counts = speedAwareLayers(m, 128, speeds);
    t.is(counts.length, S);
    t.is(counts.reduce((a, b) => a + b, 0), L);
    t.true(counts.every((n) => n >= 1));
    const best = Math.min(...compositions(L, S).map((c) => slowest(m, c, speeds)));
    t.true(slowest(m, counts, speeds) <= best * (1 + 1e-12), `L ${L} speeds ${speeds}: ${counts} is not the best`);
    t.deepEqual(speedAwareLayers(m, 128, speeds), counts, 'the same inputs give the same split');
  }
});

test('faster stages get more layers; at one speed the LM head\'s stage gets fewer', (t) => {
  const m = model(32);
  const counts = speedAwareLayers(m, 4096, [989, 312, 165, 71]);
  t.true(counts[0] > counts[1] && counts[1] > counts[2] && counts[2] >= counts[3], `${counts}`);
  const even = speedAwareLayers(m, 128, [1, 1, 1, 1]);
  t.true(even[3] < even[0], `the last stage also runs the head: ${even}`);
  t.throws(() => speedAwareLayers(m, 128, [1, 0]), { message: /stage speeds must be positive numbers/ });
  t.throws(() => speedAwareLayers(model(2), 128, [1, 1, 1]), { message: /cannot split 2 layers into 3 stages/ });
});

test('stageLayers and stageDevices are taken when they fit the run, refused by name otherwise', (t) => {
  const base = PRESETS.tiny as RunConfig;
  const withLayers = (stageLayers: unknown, stages = 2) => ({ ...base, training: { ...base.training, stages, stageLayers } });
  t.deepEqual(stageRanges(validateRunConfig(withLayers([1, 3]))), [[0, 1], [1, 4]]);
  t.deepEqual(stageRanges(validateRunConfig({ ...base, training: { ...base.training, stages: 3 } })), [[0, 2], [2, 3], [3, 4]], 'without it, as even as possible');
  t.throws(() => validateRunConfig(withLayers([1, 2])), { message: /training\.stageLayers \[1,2\] holds 3 layers, the model has 4/ });
  t.throws(() => validateRunConfig(withLayers([4])), { message: /training\.stageLayers must be 2 positive integers \(one per stage\), got \[4\]/ });
  t.throws(() => validateRunConfig(withLayers([0, 4])), { message: /must be 2 positive integers/ });
  t.throws(() => validateRunConfig(withLayers('1,3')), { message: /must be 2 positive integers/ });
  const synthetic = { device: 'A100 80GB', peakTflops: 312, efficiency: 0.5, timeScale: 1, frameBytes: 1024 };
  const withDevices = (stageDevices: unknown) => ({ ...base, training: { ...base.training, stages: 2, synthetic: { ...synthetic, stageDevices } } });
  const c = validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }, { device: 'RTX 3090', peakTflops: 71 }]));
  t.like(stageDevice(c.training.synthetic!, 1), { device: 'RTX 3090', peakTflops: 71, efficiency: 0.5 });
  t.like(stageDevice({ ...synthetic }, 1), { device: 'A100 80GB', peakTflops: 312 }, 'without them, the one device');
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }])), { message: /training\.synthetic\.stageDevices must be 2 entries \{device, peakTflops > 0, memoryGiB > 0 \(optional\)\}/ });
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }, { device: '', peakTflops: 71 }])), { message: /stageDevices must be 2 entries/ });
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }, { device: 'x', peakTflops: -1 }])), { message: /stageDevices must be 2 entries/ });
});

test('memory: a 7B Llama counts its parameters exactly; the speed-aware split is the fastest that fits each device, and none fitting is refused by name', (t) => {
  const p = SIMULATE_PRESETS['mixed-7b'];
  const m = p.config.model;
  t.is(stageParams(m, 0, m.nLayers), 6_738_415_616, 'Llama 2 7B\'s parameter count');
  t.is(stageParams(m, 0, 16) + stageParams(m, 16, 32), stageParams(m, 0, 32), 'stages add up to the model');
  const { stageLayers, synthetic } = splitStages(p, p.config.training.synthetic!, 4, 'speed');
  const fitted = stageMemory(p.config, stageLayers!, synthetic.stageDevices!);
  t.true(fitted.every((x) => x.need_gib <= x.have_gib!), JSON.stringify(fitted));
  const even = stageMemory(p.config, [8, 8, 8, 8], synthetic.stageDevices!);
  t.true(even.slice(2).every((x) => x.need_gib > x.have_gib!), `the even split overflows the 24 GiB cards: ${JSON.stringify(even)}`);

  // The fastest device with half its memory: the split moves layers off it, and is the best of those that fit.
  const t0 = p.config.training;
  const bytes = (s: number, b: number, e: number) => stageTrainingBytes(m, { begin: b, end: e, stage: s, stages: 4, microbatches: t0.microbatches, microbatchTokens: t0.batchSize * t0.seqLen });
  const limits = [40, 80, 24, 24].map((g) => g * 2 ** 30);
  const fits = (s: number, b: number, e: number) => bytes(s, b, e) <= limits[s];
  const speeds = [989, 312, 165, 71];
  const counts = speedAwareLayers(m, t0.seqLen, speeds, fits);
  const ranges = layerRanges(counts);
  t.true(ranges.every(([b, e], s) => fits(s, b, e)), `${counts}`);
  t.true(counts[0] < stageLayers![0], `fewer layers on the smaller H100: ${counts} against ${stageLayers}`);
  const pace = (c: readonly number[]) => Math.max(...layerRanges(c).map(([b, e], s) => stageForwardFlopsPerToken(m, t0.seqLen, b, e) / speeds[s]));
  const best = Math.min(...compositions(32, 4).filter((c) => layerRanges(c).every(([b, e], s) => fits(s, b, e))).map(pace));
  t.is(pace(counts), best, 'as fast as the best split that fits, by brute force');
  t.throws(() => speedAwareLayers(m, t0.seqLen, speeds, () => false), { message: /^no split of 32 layers into 4 stages fits the stages' memory/ });
});

test('training.resplitGain: a number above 1, for a run of one replica or with the Bridge (not top-k), without audits; refused by name otherwise', (t) => {
  const base = PRESETS.tiny as RunConfig;
  const withGain = (resplitGain: unknown, more: object = {}) => validateRunConfig({ ...base, training: { ...base.training, resplitGain, ...more } });
  t.is(withGain(1.25).training.resplitGain, 1.25);
  t.throws(() => withGain(1), { message: /training\.resplitGain must be a number above 1/ });
  t.throws(() => withGain(1.5, { replicas: 2 }), { message: /training\.resplitGain needs a run of one replica or with the Bridge \(not top-k\), without audits/ });
  t.is(withGain(1.5, { replicas: 2, bridge: { syncEvery: 2 } }).training.resplitGain, 1.5, 'with the Bridge');
  t.throws(() => withGain(1.5, { replicas: 2, bridge: { syncEvery: 2, payload: 'topk' } }), { message: /not top-k/ });
});
