// Residual bottlenecks in the engine: the model stays one model however it is
// split (a bottleneck inside a stage computes what one on the wire does, MX
// int8 and re-embedding included), stages take and send k channels where one
// sits, and bad bottleneck configs and shapes are refused by name.
import test from 'ava';
import { EngineStage } from '../../native/index.ts';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { llamaTensorSpecs, validateLlamaConfig, type LlamaConfig } from '../../schemas/model-config.ts';
import { B, T, corpusBatches, smallModel, smallOptim } from '../support/tiny-run.ts';

const compressed: LlamaConfig = {
  ...smallModel,
  bottlenecks: [{ at: 1, width: 8 }, { at: 2, width: 2 }, { at: 3, width: 16 }],
  bottleneckQuant: 'mxint8',
  bottleneckEmbed: true,
};

function run(model: LlamaConfig, stages: number, steps = 8) {
  const p = new LocalPipeline(model, smallOptim, stages, 1);
  const losses = Array.from({ length: steps }, (_, step) => p.trainStep(corpusBatches(step), B, T, 1).loss);
  return { losses, hash: p.paramHash(), tensors: p.stages.flatMap((s) => s.tensors().map((e) => `${e.name}[${e.shape.join(',')}]`)) };
}

test('with bottlenecks, MX int8 and re-embedding, 1, 2 and 4 stages train to bitwise identical losses and parameters', (t) => {
  const one = run(compressed, 1), two = run(compressed, 2), four = run(compressed, 4);
  t.true(one.losses[7] < one.losses[0] - 0.3, `training moved the loss: ${one.losses[0]} → ${one.losses[7]}`);
  t.deepEqual(two.losses, one.losses);
  t.deepEqual(four.losses, one.losses);
  t.is(two.hash, one.hash);
  t.is(four.hash, one.hash);
  t.deepEqual(four.tensors, one.tensors, 'stages hold the same tensors in the same model order');
  t.deepEqual(one.tensors, llamaTensorSpecs(compressed).map((s) => `${s.name}[${s.shape.join(',')}]`), 'and the schema lists them so');
  const plain = run({ ...compressed, bottleneckQuant: 'none' }, 2);
  t.notDeepEqual(plain.losses, one.losses, 'quantization is part of the model: it changes the numbers');
  const noEmbed = run({ ...compressed, bottleneckEmbed: false }, 2);
  t.notDeepEqual(noEmbed.losses, one.losses);
  t.is(noEmbed.tensors.filter((n) => n.includes('embed_tokens')).length, 1, 'without re-embedding only stage 0 has an embedding');
  t.is(one.tensors.filter((n) => n.includes('embed_tokens')).length, 4, 'with it every bottleneck has its own');
});

test('a stage that re-embeds tokens needs the token ids beside its activations, and says so', (t) => {
  const stage = new EngineStage({ model: compressed, optim: smallOptim, layerBegin: 2, layerEnd: 4, seed: 1 });
  const first = new EngineStage({ model: compressed, optim: smallOptim, layerBegin: 0, layerEnd: 2, seed: 1 });
  t.true(stage.needsTokens);
  t.false(first.needsTokens, 'stage 0 takes the tokens as its input anyway');
  t.false(new EngineStage({ model: { ...compressed, bottleneckEmbed: false }, optim: smallOptim, layerBegin: 2, layerEnd: 4, seed: 1 }).needsTokens);
  const z = new Float32Array(B * T * 2);
  t.throws(() => stage.forwardTrain(0, z, B, T), { message: /stage \[2, 4\) of 4 layers, microbatch 0: this stage re-embeds tokens at its bottleneck and needs the microbatch's token ids as an Int32Array, got nothing/ });
  t.throws(() => stage.forwardTrain(0, z, B, T, undefined, new Int32Array(3)), { message: /expected token ids of shape \[4,32\], got 3 values/ });
  const bad = new Int32Array(B * T);
  bad[7] = 999;
  t.throws(() => stage.forwardTrain(0, z, B, T, new Int32Array(B * T), bad), { message: /token id 999 at position 7 is outside the vocabulary/ });
  const [batch] = corpusBatches(0);
  t.is(typeof stage.forwardTrain(0, z, B, T, batch.targets, batch.tokens), 'number', 'with them it trains');
});

test('a stage takes and sends k channels where a bottleneck sits at its boundary, d elsewhere', (t) => {
  const model: LlamaConfig = { ...smallModel, bottlenecks: [{ at: 2, width: 4 }] };
  const spec = { model, optim: smallOptim, seed: 1 };
  const first = new EngineStage({ ...spec, layerBegin: 0, layerEnd: 2 });
  const second = new EngineStage({ ...spec, layerBegin: 2, layerEnd: 3 });
  const third = new EngineStage({ ...spec, layerBegin: 3, layerEnd: 4 });
  t.deepEqual([first.outWidth, second.inWidth, second.outWidth, third.inWidth], [4, 4, 64, 64]);
  const [batch] = corpusBatches(0);
  const z = first.forwardTrain(0, batch.tokens, B, T) as Float32Array;
  t.is(z.length, B * T * 4);
  const h = second.forwardTrain(0, z, B, T) as Float32Array;
  t.is(h.length, B * T * 64);
  third.forwardTrain(0, h, B, T, batch.targets);
  const dh = third.backward(0, null)!;
  const dz = second.backward(0, dh)!;
  t.is(dz.length, B * T * 4, 'the gradient goes back through the bottleneck as k channels');
  t.is(first.backward(0, dz), null);
  t.throws(() => second.forwardTrain(1, new Float32Array(B * T * 64), B, T), {
    message: /stage \[2, 3\) of 4 layers, microbatch 1: expected activations of shape \[4,32,4\] \(512 floats\), got 8192/,
  });
  first.forwardTrain(2, batch.tokens, B, T);
  t.throws(() => first.backward(2, new Float32Array(B * T * 64)), { message: /expected a gradient of shape \[4,32,4\]/ });
});

test('bad bottleneck configs are refused, naming the field', (t) => {
  const bad = (extra: Partial<LlamaConfig>) => () => validateLlamaConfig({ ...smallModel, ...extra });
  t.throws(bad({ bottlenecks: [{ at: 0, width: 4 }] }), { message: /bottlenecks\[0\]\.at must be an integer in \(0, 4\)/ });
  t.throws(bad({ bottlenecks: [{ at: 2, width: 4 }, { at: 2, width: 4 }] }), { message: /bottlenecks\[1\]\.at must be an integer in \(2, 4\)/ });
  t.throws(bad({ bottlenecks: [{ at: 4, width: 4 }] }), { message: /bottlenecks\[0\]\.at/ });
  t.throws(bad({ bottlenecks: [{ at: 1, width: 65 }] }), { message: /bottlenecks\[0\]\.width must be an integer in \[1, dModel=64\], got 65/ });
  t.throws(bad({ bottleneckQuant: 'mxint8' }), { message: /'mxint8' needs at least one bottleneck/ });
  t.throws(bad({ bottleneckQuant: 'int4' as 'none' }), { message: /bottleneckQuant must be 'none' or 'mxint8', got "int4"/ });
  t.throws(bad({ bottleneckEmbed: true }), { message: /bottleneckEmbed needs at least one bottleneck/ });
  t.throws(() => new EngineStage({ model: { ...smallModel, bottlenecks: [{ at: 3, width: 4 }, { at: 1, width: 4 }] }, optim: smallOptim, layerBegin: 0, layerEnd: 4, seed: 1 }), {
    message: /invalid config: bottleneck at 1: positions must increase within \[1, nLayers\)/,
  });
});

test('a checkpoint of a model with other bottlenecks is refused, naming the field', (t) => {
  const a = new EngineStage({ model: compressed, optim: smallOptim, layerBegin: 2, layerEnd: 4, seed: 1 });
  const other: LlamaConfig = { ...compressed, bottlenecks: [{ at: 1, width: 8 }, { at: 2, width: 2 }, { at: 3, width: 8 }] };
  const b = new EngineStage({ model: other, optim: smallOptim, layerBegin: 2, layerEnd: 4, seed: 1 });
  t.throws(() => b.loadState(a.state()), { message: /model bottlenecks is .* in the state/ });
  const twin = new EngineStage({ model: compressed, optim: smallOptim, layerBegin: 2, layerEnd: 4, seed: 1 });
  twin.loadState(a.state());
  t.is(twin.paramHash(), a.paramHash());
});
