// EngineStage.state() / loadState(): a stage's parameters, AdamW moments and
// step survive a round trip bit for bit, the blob is a plain safetensors file
// other tools can read, and a blob that does not fit the stage is refused
// before anything is written.
import test from 'ava';
import {
  DEFAULT_OPTIMIZER, EngineStage, STATE_FORMAT, STATE_VERSION, decodeSafeTensors, encodeSafeTensors, splitLayers,
  type EngineModelConfig, type SafeTensor, type StageSpec,
} from '../../native/index.ts';
import { mulberry32, randomTokens } from '../support/random-weights.ts';

const model: EngineModelConfig = {
  vocabSize: 32, dModel: 16, nLayers: 4, nHeads: 4, nKvHeads: 2, ffnHidden: 24, maxSeqLen: 8, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
};
const B = 2, T = 4, N = B * T;

function spec(layerBegin: number, layerEnd: number, seed = 5, m: EngineModelConfig = model): StageSpec {
  return { model: m, optim: { ...DEFAULT_OPTIMIZER, warmupSteps: 2 }, layerBegin, layerEnd, seed };
}

function floats(n: number, seed: number): Float32Array {
  const rand = mulberry32(seed);
  return Float32Array.from({ length: n }, () => 2 * rand() - 1);
}

/** `steps` optimizer steps of one stage on its own, fed deterministic inputs (and output gradients) from `seed`. */
function train(stage: EngineStage, steps: number, seed: number): void {
  const m = stage.spec.model;
  for (let i = 0; i < steps; i++) {
    const s = seed + 10 * i;
    const input = stage.isFirst ? randomTokens(N, m.vocabSize, s) : floats(N * m.dModel, s);
    stage.forwardTrain(0, input, B, T, stage.isLast ? randomTokens(N, m.vocabSize, s + 1) : undefined);
    stage.backward(0, stage.isLast ? null : floats(N * m.dModel, s + 2).map((g) => g * 0.01));
    stage.step(1);
  }
}

function trainedStage(layerBegin: number, layerEnd: number, steps = 3): EngineStage {
  const stage = new EngineStage(spec(layerBegin, layerEnd));
  train(stage, steps, 1000);
  return stage;
}

// --- round trip --------------------------------------------------------------

for (const [layerBegin, layerEnd] of [...splitLayers(model.nLayers, 3), [0, model.nLayers] as [number, number]]) {
  test(`stage [${layerBegin}, ${layerEnd}): state round trip restores parameters, moments and step`, (t) => {
    const source = trainedStage(layerBegin, layerEnd);
    const target = new EngineStage(spec(layerBegin, layerEnd, 99));
    t.not(target.paramHash(), source.paramHash(), 'a different seed should give different initial weights');

    const blob = source.state();
    target.loadState(blob);
    t.is(target.paramHash(), source.paramHash());
    t.is(target.optimizerStep, 3);
    t.deepEqual(target.state(), blob, 'the loaded stage does not write back the same state');

    // Bitwise-equal steps afterwards: the AdamW moments and the schedule position were restored too.
    train(source, 2, 2000);
    train(target, 2, 2000);
    t.is(target.optimizerStep, 5);
    t.is(target.paramHash(), source.paramHash());
    t.deepEqual(target.state(), source.state());
  });
}

test('the continuation check notices lost moments', (t) => {
  const source = trainedStage(0, 2);
  const file = decodeSafeTensors(source.state(), 'source');
  const zeroed = [...file.tensors.values()].map((x) => (x.name.startsWith('optimizer.') ? { ...x, data: new Float32Array(x.data.length) } : x));
  const target = new EngineStage(spec(0, 2, 99));
  target.loadState(encodeSafeTensors(zeroed, file.metadata));
  t.is(target.paramHash(), source.paramHash());
  train(source, 2, 2000);
  train(target, 2, 2000);
  t.not(target.paramHash(), source.paramHash());
});

test('loadState discards gradients accumulated before it', (t) => {
  const source = trainedStage(2, 4);
  const target = new EngineStage(spec(2, 4, 99));
  target.forwardTrain(0, floats(N * model.dModel, 1), B, T, randomTokens(N, model.vocabSize, 2));
  target.backward(0, null);
  t.true(target.gradSumSquares().some((g) => g > 0));
  target.loadState(source.state());
  t.true(target.gradSumSquares().every((g) => g === 0));
});

// --- the blob as a safetensors file ------------------------------------------

/** Parsed by hand, not with decodeSafeTensors, so the test does not trust the code it checks. */
function rawHeader(blob: Uint8Array): { headerLen: number; header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; metadata: Record<string, string> } {
  const headerLen = Number(Buffer.from(blob.buffer, blob.byteOffset, 8).readBigUInt64LE(0));
  const { __metadata__: metadata, ...header } = JSON.parse(Buffer.from(blob.buffer, blob.byteOffset + 8, headerLen).toString('utf8'));
  return { headerLen, header, metadata };
}

const layerTensorNames = (l: number) => [
  `model.layers.${l}.input_layernorm.weight`, `model.layers.${l}.self_attn.q_proj.weight`, `model.layers.${l}.self_attn.k_proj.weight`,
  `model.layers.${l}.self_attn.v_proj.weight`, `model.layers.${l}.self_attn.o_proj.weight`, `model.layers.${l}.post_attention_layernorm.weight`,
  `model.layers.${l}.mlp.gate_proj.weight`, `model.layers.${l}.mlp.up_proj.weight`, `model.layers.${l}.mlp.down_proj.weight`,
];

for (const [layerBegin, layerEnd, names] of [
  [0, 2, ['model.embed_tokens.weight', ...layerTensorNames(0), ...layerTensorNames(1)]],
  [2, 3, layerTensorNames(2)],
  [3, 4, [...layerTensorNames(3), 'model.norm.weight', 'lm_head.weight']],
] as const) {
  test(`stage [${layerBegin}, ${layerEnd}): state is a safetensors file with Llama names and optimizer moments`, (t) => {
    const stage = trainedStage(layerBegin, layerEnd);
    const blob = stage.state();
    const { headerLen, header, metadata } = rawHeader(blob);

    t.is((8 + headerLen) % 8, 0, 'the data section must start 8-byte aligned');
    t.deepEqual(stage.tensors().map((e) => e.name), [...names]);
    const expected = [...names, ...names.map((n) => `optimizer.exp_avg.${n}`), ...names.map((n) => `optimizer.exp_avg_sq.${n}`)];
    t.deepEqual(Object.keys(header).sort(), [...expected].sort());

    const shapes = new Map(stage.tensors().map((e) => [e.name, e.shape]));
    const dataStart = 8 + headerLen;
    let at = 0;
    for (const name of expected) {
      const entry = header[name];
      t.is(entry.dtype, 'F32', name);
      t.deepEqual(entry.shape, [...shapes.get(name.replace(/^optimizer\.exp_avg(_sq)?\./, ''))!], name);
      const numel = entry.shape.reduce((a, b) => a * b, 1);
      t.deepEqual(entry.data_offsets, [at, at + 4 * numel], `${name} is not contiguous with the tensor before it`);
      at += 4 * numel;
    }
    t.is(blob.length, dataStart + at, 'bytes beyond the last tensor');

    // Parameter bytes are the stage's parameters, little-endian F32.
    for (const name of names) {
      const [begin, end] = header[name].data_offsets;
      const bytes = Buffer.from(blob.buffer, blob.byteOffset + dataStart + begin, end - begin);
      const values = Array.from({ length: (end - begin) / 4 }, (_, i) => bytes.readFloatLE(4 * i));
      t.deepEqual(values, Array.from(stage.param(name)), name);
    }
    // After three steps the moments are real, not zeros.
    const m = header[`optimizer.exp_avg_sq.${names[1]}`].data_offsets;
    t.true(Buffer.from(blob.buffer, blob.byteOffset + dataStart + m[0], m[1] - m[0]).some((b) => b !== 0));

    t.deepEqual(metadata, {
      format: STATE_FORMAT,
      version: String(STATE_VERSION),
      layer_begin: String(layerBegin),
      layer_end: String(layerEnd),
      optimizer_step: '3',
      model: JSON.stringify(model),
      optimizer: JSON.stringify(stage.spec.optim),
    });
  });
}

// --- blobs that must be refused ----------------------------------------------

const SOURCE: [number, number] = [2, 3];

/** A target stage with a state of its own (one step in), and the state it must keep. */
function target(): { stage: EngineStage; before: { hash: string; step: number; state: Uint8Array } } {
  const stage = new EngineStage(spec(...SOURCE, 99));
  train(stage, 1, 3000);
  return { stage, before: { hash: stage.paramHash(), step: stage.optimizerStep, state: stage.state() } };
}

function refused(t: import('ava').ExecutionContext, blob: Uint8Array, message: RegExp): void {
  const { stage, before } = target();
  t.throws(() => stage.loadState(blob, 'ckpt/stage-2-3.safetensors'), { message });
  t.is(stage.paramHash(), before.hash, 'a refused blob changed the parameters');
  t.is(stage.optimizerStep, before.step, 'a refused blob changed the optimizer step');
  t.deepEqual(stage.state(), before.state, 'a refused blob changed the moments');
}

/** The source state with its tensors and metadata edited, re-encoded. */
function edited(edit: (tensors: SafeTensor[], metadata: Record<string, string>) => SafeTensor[] | void): Uint8Array {
  const file = decodeSafeTensors(trainedStage(...SOURCE).state(), 'source');
  const tensors = [...file.tensors.values()];
  const metadata = { ...file.metadata };
  return encodeSafeTensors(edit(tensors, metadata) ?? tensors, metadata);
}

const prefix = /^ckpt\/stage-2-3\.safetensors \(loading into stage \[2, 3\) of 4 layers\): /;
const named = (rest: RegExp) => new RegExp(prefix.source + rest.source);

test('a sound blob from the same layers loads (the control for the refusals below)', (t) => {
  const { stage } = target();
  const source = trainedStage(...SOURCE);
  stage.loadState(edited(() => {}), 'ckpt/stage-2-3.safetensors');
  t.is(stage.paramHash(), source.paramHash());
});

test('truncated blobs are refused wherever they are cut', (t) => {
  const blob = trainedStage(...SOURCE).state();
  const headerLen = Number(Buffer.from(blob.buffer, blob.byteOffset, 8).readBigUInt64LE(0));
  const invalid = (why: RegExp) => named(new RegExp(`not a valid safetensors blob: ${why.source}`));
  refused(t, blob.subarray(0, 0), invalid(/0 bytes, shorter than the 8-byte header length/));
  refused(t, blob.subarray(0, 5), invalid(/5 bytes, shorter than the 8-byte header length/));
  refused(t, blob.subarray(0, 8), invalid(/header length \d+ exceeds the 0 bytes that follow \(truncated\?\)/));
  refused(t, blob.subarray(0, 8 + Math.floor(headerLen / 2)), invalid(/header length \d+ exceeds the \d+ bytes that follow \(truncated\?\)/));
  refused(t, blob.subarray(0, 8 + headerLen), invalid(/tensor \S+ ends at byte \d+ but the data section has 0 bytes \(truncated\?\)/));
  refused(t, blob.subarray(0, 8 + headerLen + Math.floor((blob.length - 8 - headerLen) / 2)), invalid(/tensor \S+ ends at byte \d+ but the data section has \d+ bytes \(truncated\?\)/));
  refused(t, blob.subarray(0, blob.length - 1), invalid(/tensor \S+ ends at byte \d+ but the data section has \d+ bytes \(truncated\?\)/));
});

test('bytes that are not safetensors at all are refused', (t) => {
  const rand = mulberry32(42);
  const noise = Uint8Array.from({ length: 4096 }, () => Math.floor(rand() * 256));
  refused(t, noise, named(/not a valid safetensors blob: header length \d+ exceeds/));
  refused(t, Buffer.from(JSON.stringify({ format: STATE_FORMAT, version: '1' })), named(/not a valid safetensors blob: header length \d+ exceeds/));

  const notJson = Buffer.concat([Buffer.from([9, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('not json!')]);
  refused(t, notJson, named(/not a valid safetensors blob: header is not JSON/));
  const array = Buffer.concat([Buffer.from([2, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('[]')]);
  refused(t, array, named(/not a valid safetensors blob: header is not a JSON object/));
});

test('a state of another layer range is refused', (t) => {
  refused(t, trainedStage(1, 2).state(), named(/state holds layers \[1, 2\)/));
  refused(t, trainedStage(2, 4).state(), named(/state holds layers \[2, 4\)/));
});

test('a state of another model config is refused, naming the field', (t) => {
  const other = (m: EngineModelConfig) => {
    const s = new EngineStage(spec(...SOURCE, 5, m));
    train(s, 1, 1000);
    return s.state();
  };
  refused(t, other({ ...model, dModel: 32 }), named(/model dModel is 32 in the state, 16 here/));
  refused(t, other({ ...model, vocabSize: 64 }), named(/model vocabSize is 64 in the state, 32 here/));
  refused(t, other({ ...model, ropeTheta: 500000 }), named(/model ropeTheta is 500000 in the state, 10000 here/));
  refused(t, edited((_, meta) => { meta.model = '{oops'; }), named(/model metadata is not JSON/));
});

test('an unknown state version is refused', (t) => {
  refused(t, edited((_, meta) => { meta.version = '99'; }), named(/unknown state version 99 \(this build reads 1\)/));
});

test('a safetensors file that is not a caravan stage state is refused', (t) => {
  refused(t, edited((_, meta) => { delete meta.format; }), named(/not a caravan stage state \(format null\)/));
  refused(t, edited((_, meta) => { for (const k of Object.keys(meta)) delete meta[k]; }), named(/not a caravan stage state \(format null\)/));
  refused(t, edited((_, meta) => { meta.format = 'pt'; }), named(/not a caravan stage state \(format "pt"\)/));
});

test('a bad optimizer_step is refused', (t) => {
  refused(t, edited((_, meta) => { meta.optimizer_step = '-1'; }), named(/bad optimizer_step "-1"/));
  refused(t, edited((_, meta) => { meta.optimizer_step = 'three'; }), named(/bad optimizer_step "three"/));
  refused(t, edited((_, meta) => { delete meta.optimizer_step; }), named(/bad optimizer_step null/));
});

test('an empty optimizer_step is refused, not read as step 0', (t) => {
  refused(t, edited((_, meta) => { meta.optimizer_step = ''; }), named(/bad optimizer_step/));
});

test('an optimizer_step beyond what the engine holds is refused before anything is written', (t) => {
  // A safe integer in JavaScript, but past the engine's int32 step counter.
  refused(t, edited((_, meta) => { meta.optimizer_step = '3000000000'; }), named(/bad optimizer_step "3000000000"/));
});

test('a state missing a tensor is refused, naming it', (t) => {
  // The last tensor written: a loader that copied as it went would have overwritten everything else first.
  refused(t, edited((ts) => ts.filter((x) => x.name !== 'optimizer.exp_avg_sq.model.layers.2.mlp.down_proj.weight')),
    named(/tensor optimizer\.exp_avg_sq\.model\.layers\.2\.mlp\.down_proj\.weight is missing/));
  refused(t, edited((ts) => ts.filter((x) => x.name !== 'model.layers.2.self_attn.k_proj.weight')),
    named(/tensor model\.layers\.2\.self_attn\.k_proj\.weight is missing/));
});

test('a state with an extra tensor is refused, naming it', (t) => {
  refused(t, edited((ts) => [...ts, { name: 'model.layers.3.input_layernorm.weight', shape: [16], data: new Float32Array(16) }]),
    named(/unexpected tensor model\.layers\.3\.input_layernorm\.weight/));
  refused(t, edited((ts) => [...ts, { name: 'optimizer.step', shape: [], data: new Float32Array(1) }]), named(/unexpected tensor optimizer\.step/));
});

test('a tensor of the wrong shape is refused, naming it and both shapes', (t) => {
  // Same element count, transposed: only the shape check can catch it.
  refused(t, edited((ts) => ts.map((x) => (x.name === 'optimizer.exp_avg_sq.model.layers.2.mlp.down_proj.weight' ? { ...x, shape: [24, 16] } : x))),
    named(/tensor optimizer\.exp_avg_sq\.model\.layers\.2\.mlp\.down_proj\.weight has shape \[24, 16\], expected \[16, 24\]/));
  refused(t, edited((ts) => ts.map((x) => (x.name === 'model.layers.2.input_layernorm.weight' ? { ...x, shape: [17], data: new Float32Array(17) } : x))),
    named(/tensor model\.layers\.2\.input_layernorm\.weight has shape \[17\], expected \[16\]/));
});

test('a tensor of another dtype is refused', (t) => {
  const blob = trainedStage(...SOURCE).state();
  const { headerLen } = rawHeader(blob);
  const json = Buffer.from(blob.buffer, blob.byteOffset + 8, headerLen).toString('utf8').replace('"dtype":"F32"', '"dtype":"F16"');
  const edited16 = Buffer.concat([Buffer.from(blob.subarray(0, 8)), Buffer.from(json), Buffer.from(blob.subarray(8 + headerLen))]);
  refused(t, edited16, named(/not a valid safetensors blob: tensor \S+ has dtype F16; only F32 is supported/));
});

test('a state read at an odd offset of a pooled Buffer decodes (its tensors are copied out, not viewed)', (t) => {
  const blob = encodeSafeTensors([{ name: 'a', shape: [3], data: Float32Array.of(1, 2, 3) }, { name: 'b', shape: [1], data: Float32Array.of(4) }]);
  const pool = Buffer.alloc(blob.length + 7);
  pool.set(blob, 3);
  const file = decodeSafeTensors(pool.subarray(3, 3 + blob.length), 'odd offset');
  t.deepEqual([...file.tensors.get('a')!.data], [1, 2, 3]);
  t.deepEqual([...file.tensors.get('b')!.data], [4]);
});
