// From a run's stage states to one model: the transformers Llama layout
// (names, shapes, dtypes, config.json), the same parameters and logits as the
// engine, validation loss, and generation with onnxruntime.
import { mkdtemp, readFile, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { decodeSafeTensors, encodeSafeTensors } from '../../native/index.ts';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createTokenizer, readCorpusText, TokenDataset, tokenizeCorpus } from '../../runtime/data/index.ts';
import { evalExported } from '../../runtime/export/eval-model.ts';
import { engineFromExport } from '../../runtime/export/exported-engine.ts';
import { generateText } from '../../runtime/export/generate-text.ts';
import { onnxForExport, readExportedModel, writeHfModel } from '../../runtime/export/hf-llama.ts';
import { statesFromCheckpointDir } from '../../runtime/export/run-stage-states.ts';
import { stitchStageStates } from '../../runtime/export/stitch-stages.ts';
import { readStageCheckpoint } from '../../runtime/checkpoint/local-checkpoint.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { KvCacheDecoder, openOnnxSession, runOnnxLogits } from '../../runtime/onnx/index.ts';
import { LocalPipeline } from '../../runtime/train/local-pipeline.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { llamaTensorSpecs } from '../../schemas/model-config.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const dirs: string[] = [];
async function tempDir(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'caravan-export-'));
  dirs.push(d);
  return d;
}
test.after.always(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

// One short in-process run of the `npm start` preset, split in 2 stages,
// shared by the tests below; started by the first test that needs it.
let training: ReturnType<typeof train> | undefined;
const trained = () => (training ??= train());
async function train() {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 60, stages: 2, seqLen: 64, batchSize: 8 } } });
  const dir = await tempDir();
  const summary = await trainLocal({ ...config, checkpointDir: join(dir, 'ckpt'), valBatches: 1 });
  const out = join(dir, 'model');
  const stitched = stitchStageStates(await statesFromCheckpointDir(join(dir, 'ckpt')));
  const sha = await writeHfModel(out, stitched, { tokenizer: 'byte', run: 'local' });
  return { config, dir, summary, out, sha };
}

test('the export has the Llama layout: tensor names, shapes and F32 dtypes, config.json, and the run\'s parameters', async (t) => {
  const { config, summary, out, sha } = await trained();
  t.is(sha, summary.paramsSha256, 'the exported parameters are the run\'s, bit for bit');
  const file = decodeSafeTensors(await readFile(join(out, 'model.safetensors')), 'export');
  t.deepEqual(file.metadata, { format: 'pt' });
  const header = JSON.parse((await readFile(join(out, 'model.safetensors'))).subarray(8, 8 + Number((await readFile(join(out, 'model.safetensors'))).readBigUInt64LE(0))).toString());
  const expected = llamaTensorSpecs(config.model);
  t.is(expected.length, 2 + 9 * 4 + 1, 'embedding, 9 tensors a layer, final norm and head');
  t.deepEqual([...file.tensors.keys()], expected.map((s) => s.name));
  for (const spec of expected) {
    t.deepEqual(file.tensors.get(spec.name)!.shape, spec.shape);
    t.is(header[spec.name].dtype, 'F32');
  }
  t.deepEqual(file.tensors.get('model.layers.3.self_attn.k_proj.weight')!.shape, [64, 128], 'GQA: 2 kv heads of 32');
  const hf = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
  t.like(hf, {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 256, hidden_size: 128, intermediate_size: 352,
    num_hidden_layers: 4, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 32, hidden_act: 'silu',
    max_position_embeddings: 128, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: 'float32',
  });
  const back = await readExportedModel(out);
  t.deepEqual(back.model, config.model);
  t.is(back.paramsSha256, sha);
});

test('onnxruntime on the exported model gives the engine\'s logits (max |Δ| ≤ 1e-4), and the one-stage engine the two-stage run\'s, bitwise', async (t) => {
  const { config, dir, out } = await trained();
  const exported = await readExportedModel(out);
  const B = 2, T = 48;
  const [batch] = new TokenDataset(tokenizeCorpus(createTokenizer('byte'))).valBatches(B, T, 1);
  const engine = engineFromExport(exported).forwardInfer(batch.tokens, B, T);
  const pipeline = new LocalPipeline(config.model, config.optim, 2, config.training.seed);
  for (const stage of pipeline.stages) await readStageCheckpoint(join(dir, 'ckpt'), stage);
  t.deepEqual(pipeline.logits(batch.tokens, B, T), engine);
  const onnx = await runOnnxLogits(onnxForExport(exported), batch.tokens, B, T);
  let maxDiff = 0;
  for (let i = 0; i < engine.length; i++) maxDiff = Math.max(maxDiff, Math.abs(engine[i] - onnx[i]));
  t.true(maxDiff <= 1e-4, `max |Δlogit| ${maxDiff}`);
});

test('model.onnx with its key/value cache gives the full graph\'s logits, token by token', async (t) => {
  const { out } = await trained();
  const exported = await readExportedModel(out);
  const tokens = Array.from(createTokenizer('byte').encode('Call me Ishmael. Some years ago'));
  const T = tokens.length, V = 256;
  const full = await runOnnxLogits(onnxForExport(exported), Int32Array.from(tokens), 1, T);
  const session = await openOnnxSession(await readFile(join(out, 'model.onnx')));
  t.teardown(() => session.release());
  const decoder = new KvCacheDecoder(session, exported.model);
  let maxDiff = 0;
  const prompt = 5;
  const check = (logits: Float32Array, position: number) => {
    for (let v = 0; v < V; v++) maxDiff = Math.max(maxDiff, Math.abs(logits[v] - full[position * V + v]));
  };
  check(await decoder.append(tokens.slice(0, prompt)), prompt - 1);
  for (let i = prompt; i < T; i++) check(await decoder.append([tokens[i]]), i);
  t.is(decoder.pastLength, T);
  t.true(maxDiff <= 1e-4, `max |Δlogit| ${maxDiff}`);
  await t.throwsAsync(decoder.append(new Array(exported.model.maxSeqLen).fill(1)), { message: /exceed maxSeqLen 128/ });
});

test('eval: the exported model\'s validation loss is the run\'s own, and falls with training', async (t) => {
  const { config, dir, out } = await trained();
  const exported = await readExportedModel(out);
  const r = await evalExported(exported, { batches: 4, batchSize: 4, seqLen: 64 });
  const pipeline = new LocalPipeline(config.model, config.optim, 2, config.training.seed);
  for (const stage of pipeline.stages) await readStageCheckpoint(join(dir, 'ckpt'), stage);
  const batches = new TokenDataset(tokenizeCorpus(createTokenizer('byte'))).valBatches(4, 64, 4);
  t.is(r.loss, batches.reduce((s, b) => s + pipeline.evalLoss(b, 4, 64), 0) / 4);
  t.is(r.tokens, 4 * 4 * 64);
  t.true(r.loss < Math.log(256) - 1, `val loss ${r.loss} is well below ln 256`);
  t.is(r.perplexity, Math.exp(r.loss));
});

test('generate: a seed gives the same text; greedy text is drawn from the corpus\' alphabet', async (t) => {
  const { out } = await trained();
  const exported = await readExportedModel(out);
  const sampled = async (seed: number) => (await generateText(exported, 'Call me ', { maxTokens: 40, temperature: 0.9, topK: 20, topP: 0.95, seed })).text;
  const [a, b, c] = [await sampled(5), await sampled(5), await sampled(6)];
  t.is(a, b);
  t.not(a, c, 'another seed, another text');
  const streamed: string[] = [];
  const greedy = await generateText(exported, 'The whale ', { maxTokens: 60, temperature: 0, seed: 1, onText: (d) => streamed.push(d) });
  t.is(streamed.join(''), greedy.text, 'the stream adds up to the text');
  t.is(greedy.tokens.length, 60);
  const alphabet = new Set(readCorpusText());
  const foreign = [...greedy.text].filter((ch) => !alphabet.has(ch));
  t.deepEqual(foreign, [], `greedy text: ${JSON.stringify(greedy.text)}`);
});

test('stitching refuses a missing stage, states of different steps, and models transformers cannot load', async (t) => {
  const { dir } = await trained();
  const blobs = await statesFromCheckpointDir(join(dir, 'ckpt'));
  t.throws(() => stitchStageStates(blobs.slice(0, 1)), { message: /layers \[2, 4\) are missing/ });
  t.throws(() => stitchStageStates([blobs[0], blobs[0], blobs[1]]), { message: /overlap the stage before/ });
  const older = decodeSafeTensors(blobs[1].bytes, 'x');
  const relabelled = encodeSafeTensors([...older.tensors.values()], { ...older.metadata, optimizer_step: '7' });
  t.throws(() => stitchStageStates([blobs[0], { source: 'old', bytes: relabelled }]), { message: /old: optimizer step 7, but .* is at step 60/ });
  const bottlenecked = stitchStageStates(blobs);
  await t.throwsAsync(writeHfModel(join(dir, 'nope'), { ...bottlenecked, model: { ...bottlenecked.model, bottlenecks: [{ at: 2, width: 4 }] } }, { tokenizer: 'byte' }), {
    message: /residual bottlenecks \(at 2\): transformers' Llama has no such layers/,
  });
  const broken = await tempDir();
  await writeHfModel(broken, bottlenecked, { tokenizer: 'byte' });
  await unlink(join(broken, 'model.safetensors'));
  await t.throwsAsync(readExportedModel(broken), { message: /cannot read .*model\.safetensors: ENOENT/ });
  await t.throwsAsync(statesFromCheckpointDir(join(dir, 'nothing-here')), { message: /cannot read checkpoint directory .*: ENOENT/ });
});

test('caravan export from a NATS run\'s final states (layers split 3 and 1) gives the run summary\'s params_sha256; eval and generate run from the CLI', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 3, stages: 2, stageLayers: [3, 1], seqLen: 32, batchSize: 4 } } });
  const summary = await trainDistributed({ config, nats: server.url, run: 'exported', log: createLogger('test', 'silent') });
  const out = join(await tempDir(), 'model');
  const exported = summaryOf(await caravan(['export', '--nats', server.url, '--run', 'exported', '--out', out, '--json']));
  t.is(exported.params_sha256, summary.params_sha256);
  t.is(exported.stages, 2);
  const evaluated = summaryOf(await caravan(['eval', '--model', out, '--batches', '2', '--batch', '2', '--seq', '32', '--json']));
  t.true((evaluated.loss as number) > 0 && (evaluated.loss as number) < Math.log(256) + 0.5);
  const { dir } = await trained();
  const fromCheckpoints = summaryOf(await caravan(['eval', '--checkpoint-dir', join(dir, 'ckpt'), '--batches', '2', '--batch', '2', '--seq', '32', '--json']));
  const fromExport = summaryOf(await caravan(['eval', '--model', join(dir, 'model'), '--batches', '2', '--batch', '2', '--seq', '32', '--json']));
  t.is(fromCheckpoints.loss, fromExport.loss, 'a run\'s checkpoints evaluate as its export does');
  const g = summaryOf(await caravan(['generate', '--model', out, '--prompt', 'Ahab', '--max-tokens', '8', '--json']));
  t.is(g.tokens, 8);
  const missing = await caravan(['export', '--nats', server.url, '--run', 'no-such-run', '--out', out]);
  t.is(missing.code, 1);
  t.regex(missing.stderr, /no run 'no-such-run'/);
  const both = await caravan(['export', '--checkpoint-dir', out, '--nats', server.url, '--out', out]);
  t.regex(both.stderr, /give exactly one source/);
});

test('caravan train --export writes the trained model (as npm start does)', async (t) => {
  const out = join(await tempDir(), 'model');
  const summary = summaryOf(await caravan(['train', '--in-process', '--steps', '3', '--stages', '2', '--seq', '32', '--batch', '4', '--export', out, '--json']));
  const caravanJson = JSON.parse(await readFile(join(out, 'caravan.json'), 'utf8'));
  t.is(caravanJson.params_sha256, summary.params_sha256);
  t.is(caravanJson.tokenizer, 'byte');
  t.regex(JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')).scripts.start, /--export runs\/tiny/);
});
