// The engine's computations off the event loop (forwardTrainAsync,
// backwardAsync, backwardInputAsync, backwardWeightAsync): the same bits as
// the sync calls, the event loop free while they run, a second call while
// one runs refused by name, and the engine's errors as rejections.
import test from 'ava';
import { EngineStage, type StageSpec } from '../../native/index.ts';
import { smallModel, smallOptim } from '../support/tiny-run.ts';

const B = 2, T = 8, N = B * T;

function make(layerBegin: number, layerEnd: number): EngineStage {
  const spec: StageSpec = { model: smallModel, optim: smallOptim, layerBegin, layerEnd, seed: 5, threads: 1 };
  return new EngineStage(spec);
}

function floats(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return ((s / 2 ** 32) * 2 - 1) * scale;
  });
}

const tokens = (mb: number) => Int32Array.from({ length: N }, (_, i) => (i * 7 + mb * 13) % smallModel.vocabSize);
const bytes = (a: Float32Array | null) => (a ? Buffer.from(a.buffer, a.byteOffset, a.byteLength) : null);

test('off the event loop: every computation gives the sync call\'s bits, fused and split, on every kind of stage', async (t) => {
  for (const [begin, end] of [[0, 1], [1, 3], [3, 4]] as const) {
    const sync = make(begin, end), async = make(begin, end);
    const M = 3;
    for (let step = 0; step < 2; step++) {
      for (let mb = 0; mb < M; mb++) {
        const id = step * M + mb;
        const input = sync.isFirst ? tokens(id) : floats(N * sync.inWidth, 100 + id, 1);
        const targets = sync.isLast ? tokens(id + 1) : undefined;
        const out = sync.forwardTrain(id, input, B, T, targets);
        const r = await async.forwardTrainAsync(id, input, B, T, targets);
        t.true(r.deviceMs >= 0);
        if (typeof out === 'number') t.is(r.value, out, 'the same loss');
        else t.true(bytes(out)!.equals(bytes(r.value as Float32Array)!), `stage [${begin}, ${end}) microbatch ${id}: the same activations`);
      }
      for (let mb = 0; mb < M; mb++) {
        const id = step * M + mb;
        const gradOut = sync.isLast ? null : floats(N * sync.outWidth, 200 + id, 1e-2);
        // Step 0 fused, step 1 split: B's first, then the W's in microbatch order.
        if (step === 0) {
          const g = sync.backward(id, gradOut), a = (await async.backwardAsync(id, gradOut)).value;
          t.is(g === null, a === null);
          if (g) t.true(bytes(g)!.equals(bytes(a)!), 'the same input gradient (fused)');
        } else {
          const g = sync.backwardInput(id, gradOut), a = (await async.backwardInputAsync(id, gradOut)).value;
          t.is(g === null, a === null, 'stage 0 gives no input gradient either way');
          if (g) t.true(bytes(g)!.equals(bytes(a)!), 'the same input gradient (B)');
        }
      }
      if (step === 1) for (let mb = 0; mb < M; mb++) {
        sync.backwardWeight(step * M + mb);
        t.is((await async.backwardWeightAsync(step * M + mb)).value, undefined);
      }
      t.true(bytes(sync.grads())!.equals(bytes(async.grads())!), `stage [${begin}, ${end}) step ${step}: the same gradients`);
      sync.step(1 / M);
      async.step(1 / M);
      t.true(Buffer.from(sync.state()).equals(Buffer.from(async.state())), `stage [${begin}, ${end}) step ${step}: the same params and moments`);
    }
  }
});

test('off the event loop: timers fire while the engine computes, and the device time is reported', async (t) => {
  const big = new EngineStage({ model: { ...smallModel, dModel: 256, ffnHidden: 768, nHeads: 4, nKvHeads: 4, maxSeqLen: 256 }, optim: smallOptim, layerBegin: 1, layerEnd: 3, seed: 1, threads: 1 });
  const Tb = 256;
  const input = floats(B * Tb * big.inWidth, 7, 1);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    // Several forwards back to back, each long enough (tens of ms) for a 1 ms interval to fire during it.
    let computed = 0;
    for (let mb = 0; mb < 4; mb++) computed += (await big.forwardTrainAsync(mb, input, B, Tb)).deviceMs;
    t.true(computed > 0);
    t.true(ticks > 0, 'the event loop ran while the engine computed');
  } finally {
    clearInterval(timer);
  }
});

test('off the event loop: a call while one runs is refused by name, and the running one finishes', async (t) => {
  const s = make(1, 3);
  const input = floats(N * s.inWidth, 1, 1);
  const running = s.forwardTrainAsync(0, input, B, T);
  t.throws(() => s.forwardTrain(1, input, B, T), { message: /stage \[1, 3\) of 4 layers: a computation is still running off the event loop/ });
  t.throws(() => s.step(1), { message: /still running off the event loop/ });
  t.throws(() => s.stashedBytes(), { message: /still running off the event loop/ });
  const r = await running;
  t.is((r.value as Float32Array).length, N * s.outWidth);
  t.deepEqual(s.stashed(), [0], 'the refused forward stashed nothing');
});

test('off the event loop: the engine\'s errors reject the promise by name, and the stage goes on', async (t) => {
  const s = make(1, 3);
  await t.throwsAsync(s.backwardWeightAsync(4), { message: /stage \[1, 3\) of 4 layers, microbatch 4: backwardWeight for a microbatch with no stashed forward/ });
  await t.throwsAsync(async () => s.forwardTrainAsync(0, new Float32Array(3), B, T), { message: /microbatch 0/ });
  const r = await s.forwardTrainAsync(0, floats(N * s.inWidth, 2, 1), B, T);
  t.is((r.value as Float32Array).length, N * s.outWidth, 'after the refusals the stage computes');
  await t.throwsAsync(s.backwardInputAsync(0, null), { message: /microbatch 0: backward needs the gradient of this stage's output/ });
  t.is((await s.backwardInputAsync(0, floats(N * s.outWidth, 3, 1e-2))).value!.length, N * s.inWidth);
});
