// The split backward (B: input gradient, W: weight gradients) against the
// fused backward, bit for bit; both halves against finite differences; its
// errors; the undoable optimizer step; and the stash's byte count.
import test from 'ava';
import { EngineStage, type StageSpec } from '../../native/index.ts';
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { smallModel, smallOptim } from '../support/tiny-run.ts';

const B = 2, T = 8, N = B * T;
const bottleneckModel: LlamaConfig = {
  ...smallModel,
  bottlenecks: [{ at: 1, width: 8 }, { at: 2, width: 2 }, { at: 3, width: 16 }],
  bottleneckQuant: 'mxint8',
  bottleneckEmbed: true,
};

function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

interface Micro { input: Int32Array | Float32Array; tokens?: Int32Array; targets?: Int32Array; gradOut: Float32Array | null }

/** Deterministic inputs of microbatch `mb` for a stage [begin, end) of `model`. */
function micro(stage: EngineStage, model: LlamaConfig, mb: number): Micro {
  const r = rng(1000 + mb);
  const ids = () => Int32Array.from({ length: N }, () => Math.floor(r() * model.vocabSize));
  const floats = (n: number, scale: number) => Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);
  const tokens = ids();
  return {
    input: stage.isFirst ? tokens : floats(N * stage.inWidth, 1),
    tokens: stage.needsTokens ? tokens : undefined,
    targets: stage.isLast ? ids() : undefined,
    gradOut: stage.isLast ? null : floats(N * stage.outWidth, 1e-2),
  };
}

function make(model: LlamaConfig, layerBegin: number, layerEnd: number): EngineStage {
  const spec: StageSpec = { model, optim: smallOptim, layerBegin, layerEnd, seed: 3 };
  return new EngineStage(spec);
}

function forward(s: EngineStage, mb: number, m: Micro) {
  return s.forwardTrain(mb, m.input, B, T, m.targets, m.tokens);
}

const bytes = (a: Float32Array | null) => (a ? Buffer.from(a.buffer, a.byteOffset, a.byteLength) : null);

function shuffled(n: number, seed: number): number[] {
  const r = rng(seed), a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * Two steps of M microbatches on a fused stage and on a split one (B's in
 * `order`, W's in microbatch order); every gradIn, the gradients before each
 * step, and the whole state after each step must be the same bits.
 */
function compare(t: import('ava').ExecutionContext, model: LlamaConfig, begin: number, end: number, M: number, order: 'mb' | 'shuffled' | 'interleaved') {
  const fused = make(model, begin, end), split = make(model, begin, end);
  for (let step = 0; step < 2; step++) {
    const micros = Array.from({ length: M }, (_, mb) => micro(fused, model, mb + step * M));
    const fusedIn: Array<Buffer | null> = [];
    for (let mb = 0; mb < M; mb++) forward(fused, mb, micros[mb]);
    for (let mb = 0; mb < M; mb++) fusedIn[mb] = bytes(fused.backward(mb, micros[mb].gradOut));
    const splitIn: Array<Buffer | null> = [];
    if (order === 'interleaved') {
      // F0 F1 B0 F2 B1 W0 F3 B2 W1 …: a 1F1B-like schedule with W's deferred.
      let nextW = 0;
      for (let mb = 0; mb < M; mb++) {
        forward(split, mb, micros[mb]);
        if (mb >= 1) splitIn[mb - 1] = bytes(split.backwardInput(mb - 1, micros[mb - 1].gradOut));
        if (mb >= 2) split.backwardWeight(nextW++);
      }
      splitIn[M - 1] = bytes(split.backwardInput(M - 1, micros[M - 1].gradOut));
      while (nextW < M) split.backwardWeight(nextW++);
    } else {
      for (let mb = 0; mb < M; mb++) forward(split, mb, micros[mb]);
      const bOrder = order === 'mb' ? [...Array(M).keys()] : shuffled(M, 17 + M);
      for (const mb of bOrder) splitIn[mb] = bytes(split.backwardInput(mb, micros[mb].gradOut));
      t.true(split.stashedBytes() > 0);
      for (let mb = 0; mb < M; mb++) split.backwardWeight(mb);
    }
    t.is(split.stashedBytes(), 0, 'every stash released after the W\'s');
    t.deepEqual(split.stashed(), []);
    for (let mb = 0; mb < M; mb++) t.true(fusedIn[mb] === null ? splitIn[mb] === null : fusedIn[mb]!.equals(splitIn[mb]!), `gradIn of microbatch ${mb}`);
    t.true(bytes(fused.grads())!.equals(bytes(split.grads())!), `gradients bit-identical (step ${step})`);
    t.not(fused.gradSumSquares().reduce((a, b) => a + b, 0), 0);
    t.is(split.step(1 / M), fused.step(1 / M));
    t.true(Buffer.from(split.state()).equals(Buffer.from(fused.state())), `params and moments bit-identical after step ${step}`);
  }
}

const stages: Array<[string, number, number]> = [['first', 0, 1], ['middle', 1, 3], ['last', 3, 4], ['whole model', 0, 4]];
for (const [name, begin, end] of stages) {
  for (const M of [1, 3, 8]) {
    test(`split = fused bit for bit: ${name} stage [${begin}, ${end}), M=${M}, B's in order and shuffled`, (t) => {
      compare(t, smallModel, begin, end, M, 'mb');
      compare(t, smallModel, begin, end, M, 'shuffled');
    });
  }
  test(`split = fused bit for bit: ${name} stage, interleaved F/B/W schedule`, (t) => compare(t, smallModel, begin, end, 5, 'interleaved'));
}

for (const [begin, end] of [[0, 2], [1, 3], [2, 4], [0, 4]]) {
  test(`split = fused bit for bit with bottlenecks (MX int8, re-embedding): stage [${begin}, ${end})`, (t) => {
    compare(t, bottleneckModel, begin, end, 3, 'shuffled');
  });
}

test('a tied head: split = fused bit for bit on the whole model', (t) => {
  compare(t, { ...smallModel, tiedEmbeddings: true }, 0, 4, 3, 'shuffled');
});

// Finite differences along random directions: the loss of the last stage, or
// ⟨out, g⟩ for a middle stage, against ⟨gradient, direction⟩.
function lossOf(s: EngineStage, m: Micro, input = m.input): number {
  if (s.isLast) return s.evalLoss(input, B, T, m.targets!, m.tokens);
  const out = s.forwardInfer(input, B, T, m.tokens);
  let sum = 0;
  for (let i = 0; i < out.length; i++) sum += out[i] * m.gradOut![i];
  return sum;
}

function direction(n: number, seed: number): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 - 1);
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

for (const [begin, end] of [[1, 3], [2, 4]]) {
  test(`gradcheck of B (gradIn) and W (every weight) on stage [${begin}, ${end})`, (t) => {
    const s = make(smallModel, begin, end);
    const m = micro(s, smallModel, 0);
    forward(s, 0, m);
    const gradIn = s.backwardInput(0, m.gradOut)!;
    t.true(s.grads().every((g) => g === 0), 'B leaves the gradient arena alone');
    s.backwardWeight(0);
    const h = 1e-2;
    const check = (analytic: number, plus: number, minus: number, what: string) => {
      const numeric = (plus - minus) / (2 * h);
      // The floor: fp32 rounding of the loss, over 2h, is about 1e-6 here.
      const err = Math.abs(numeric - analytic) / Math.max(Math.abs(numeric), Math.abs(analytic), 1e-4);
      if (process.env.SPLIT_GRADCHECK_VERBOSE) t.log(`${what}: ${err.toExponential(2)}`);
      t.true(err < 2e-2, `${what}: analytic ${analytic} vs numeric ${numeric} (rel err ${err.toExponential(2)})`);
    };
    for (let k = 0; k < 3; k++) {
      const v = direction(gradIn.length, 50 + k), x = m.input as Float32Array;
      const shift = (sign: number) => Float32Array.from(x, (xi, i) => xi + sign * h * v[i]);
      check(dot(gradIn, v), lossOf(s, m, shift(1)), lossOf(s, m, shift(-1)), `gradIn along direction ${k}`);
    }
    const grads = s.grads().slice();
    for (const e of s.tensors()) {
      const w = s.param(e.name), g = grads.subarray(e.offset, e.offset + e.numel), v = direction(e.numel, 90 + e.offset);
      const saved = w.slice();
      const at = (sign: number) => {
        for (let i = 0; i < w.length; i++) w[i] = saved[i] + sign * h * v[i];
        return lossOf(s, m);
      };
      check(dot(g, v), at(1), at(-1), e.name);
      w.set(saved);
    }
  });
}

test('the split backward refuses bad calls by name and loses nothing', (t) => {
  const s = make(smallModel, 1, 3), last = make(smallModel, 3, 4);
  const m0 = micro(s, smallModel, 0), m1 = micro(s, smallModel, 1);
  forward(s, 0, m0);
  t.throws(() => s.backwardWeight(0), { message: /stage \[1, 3\) of 4 layers, microbatch 0: backwardWeight before backwardInput/ });
  t.throws(() => s.backwardInput(7, m0.gradOut), { message: /stage \[1, 3\) of 4 layers, microbatch 7: backwardInput for a microbatch with no stashed forward \(stashed: 0\)/ });
  t.throws(() => s.backwardWeight(7), { message: /microbatch 7: backwardWeight for a microbatch with no stashed forward/ });
  t.throws(() => s.backwardInput(0, new Float32Array(3)), { message: /microbatch 0: expected a gradient of shape \[2,8,64\] \(1024 floats\), got 3/ });
  t.throws(() => s.backwardInput(0, null), { message: /microbatch 0: backward needs the gradient of this stage's output/ });
  t.throws(() => s.backwardInput(0, new Int32Array(N * 64) as unknown as Float32Array), { message: /gradient must be a Float32Array/ });
  const gradIn = s.backwardInput(0, m0.gradOut);
  t.is(gradIn!.length, N * 64, 'after the refusals B still runs');
  t.throws(() => s.backwardInput(0, m0.gradOut), { message: /microbatch 0: backwardInput after backwardInput already ran for this microbatch/ });
  t.throws(() => s.backward(0, m0.gradOut), { message: /microbatch 0: backward after backwardInput already ran/ });
  s.backwardWeight(0);
  t.throws(() => s.backwardWeight(0), { message: /stage \[1, 3\) of 4 layers, microbatch 0: backwardWeight already ran for this microbatch/ });
  forward(s, 0, m1);
  t.throws(() => s.backwardWeight(0), { message: /backwardWeight before backwardInput/, }, 'a new forward under the same id starts over');
  const lm = micro(last, smallModel, 0);
  forward(last, 0, lm);
  t.throws(() => last.backwardInput(0, new Float32Array(N * 64)), { message: /stage \[3, 4\) of 4 layers, microbatch 0: the last stage starts backward from its loss and takes no gradient/ });
  t.is(last.backwardInput(0, null)!.length, N * 64);
});

test('stashedBytes: grows with each stashed microbatch, changes at B as documented, and is 0 after the W\'s', (t) => {
  const s = make(smallModel, 1, 3), L = 2, d = smallModel.dModel, H = smallModel.nHeads;
  t.is(s.stashedBytes(), 0);
  const ms = [0, 1, 2].map((mb) => micro(s, smallModel, mb));
  forward(s, 0, ms[0]);
  const one = s.stashedBytes();
  t.true(one > 0);
  forward(s, 1, ms[1]);
  t.is(s.stashedBytes(), 2 * one, 'fresh stashes of one shape hold the same');
  s.backwardInput(0, ms[0].gradOut);
  t.is(s.stashedBytes() - 2 * one, 4 * L * (4 * N * d - N * H * T), 'B keeps 4·N·d floats more and N·H·T fewer per layer');
  forward(s, 2, ms[2]);
  s.backwardWeight(0);
  s.backwardInput(1, ms[1].gradOut);
  s.backwardInput(2, ms[2].gradOut);
  s.backwardWeight(1);
  t.true(s.stashedBytes() > 0);
  s.backwardWeight(2);
  t.is(s.stashedBytes(), 0);
  forward(s, 3, ms[0]);
  s.backward(3, ms[0].gradOut);
  t.is(s.stashedBytes(), 0, 'the fused backward releases too');
});

/** A stage that has taken one step and holds a second step's gradients. */
function trained(M = 2): EngineStage {
  const s = make(smallModel, 0, 4);
  for (let step = 0; step < 2; step++) {
    for (let mb = 0; mb < M; mb++) {
      const m = micro(s, smallModel, mb + step * M);
      forward(s, mb, m);
      s.backward(mb, null);
    }
    if (step === 0) s.step(1 / M);
  }
  return s;
}

test('stepWithUndo then undoStep then step(s2) equals step(s2), bit for bit', (t) => {
  const direct = trained(), undone = trained();
  t.true(Buffer.from(direct.state()).equals(Buffer.from(undone.state())));
  const grads = undone.grads().slice();
  const lr1 = undone.stepWithUndo(0.5);
  t.is(undone.optimizerStep, 2);
  t.true(undone.grads().every((g) => g === 0), 'stepWithUndo zeroes the gradients as step does');
  t.false(Buffer.from(direct.state()).equals(Buffer.from(undone.state())), 'the step moved the weights');
  undone.undoStep();
  t.is(undone.optimizerStep, 1);
  t.true(bytes(undone.grads())!.equals(bytes(grads)!), 'the step\'s gradients are back');
  t.true(Buffer.from(direct.state()).equals(Buffer.from(undone.state())), 'params, moments and the step are back');
  t.is(undone.step(0.25), direct.step(0.25));
  t.is(typeof lr1, 'number');
  t.true(Buffer.from(direct.state()).equals(Buffer.from(undone.state())), 'params, both moments and optimizerStep equal a direct step');
  t.true(bytes(direct.grads())!.equals(bytes(undone.grads())!));
});

test('undoStep discards what W\'s of the next step added meanwhile', (t) => {
  const direct = trained(), undone = trained();
  const grads = undone.grads().slice();
  undone.stepWithUndo(0.5);
  for (let mb = 0; mb < 2; mb++) {
    const m = micro(undone, smallModel, 100 + mb);
    forward(undone, mb, m);
    undone.backwardInput(mb, null);
    undone.backwardWeight(mb);
  }
  t.false(undone.grads().every((g) => g === 0));
  undone.undoStep();
  t.true(bytes(undone.grads())!.equals(bytes(grads)!));
  undone.step(0.25);
  direct.step(0.25);
  t.true(Buffer.from(direct.state()).equals(Buffer.from(undone.state())));
  // And zeroGrad after an undo is a plain zeroGrad.
  const again = trained(), plain = trained();
  again.stepWithUndo(1);
  again.undoStep();
  again.zeroGrad();
  plain.zeroGrad();
  t.true(Buffer.from(again.state()).equals(Buffer.from(plain.state())));
  t.true(again.grads().every((g) => g === 0));
});

test('undoStep with nothing saved throws; dropUndo and step forget the saved copy', (t) => {
  const s = trained();
  t.throws(() => s.undoStep(), { message: /stage \[0, 4\) of 4 layers: undoStep with nothing to undo/ });
  s.stepWithUndo(1);
  s.undoStep();
  t.throws(() => s.undoStep(), { message: /nothing to undo/ }, 'one undo per saved step');
  s.stepWithUndo(1);
  s.dropUndo();
  s.dropUndo();
  t.throws(() => s.undoStep(), { message: /nothing to undo/ });
  s.stepWithUndo(1);
  s.step(1);
  t.throws(() => s.undoStep(), { message: /nothing to undo/ }, 'a plain step commits');
  s.stepWithUndo(1);
  s.setParams(s.params().slice());
  t.throws(() => s.undoStep(), { message: /nothing to undo/ }, 'new parameters commit');
});
