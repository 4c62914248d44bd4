// Bad input to an EngineStage: every refusal names what is wrong and where
// (stage, microbatch), and leaves the stage exactly as it was, so a caller that
// catches the error can carry on training. "Exactly" is checked twice: the
// parameters, gradients and stashed microbatches are unchanged right after the
// failure, and afterwards the stage trains to the same bits as a twin that
// never saw the bad call.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { DEFAULT_OPTIMIZER, EngineStage, type EngineModelConfig, type StageSpec } from '../../native/index.ts';
import { mulberry32, randomTokens } from '../support/random-weights.ts';

const model: EngineModelConfig = {
  vocabSize: 32, dModel: 16, nLayers: 3, nHeads: 4, nKvHeads: 2, ffnHidden: 24, maxSeqLen: 8, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
};
const B = 2, T = 4, N = B * T, d = model.dModel, V = model.vocabSize;

type Position = 'first' | 'middle' | 'last';
const layerRanges: Record<Position, [number, number]> = { first: [0, 1], middle: [1, 2], last: [2, 3] };
const where: Record<Position, string> = { first: 'stage \\[0, 1\\) of 3 layers', middle: 'stage \\[1, 2\\) of 3 layers', last: 'stage \\[2, 3\\) of 3 layers' };

/** The microbatch each stage under test already has stashed when the bad call arrives. */
const STASHED = 7;

function spec(position: Position): StageSpec {
  const [layerBegin, layerEnd] = layerRanges[position];
  return { model, optim: DEFAULT_OPTIMIZER, layerBegin, layerEnd, seed: 11 };
}

function floats(n: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  return Float32Array.from({ length: n }, () => 2 * rand() - 1);
}

function inputFor(stage: EngineStage, seed: number, seqLen = T): Int32Array | Float32Array {
  return stage.isFirst ? randomTokens(B * seqLen, V, seed) : floats(B * seqLen * d, seed);
}

function forwardOk(stage: EngineStage, mb: number, seed: number): void {
  stage.forwardTrain(mb, inputFor(stage, seed), B, T, stage.isLast ? randomTokens(N, V, seed + 1) : undefined);
}

function backwardOk(stage: EngineStage, mb: number, seed: number): Float32Array | null {
  return stage.backward(mb, stage.isLast ? null : floats(N * d, seed + 2));
}

/** A stage of the given position with microbatch STASHED waiting for its backward. */
function stageWithStash(position: Position): EngineStage {
  const stage = new EngineStage(spec(position));
  forwardOk(stage, STASHED, 100);
  return stage;
}

function snapshot(stage: EngineStage) {
  return { paramHash: stage.paramHash(), stashed: stage.stashed(), gradSumSquares: Array.from(stage.gradSumSquares()), optimizerStep: stage.optimizerStep };
}

/** What a caller does after catching the error: finish the stashed microbatches, run a fresh one, step. */
function carryOn(stage: EngineStage): { gradIns: Array<Float32Array | null>; paramHash: string; stashed: number[] } {
  const gradIns: Array<Float32Array | null> = [];
  for (const mb of stage.stashed()) gradIns.push(backwardOk(stage, mb, 100));
  forwardOk(stage, 8, 200);
  gradIns.push(backwardOk(stage, 8, 200));
  stage.step(1);
  return { gradIns, paramHash: stage.paramHash(), stashed: stage.stashed() };
}

/**
 * `call` fails with an error matching `message`; the stage is unchanged by it
 * and then trains exactly like a twin built the same way that never saw the call.
 */
function refusesAndRecovers(t: ExecutionContext, make: () => EngineStage, call: (stage: EngineStage) => unknown, message: RegExp): void {
  const stage = make();
  const twin = make();
  const before = snapshot(stage);
  t.throws(() => call(stage), { message });
  t.deepEqual(snapshot(stage), before, 'the failed call changed the stage');
  t.deepEqual(snapshot(twin), before);
  const startHash = stage.paramHash();
  const after = carryOn(stage);
  t.not(after.paramHash, startHash, 'a step after the failure did not move the parameters');
  t.is(stage.optimizerStep, before.optimizerStep + 1);
  t.deepEqual(after.stashed, []);
  t.deepEqual(after, carryOn(twin), 'the stage trains differently from a twin that never saw the bad call');
}

// --- input shape and dtype ---------------------------------------------------

for (const length of [0, N - 1, N + 1, N * d]) {
  test(`stage 0 refuses ${length} token ids for B=${B}, T=${T}`, (t) => {
    refusesAndRecovers(t, () => stageWithStash('first'), (s) => s.forwardTrain(9, new Int32Array(length), B, T),
      new RegExp(`${where.first}, microbatch 9: expected token ids of shape \\[2,4\\] \\(8 values\\), got ${length}$`));
  });
}

for (const position of ['middle', 'last'] as const) {
  for (const length of [0, N, N * d - 1, N * d + d]) {
    test(`${position} stage refuses ${length} activations for [B,T,d] = [${B},${T},${d}]`, (t) => {
      refusesAndRecovers(t, () => stageWithStash(position), (s) => s.forwardTrain(9, new Float32Array(length), B, T, s.isLast ? randomTokens(N, V, 1) : undefined),
        new RegExp(`${where[position]}, microbatch 9: expected activations of shape \\[2,4,16\\] \\(128 floats\\), got ${length}$`));
    });
  }
}

// A batch size far beyond the input must fail on the shape check, not first
// size an output of B·T·V floats for it. Run in a child process: if the engine
// allocates before it checks, the allocation aborts the whole process.
test('a huge B with a small input is refused, not allocated for', (t) => {
  const indexUrl = new URL('../../native/index.ts', import.meta.url).href;
  const script = `
    import { DEFAULT_OPTIMIZER, EngineStage } from ${JSON.stringify(indexUrl)};
    const stage = new EngineStage({ model: ${JSON.stringify(model)}, optim: DEFAULT_OPTIMIZER, layerBegin: 2, layerEnd: 3, seed: 1 });
    try { stage.forwardInfer(new Float32Array(${N * d}), 1e9, ${T}); console.log('accepted'); }
    catch (err) { console.log(err.message); }`;
  const child = spawnSync(process.execPath, ['--import=tsx', '--input-type=module', '-e', script], {
    cwd: fileURLToPath(new URL('../..', import.meta.url)), encoding: 'utf8', timeout: 30_000,
  });
  t.is(child.status, 0, `the process died (signal ${child.signal}): ${child.stderr.split('\n').find((l) => /FATAL|Error/.test(l)) ?? ''}`);
  t.regex(child.stdout, /stage \[2, 3\) of 3 layers, microbatch 0: expected activations of shape \[1000000000,4,16\] \(64000000000 floats\), got 128/);
});

// An empty typed array is an input of length 0, not a missing one.
test('evalLoss refuses empty targets instead of returning logits', (t) => {
  refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.evalLoss(floats(N * d, 1), B, T, new Int32Array(0)),
    /expected targets of shape \[2,4\], got 0 values/);
});

test('inference and evaluation check shapes as training does', (t) => {
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardInfer(new Float32Array(N * d - 1), B, T),
    /expected activations of shape \[2,4,16\] \(128 floats\), got 127/);
  refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.evalLoss(floats(N * d, 1), B, T, randomTokens(N + 1, V, 1)),
    /expected targets of shape \[2,4\], got 9 values/);
});

test('stage 0 refuses activations where it takes token ids', (t) => {
  refusesAndRecovers(t, () => stageWithStash('first'), (s) => s.forwardTrain(9, floats(N, 1), B, T),
    new RegExp(`${where.first}, microbatch 9: stage 0 takes token ids as an Int32Array, got a Float32Array`));
});

test('a middle stage refuses token ids where it takes activations', (t) => {
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardTrain(9, new Int32Array(N * d), B, T),
    new RegExp(`${where.middle}, microbatch 9: this stage takes activations as a Float32Array, got an Int32Array`));
});

for (const [bad, at] of [[-1, 3], [V, 5], [V + 1000, 0]] as const) {
  test(`stage 0 refuses token id ${bad} (vocabulary [0, ${V}))`, (t) => {
    const tokens = randomTokens(N, V, 1);
    tokens[at] = bad;
    refusesAndRecovers(t, () => stageWithStash('first'), (s) => s.forwardTrain(9, tokens, B, T),
      new RegExp(`microbatch 9: token id ${bad} at position ${at} is outside the vocabulary \\[0, 32\\)`));
  });
}

for (const position of ['first', 'middle', 'last'] as const) {
  test(`${position} stage refuses T beyond maxSeqLen`, (t) => {
    const tooLong = model.maxSeqLen + 1;
    refusesAndRecovers(t, () => stageWithStash(position),
      (s) => s.forwardTrain(9, inputFor(s, 1, tooLong), B, tooLong, s.isLast ? randomTokens(B * tooLong, V, 1) : undefined),
      new RegExp(`${where[position]}, microbatch 9: T=9 exceeds maxSeqLen 8`));
  });
}

test('B and T must be positive integers', (t) => {
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardTrain(9, new Float32Array(0), 0, T), /B must be a positive integer, got 0/);
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardTrain(9, floats(N * d, 1), B, 2.5), /T must be a positive integer, got 2\.5/);
});

// --- targets -----------------------------------------------------------------

for (const length of [0, N - 1, N + 1]) {
  test(`the last stage refuses ${length} targets for B=${B}, T=${T}`, (t) => {
    refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.forwardTrain(9, floats(N * d, 1), B, T, randomTokens(length, V, 1)),
      new RegExp(`${where.last}, microbatch 9: expected targets of shape \\[2,4\\], got ${length} values`));
  });
}

for (const [bad, at] of [[-1, 0], [V, 7]] as const) {
  test(`the last stage refuses target id ${bad}`, (t) => {
    const targets = randomTokens(N, V, 1);
    targets[at] = bad;
    refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.forwardTrain(9, floats(N * d, 1), B, T, targets),
      new RegExp(`microbatch 9: target id ${bad} at position ${at} is outside the vocabulary \\[0, 32\\)`));
  });
}

test('targets go to the last stage only, and the last stage cannot train without them', (t) => {
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardTrain(9, floats(N * d, 1), B, T, randomTokens(N, V, 1)),
    new RegExp(`${where.middle}, microbatch 9: only the last stage takes targets`));
  refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.forwardTrain(9, floats(N * d, 1), B, T),
    new RegExp(`${where.last}, microbatch 9: the last stage needs targets of shape \\[B,T\\] to train`));
});

// --- backward ----------------------------------------------------------------

for (const position of ['first', 'middle', 'last'] as const) {
  test(`${position} stage: backward of an unknown microbatch lists what is stashed`, (t) => {
    const twoStashed = () => {
      const s = stageWithStash(position);
      forwardOk(s, 12, 300);
      return s;
    };
    refusesAndRecovers(t, twoStashed, (s) => s.backward(99, s.isLast ? null : floats(N * d, 1)),
      new RegExp(`${where[position]}, microbatch 99: backward for a microbatch with no stashed forward \\(stashed: 7, 12\\)`));
  });
}

test('backward with nothing stashed says so', (t) => {
  refusesAndRecovers(t, () => new EngineStage(spec('middle')), (s) => s.backward(0, floats(N * d, 1)),
    /microbatch 0: backward for a microbatch with no stashed forward \(stashed: none\)/);
});

for (const position of ['first', 'middle'] as const) {
  for (const length of [0, N * d - 1, N * d + 1]) {
    test(`${position} stage: backward refuses a gradient of ${length} floats`, (t) => {
      refusesAndRecovers(t, () => stageWithStash(position), (s) => s.backward(STASHED, new Float32Array(length)),
        new RegExp(`${where[position]}, microbatch 7: expected a gradient of shape \\[2,4,16\\] \\(128 floats\\), got ${length}$`));
    });
  }
}

test('a middle stage: backward without a gradient is refused', (t) => {
  refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.backward(STASHED, null),
    new RegExp(`${where.middle}, microbatch 7: backward needs the gradient of this stage's output`));
});

test('the last stage refuses a gradient: it starts backward from its loss', (t) => {
  refusesAndRecovers(t, () => stageWithStash('last'), (s) => s.backward(STASHED, floats(N * d, 1)),
    new RegExp(`${where.last}, microbatch 7: the last stage starts backward from its loss and takes no gradient`));
});

// --- microbatch ids ----------------------------------------------------------

for (const position of ['first', 'last'] as const) {
  test(`${position} stage: a second forwardTrain for a stashed microbatch is refused and the first stash kept`, (t) => {
    // Different input than the stashed forward: had it replaced the stash, the twin comparison would see other gradients.
    refusesAndRecovers(t, () => stageWithStash(position), (s) => forwardOk(s, STASHED, 555),
      new RegExp(`${where[position]}, microbatch 7: microbatch already has a stashed forward \\(backward not yet run\\)`));
  });
}

for (const mb of [1.5, -1, -0.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
  test(`microbatch id ${mb} is refused by forwardTrain and backward`, (t) => {
    const message = /microbatch id must be a non-negative safe integer, got /;
    refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.forwardTrain(mb, floats(N * d, 1), B, T), message);
    refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.backward(mb, floats(N * d, 1)), message);
    refusesAndRecovers(t, () => stageWithStash('middle'), (s) => s.drop(mb), message);
  });
}

test('the refused id is printed', (t) => {
  const stage = stageWithStash('first');
  t.throws(() => stage.forwardTrain(1.5, randomTokens(N, V, 1), B, T), { message: /got 1\.5/ });
  t.throws(() => stage.backward(-3, floats(N * d, 1)), { message: /got -3/ });
});

// --- construction ------------------------------------------------------------

const badSpecs: Array<[string, StageSpec, RegExp]> = [
  ['nHeads not dividing dModel', { ...spec('first'), model: { ...model, nHeads: 5 } }, /invalid config: nHeads \(5\) must divide dModel \(16\)/],
  ['nHeads of zero', { ...spec('first'), model: { ...model, nHeads: 0 } }, /nHeads \(0\) must divide dModel \(16\)/],
  ['nKvHeads not dividing nHeads', { ...spec('first'), model: { ...model, nKvHeads: 3 } }, /invalid config: nKvHeads \(3\) must divide nHeads \(4\)/],
  ['an odd head dim (no rotary pairs)', { ...spec('first'), model: { ...model, dModel: 12, nHeads: 4 } }, /head dim dModel\/nHeads must be even/],
  ['a layer range past the last layer', { ...spec('first'), layerBegin: 2, layerEnd: 4 }, /invalid layer range \[2, 4\) for a model of 3 layers/],
  ['a negative layerBegin', { ...spec('first'), layerBegin: -1, layerEnd: 1 }, /invalid layer range \[-1, 1\) for a model of 3 layers/],
  ['an empty layer range', { ...spec('first'), layerBegin: 1, layerEnd: 1 }, /invalid layer range \[1, 1\)/],
  ['a reversed layer range', { ...spec('first'), layerBegin: 2, layerEnd: 1 }, /invalid layer range \[2, 1\)/],
  ['a fractional layerBegin', { ...spec('first'), layerBegin: 0.5 }, /stage\.layerBegin must be an integer/],
  ['tiedEmbeddings on a first stage that lacks the head', { ...spec('first'), model: { ...model, tiedEmbeddings: true } },
    /tiedEmbeddings needs the embedding and the head on one stage \(layers \[0, 3\)\); got stage \[0, 1\) of 3 layers/],
  ['tiedEmbeddings on a last stage that lacks the embedding', { ...spec('last'), layerBegin: 1, model: { ...model, tiedEmbeddings: true } },
    /tiedEmbeddings needs the embedding and the head on one stage .*got stage \[1, 3\) of 3 layers/],
  ['a non-finite dModel', { ...spec('first'), model: { ...model, dModel: Number.NaN } }, /model\.dModel must be a finite number/],
  ['a missing vocabSize', { ...spec('first'), model: { ...model, vocabSize: undefined } as unknown as EngineModelConfig }, /model\.vocabSize is required/],
  ['a negative lr', { ...spec('first'), optim: { ...DEFAULT_OPTIMIZER, lr: -1 } }, /invalid config: lr must be >= 0/],
];

for (const [label, bad, message] of badSpecs) {
  test(`construction refuses ${label}`, (t) => {
    t.throws(() => new EngineStage(bad), { message });
  });
}

test('tiedEmbeddings is accepted when one stage holds every layer', (t) => {
  const stage = new EngineStage({ ...spec('first'), layerEnd: 3, model: { ...model, tiedEmbeddings: true } });
  t.true(stage.isFirst && stage.isLast);
  t.false(stage.tensors().some((e) => e.name === 'lm_head.weight'));
});
