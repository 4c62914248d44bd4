// The CUDA backend: compiled into the driver and the Node addon wherever a
// CUDA compiler exists (development machines have nvcc but no GPU), refused
// with the reason where no GPU can be used, and checked against the CPU
// backend where one can (scripts/gpu-check.sh runs this file on a GPU machine).
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { cudaDevice, DRIVER_PATH, EngineStage, engineInfo, hashStages, splitLayers, type CudaDeviceInfo, type EngineModelConfig } from '../../native/index.ts';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';
import { B, corpusBatches, smallOptim, T } from '../support/tiny-run.ts';

const run = promisify(execFile);

function hasNvcc(): boolean {
  try {
    execFileSync('nvcc', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

async function driverCudaInfo(): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(DRIVER_PATH, ['cuda-info']);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const nvcc = hasNvcc();
const driverInfo = await driverCudaInfo();
let gpu: CudaDeviceInfo | undefined;
let noGpu = '';
try {
  gpu = cudaDevice(0);
} catch (err) {
  noGpu = (err as Error).message;
}

// The tiny preset's shape: GQA, hd = 32.
const model: EngineModelConfig = {
  vocabSize: 256, dModel: 128, nLayers: 4, nHeads: 4, nKvHeads: 2, ffnHidden: 352, maxSeqLen: 32, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
};

(nvcc ? test : test.skip)('with nvcc present, the driver and the addon are built with the CUDA backend', (t) => {
  t.notRegex(driverInfo.stderr, /this build has no CUDA backend/);
  t.true(engineInfo().cuda, 'the addon links the CUDA backend');
  // Either a GPU answered, or the backend said clearly why none is usable.
  if (!gpu) {
    t.regex(driverInfo.stderr, /no CUDA GPU is usable on this machine/);
    t.regex(noGpu, /no CUDA GPU is usable on this machine/);
  } else {
    t.regex(driverInfo.stdout, /"compute_capability"/);
  }
});

// (`caravan host --device cuda` refusing such a GPU: test/cli/caravan.test.ts.)
(nvcc && !gpu ? test : test.skip)('without a usable GPU, a CUDA stage refuses, saying why', (t) => {
  const err = t.throws(() => new EngineStage({ model, optim: smallOptim, layerBegin: 0, layerEnd: 4, seed: 1, device: 'cuda' }));
  t.regex(err!.message, /no CUDA GPU is usable on this machine/);
});

if (!gpu) {
  test.skip(`CUDA backend agrees with the CPU backend (skipped: ${noGpu || 'no GPU'})`, () => {});
} else {
  const device = gpu;
  const cudaStage = (layerBegin: number, layerEnd: number) => new EngineStage({ model, optim: smallOptim, layerBegin, layerEnd, seed: 1, device: 'cuda', gpu: 0 });
  const cpuStage = (layerBegin: number, layerEnd: number) => new EngineStage({ model, optim: smallOptim, layerBegin, layerEnd, seed: 1, threads: 2 });
  const relL2 = (a: Float32Array, b: Float32Array) => {
    let diff = 0, norm = 0;
    for (let i = 0; i < a.length; i++) { diff += (a[i] - b[i]) ** 2; norm += b[i] ** 2; }
    return Math.sqrt(diff / Math.max(norm, 1e-30));
  };

  test('the driver: cuda-check passes (loss, every gradient, training steps, repeatability, 1 vs 2 stages)', async (t) => {
    const { stdout } = await run(DRIVER_PATH, ['cuda-check'], { maxBuffer: 1 << 20 });
    const rows = stdout.trim().split('\n').map((l) => JSON.parse(l));
    t.true(rows.every((r) => r.ok === true), stdout);
  });

  test('a CUDA stage reports its GPU; an index past the last GPU is refused', (t) => {
    const s = cudaStage(0, 4);
    t.is(s.cuda!.name, device.name);
    t.true(device.totalBytes > 2 ** 30);
    t.regex(s.describe, /on GPU 0/);
    t.throws(() => cudaDevice(4096), { message: /GPU 4096 does not exist: this machine has \d+/ });
  });

  test('the CUDA stage equals the CPU stage: same initial weights, loss and gradients within bf16 tolerance, then training', (t) => {
    const [gpuStage, cpu] = [cudaStage(0, 4), cpuStage(0, 4)];
    t.deepEqual(gpuStage.params(), cpu.params(), 'initial weights bit for bit');
    for (let step = 0; step < 3; step++) {
      const losses = [gpuStage, cpu].map((s) => {
        let sum = 0;
        corpusBatches(step).forEach((mb, i) => { sum += s.forwardTrain(step * 2 + i, mb.tokens, B, T, mb.targets) as number; s.backward(step * 2 + i, null); });
        return sum / 2;
      });
      t.true(Math.abs(losses[0] - losses[1]) / losses[1] < 2e-2, `step ${step}: loss ${losses[0]} on the GPU, ${losses[1]} on the CPU`);
      if (step === 0) {
        const [g, c] = [gpuStage.grads(), cpu.grads()];
        for (const e of cpu.tensors()) {
          const err = relL2(g.subarray(e.offset, e.offset + e.numel), c.subarray(e.offset, e.offset + e.numel));
          t.true(err < 5e-2, `gradient of ${e.name}: relative L2 error ${err}`);
        }
      }
      for (const s of [gpuStage, cpu]) s.step(1 / 2);
    }
  });

  test('bad input to a CUDA stage is refused by name and loses nothing', (t) => {
    const [first, second] = [cudaStage(0, 2), cudaStage(2, 4)];
    const mb = corpusBatches(0)[0];
    t.throws(() => first.forwardTrain(0, mb.tokens.subarray(1), B, T), { message: /expected token ids of shape \[4,32\], got 127 values/ });
    t.throws(() => second.forwardTrain(0, new Float32Array(B * T * 127), B, T, mb.targets), { message: /expected activations of shape \[4,32,128\]/ });
    t.throws(() => first.forwardTrain(0, new Int32Array(B * T).fill(300), B, T), { message: /id 300 at position 0 is outside the vocabulary \[0, 256\)/ });
    t.throws(() => first.forwardTrain(0, new Int32Array(B * 64), B, 64), { message: /T <= maxSeqLen 32/ });
    t.throws(() => second.backward(9, null), { message: /no stashed forward/ });
    // The refused calls left nothing behind: the stages still train, and equal fresh ones.
    const run = (a: EngineStage, b: EngineStage) => {
      const act = a.forwardTrain(0, mb.tokens, B, T) as Float32Array;
      const loss = b.forwardTrain(0, act, B, T, mb.targets) as number;
      t.throws(() => b.backward(0, new Float32Array(1)), { message: /takes no gradient/ });
      a.backward(0, b.backward(0, null));
      return loss;
    };
    t.is(run(first, second), run(cudaStage(0, 2), cudaStage(2, 4)));
    t.deepEqual(first.stashed(), []);
  });

  test('on the GPU, the split backward (B\'s shuffled, W\'s in order) equals the fused backward bit for bit, and stashedBytes returns to 0', (t) => {
    const M = 3;
    for (const [a, b] of [[0, 2], [2, 4], [0, 4]]) {
      const [fused, split] = [cudaStage(a, b), cudaStage(a, b)];
      const feed = (s: EngineStage, mb: number, step: number) => {
        const batch = corpusBatches(step)[mb % 2];
        if (s.isFirst) return s.forwardTrain(mb, batch.tokens, B, T, s.isLast ? batch.targets : undefined);
        const acts = Float32Array.from({ length: B * T * model.dModel }, (_, i) => Math.sin(i * 0.37 + mb + step));
        return s.forwardTrain(mb, acts, B, T, s.isLast ? batch.targets : undefined);
      };
      const gradOut = (s: EngineStage, mb: number) => (s.isLast ? null : Float32Array.from({ length: B * T * model.dModel }, (_, i) => 1e-3 * Math.cos(i * 0.11 + mb)));
      for (let step = 0; step < 2; step++) {
        for (let mb = 0; mb < M; mb++) { feed(fused, mb, step); feed(split, mb, step); }
        const fusedIn = [0, 1, 2].map((mb) => fused.backward(mb, gradOut(fused, mb)));
        const splitIn: Array<Float32Array | null> = [];
        for (const mb of [2, 0, 1]) splitIn[mb] = split.backwardInput(mb, gradOut(split, mb));
        t.true(split.stashedBytes() > 0);
        for (let mb = 0; mb < M; mb++) split.backwardWeight(mb);
        t.is(split.stashedBytes(), 0);
        t.deepEqual(splitIn, fusedIn, `[${a}, ${b}) gradIn`);
        t.deepEqual(split.grads(), fused.grads(), `[${a}, ${b}) gradients, step ${step}`);
        split.step(1 / M);
        fused.step(1 / M);
        t.deepEqual(Buffer.from(split.state()), Buffer.from(fused.state()), `[${a}, ${b}) state after step ${step}`);
      }
      t.throws(() => split.backwardWeight(0), { message: /backwardWeight already ran|no stashed forward/ });
    }
  });

  test('on the GPU, stepWithUndo, undoStep, step(s2) equals step(s2) bit for bit, with W\'s of the next step in between', (t) => {
    const [direct, undone] = [cudaStage(0, 4), cudaStage(0, 4)];
    for (const s of [direct, undone]) {
      corpusBatches(0).forEach((mb, i) => { s.forwardTrain(i, mb.tokens, B, T, mb.targets); s.backward(i, null); });
      s.step(0.5);
      corpusBatches(1).forEach((mb, i) => { s.forwardTrain(i, mb.tokens, B, T, mb.targets); s.backward(i, null); });
    }
    const grads = undone.grads();
    t.throws(() => undone.undoStep(), { message: /nothing to undo/ });
    undone.stepWithUndo(0.5);
    corpusBatches(2).forEach((mb, i) => { undone.forwardTrain(i, mb.tokens, B, T, mb.targets); undone.backwardInput(i, null); undone.backwardWeight(i); });
    undone.undoStep();
    t.deepEqual(undone.grads(), grads);
    t.is(undone.step(0.25), direct.step(0.25));
    t.deepEqual(Buffer.from(undone.state()), Buffer.from(direct.state()));
    t.deepEqual(undone.params(), direct.params());
  });

  test('on the GPU, 1, 2 and 4 stages train to the same bits, and a CUDA state restores bit for bit (on the GPU and into the CPU engine)', (t) => {
    const hashes = [1, 2, 4].map((S) => {
      const p = new LocalPipeline(model, smallOptim, S, 1, 2, { device: 'cuda', gpu: 0 });
      for (let step = 0; step < 3; step++) p.trainStep(corpusBatches(step), B, T, 1);
      return { hash: p.paramHash(), states: p.stages.map((s) => s.state()) };
    });
    t.is(hashes[1].hash, hashes[0].hash);
    t.is(hashes[2].hash, hashes[0].hash);
    const ranges = splitLayers(model.nLayers, 2);
    const restored = ranges.map(([a, b], i) => { const s = cudaStage(a, b); s.loadState(hashes[1].states[i]); return s; });
    const onCpu = ranges.map(([a, b], i) => { const s = cpuStage(a, b); s.loadState(hashes[1].states[i]); return s; });
    t.is(hashStages(restored), hashes[0].hash);
    t.is(hashStages(onCpu), hashes[0].hash);
    t.is(restored[0].optimizerStep, 3);
    // Training on from the restored state equals training on without the restore.
    const cont = new LocalPipeline(model, smallOptim, 2, 1, 2, { device: 'cuda', gpu: 0 });
    cont.stages.forEach((s, i) => s.loadState(hashes[1].states[i]));
    const straight = new LocalPipeline(model, smallOptim, 2, 1, 2, { device: 'cuda', gpu: 0 });
    for (let step = 0; step < 4; step++) straight.trainStep(corpusBatches(step), B, T, 1);
    cont.trainStep(corpusBatches(3), B, T, 1);
    t.is(cont.paramHash(), straight.paramHash());
  });

  test('caravan train --device cuda: hosts over NATS equal the in-process run on the GPU, bit for bit', async (t) => {
    const common = ['train', '--json', '--device', 'cuda', '--steps', '4', '--seq', '32', '--batch', '4', '--microbatches', '3', '--seed', '7'];
    const [nats, local] = await Promise.all([caravan([...common, '--stages', '4']), caravan([...common, '--stages', '2', '--in-process'])]);
    const [a, b] = [summaryOf(nats), summaryOf(local)];
    t.is(a.mode, 'nats');
    t.deepEqual(a.losses, b.losses);
    t.is(a.params_sha256, b.params_sha256);
    t.deepEqual(a.devices_by_stage, [device.name, device.name, device.name, device.name]);
    t.true((a.mfu_pct as number) > 0, `MFU ${a.mfu_pct}% of the GPU's bf16 peak`);
    t.true((a.losses as number[])[3] < (a.losses as number[])[0], 'the loss falls');
  });
}
