// Layers per stage for stages of different speeds
// (runtime/config/speed-split.ts): the split's slowest stage is as fast as
// the best of every contiguous split, found by brute force on small models;
// faster stages get more layers, the LM head's stage fewer; the result is a
// function of its inputs; bad speeds are refused. The config takes a split
// (training.stageLayers) and a device per stage (synthetic.stageDevices)
// only when they fit the run, each refused by name otherwise.
import test from 'ava';
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
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }])), { message: /training\.synthetic\.stageDevices must be 2 entries \{device, peakTflops > 0\}/ });
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }, { device: '', peakTflops: 71 }])), { message: /stageDevices must be 2 entries/ });
  t.throws(() => validateRunConfig(withDevices([{ device: 'H100 SXM', peakTflops: 989 }, { device: 'x', peakTflops: -1 }])), { message: /stageDevices must be 2 entries/ });
});
