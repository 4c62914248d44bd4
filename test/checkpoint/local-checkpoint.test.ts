// Stage checkpoints on the local disk: what is written reads back into a
// fresh stage bit for bit, a missing or damaged file is reported by its path,
// and the write-then-rename leaves nothing else behind.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { DEFAULT_OPTIMIZER, EngineStage, type EngineModelConfig, type StageSpec } from '../../native/index.ts';
import { readStageCheckpoint, stageCheckpointPath, writeStageCheckpoint } from '../../runtime/checkpoint/local-checkpoint.ts';
import { randomTokens } from '../support/random-weights.ts';

const model: EngineModelConfig = {
  vocabSize: 32, dModel: 16, nLayers: 2, nHeads: 4, nKvHeads: 2, ffnHidden: 24, maxSeqLen: 8, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
};
const B = 2, T = 4;

function spec(seed: number, layerBegin = 0, layerEnd = model.nLayers): StageSpec {
  return { model, optim: DEFAULT_OPTIMIZER, layerBegin, layerEnd, seed };
}

/** A whole-model stage after `steps` optimizer steps. */
function trained(steps: number, seed = 3): EngineStage {
  const stage = new EngineStage(spec(seed));
  for (let i = 0; i < steps; i++) {
    const tokens = randomTokens(B * T, model.vocabSize, 50 + i);
    stage.forwardTrain(0, tokens, B, T, tokens.map((x) => (x + 1) % model.vocabSize));
    stage.backward(0, null);
    stage.step(1);
  }
  return stage;
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-checkpoint-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a written checkpoint reads back into a fresh stage bit for bit', async (t) => {
  const dir = await tempDir(t);
  const source = trained(3);
  const path = await writeStageCheckpoint(dir, source);
  t.is(path, join(dir, 'stage-0-2.safetensors'));
  t.is(path, stageCheckpointPath(dir, source));
  t.deepEqual(new Uint8Array(await readFile(path)), source.state());

  const restored = new EngineStage(spec(77));
  t.not(restored.paramHash(), source.paramHash());
  await readStageCheckpoint(dir, restored);
  t.is(restored.paramHash(), source.paramHash());
  t.is(restored.optimizerStep, 3);
  t.deepEqual(restored.state(), source.state());
});

test('writing creates the directory and leaves only the checkpoints, even when overwriting', async (t) => {
  const root = await tempDir(t);
  const dir = join(root, 'run-1', 'step-3');
  await writeStageCheckpoint(dir, new EngineStage(spec(1, 0, 1)));
  await writeStageCheckpoint(dir, new EngineStage(spec(1, 1, 2)));
  await writeStageCheckpoint(dir, new EngineStage(spec(2, 0, 1)));
  t.deepEqual((await readdir(dir)).sort(), ['stage-0-1.safetensors', 'stage-1-2.safetensors']);
  t.deepEqual(await readdir(root), ['run-1']);
});

test('an overwritten checkpoint holds the newer state', async (t) => {
  const dir = await tempDir(t);
  const stage = trained(1);
  await writeStageCheckpoint(dir, stage);
  const step1 = stage.paramHash();
  const tokens = randomTokens(B * T, model.vocabSize, 9);
  stage.forwardTrain(0, tokens, B, T, tokens);
  stage.backward(0, null);
  stage.step(1);
  t.not(stage.paramHash(), step1);
  await writeStageCheckpoint(dir, stage);
  t.deepEqual(await readdir(dir), ['stage-0-2.safetensors']);

  const restored = new EngineStage(spec(5));
  await readStageCheckpoint(dir, restored);
  t.is(restored.paramHash(), stage.paramHash());
  t.is(restored.optimizerStep, 2);
});

test('reading a missing checkpoint names the stage and the path', async (t) => {
  const dir = await tempDir(t);
  const stage = new EngineStage(spec(1));
  const before = stage.paramHash();
  const path = join(dir, 'stage-0-2.safetensors');
  const escaped = path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  await t.throwsAsync(readStageCheckpoint(dir, stage), { message: new RegExp(`^no checkpoint for stage \\[0, 2\\) of 2 layers at ${escaped}: ENOENT$`) });
  await t.throwsAsync(readStageCheckpoint(join(dir, 'nowhere'), stage), { message: /at .*nowhere\/stage-0-2\.safetensors: ENOENT/ });
  t.is(stage.paramHash(), before);
  t.deepEqual(await readdir(dir), []);
});

test('a damaged checkpoint is refused naming its path, and the stage is kept', async (t) => {
  const dir = await tempDir(t);
  const path = await writeStageCheckpoint(dir, trained(2));
  const bytes = await readFile(path);
  await writeFile(path, bytes.subarray(0, bytes.length - 100));
  const stage = trained(1, 8);
  const before = stage.state();
  const escaped = path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  await t.throwsAsync(readStageCheckpoint(dir, stage), { message: new RegExp(`^${escaped} \\(loading into stage \\[0, 2\\) of 2 layers\\): not a valid safetensors blob: .*truncated`) });
  t.deepEqual(stage.state(), before);
});

test('a checkpoint of other layers is not picked up: each stage reads its own file', async (t) => {
  const dir = await tempDir(t);
  await writeStageCheckpoint(dir, new EngineStage(spec(1, 0, 1)));
  const other = new EngineStage(spec(1, 1, 2));
  await t.throwsAsync(readStageCheckpoint(dir, other), { message: /no checkpoint for stage \[1, 2\) of 2 layers at .*stage-1-2\.safetensors: ENOENT/ });
});
