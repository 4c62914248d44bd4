// A stitched model as a directory that Hugging Face `transformers` loads as
// LlamaForCausalLM unchanged: model.safetensors (F32, transformers' tensor
// names, which are the engine's own), config.json, generation_config.json,
// and caravan.json with what transformers has no field for (the tokenizer,
// the run, the parameter hash); and model.onnx, the same weights as an ONNX
// graph with a key/value cache for onnxruntime. readExportedModel reads such
// a directory back, checking every tensor against the config.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodeSafeTensors, encodeSafeTensors, hashParams, type SafeTensor } from '../../native/index.ts';
import { headDim, llamaTensorSpecs, validateLlamaConfig, type LlamaConfig } from '../../schemas/model-config.ts';
import { TOKENIZER_NAMES, type TokenizerName } from '../data/index.ts';
import { buildLlamaOnnx } from '../onnx/llama-graph.ts';  // the graph builder alone: no onnxruntime
import type { StitchedModel } from './stitch-stages.ts';

export const EXPORT_FORMAT = 'caravan-export';
export const EXPORT_VERSION = 1;

export interface ExportInfo {
  readonly tokenizer: TokenizerName;
  readonly run?: string;
}

export interface ExportedModel {
  readonly model: LlamaConfig;
  readonly tensors: ReadonlyMap<string, SafeTensor>;
  readonly tokenizer: TokenizerName;
  readonly paramsSha256: string;
}

/** transformers' LlamaConfig fields for this model. */
export function hfLlamaConfig(model: LlamaConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: model.vocabSize,
    hidden_size: model.dModel,
    intermediate_size: model.ffnHidden,
    num_hidden_layers: model.nLayers,
    num_attention_heads: model.nHeads,
    num_key_value_heads: model.nKvHeads,
    head_dim: headDim(model),
    hidden_act: 'silu',
    max_position_embeddings: model.maxSeqLen,
    rms_norm_eps: model.normEps,
    rope_theta: model.ropeTheta,
    rope_scaling: null,
    attention_bias: false,
    attention_dropout: 0.0,
    mlp_bias: false,
    tie_word_embeddings: model.tiedEmbeddings,
    initializer_range: 0.02,
    pretraining_tp: 1,
    use_cache: true,
    torch_dtype: 'float32',
  };
}

/** The LlamaConfig a transformers config.json describes; throws naming a field it cannot map. */
export function fromHfLlamaConfig(hf: Record<string, unknown>, source: string): LlamaConfig {
  const int = (key: string): number => {
    const v = hf[key];
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw new Error(`${source}: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  if (hf.model_type !== 'llama') throw new Error(`${source}: model_type ${JSON.stringify(hf.model_type)}, expected "llama"`);
  if (hf.hidden_act !== undefined && hf.hidden_act !== 'silu') throw new Error(`${source}: hidden_act ${JSON.stringify(hf.hidden_act)} (the engine has SwiGLU with silu)`);
  for (const key of ['attention_bias', 'mlp_bias']) if (hf[key] === true) throw new Error(`${source}: ${key} is true (the engine has no biases)`);
  if (hf.rope_scaling !== undefined && hf.rope_scaling !== null) throw new Error(`${source}: rope_scaling is set (the engine has plain rotary positions)`);
  const model: LlamaConfig = {
    vocabSize: int('vocab_size'),
    dModel: int('hidden_size'),
    nLayers: int('num_hidden_layers'),
    nHeads: int('num_attention_heads'),
    nKvHeads: hf.num_key_value_heads === undefined ? int('num_attention_heads') : int('num_key_value_heads'),
    ffnHidden: int('intermediate_size'),
    maxSeqLen: int('max_position_embeddings'),
    ropeTheta: typeof hf.rope_theta === 'number' ? hf.rope_theta : 10000,
    normEps: typeof hf.rms_norm_eps === 'number' ? hf.rms_norm_eps : 1e-6,
    tiedEmbeddings: hf.tie_word_embeddings === true,
  };
  if (hf.head_dim !== undefined && hf.head_dim !== model.dModel / model.nHeads) {
    throw new Error(`${source}: head_dim ${JSON.stringify(hf.head_dim)} is not hidden_size / num_attention_heads = ${model.dModel / model.nHeads}`);
  }
  validateLlamaConfig(model);
  return model;
}


async function writeAtomically(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** A stitched model as an ExportedModel in memory, without writing it. */
export function exportedFromStitched(stitched: StitchedModel, tokenizer: TokenizerName): ExportedModel {
  return { model: stitched.model, tensors: new Map(stitched.tensors.map((t) => [t.name, t])), tokenizer, paramsSha256: hashParams(stitched.tensors.map((t) => t.data)) };
}

/** The ONNX graph of an exported model (with `kvCache`, the graph generation decodes with). */
export function onnxForExport(exported: ExportedModel, options: { kvCache?: boolean; docString?: string } = {}): Uint8Array {
  return buildLlamaOnnx(exported.model, (name) => {
    const t = exported.tensors.get(name);
    if (!t) throw new Error(`the export has no tensor ${name}`);
    return t.data;
  }, options);
}

/** Writes the directory; returns the sha256 of the parameters in model order (the run summary's params_sha256). */
export async function writeHfModel(dir: string, stitched: StitchedModel, info: ExportInfo): Promise<string> {
  const { model } = stitched;
  if (model.bottlenecks?.length) {
    throw new Error(`this model has residual bottlenecks (at ${model.bottlenecks.map((b) => b.at).join(', ')}): transformers' Llama has no such layers, so it cannot be exported in its layout`);
  }
  await mkdir(dir, { recursive: true });
  const exported = exportedFromStitched(stitched, info.tokenizer);
  const { paramsSha256 } = exported;
  await writeAtomically(join(dir, 'model.safetensors'), encodeSafeTensors(stitched.tensors, { format: 'pt' }));
  await writeAtomically(join(dir, 'config.json'), `${JSON.stringify(hfLlamaConfig(model), null, 2)}\n`);
  await writeAtomically(join(dir, 'model.onnx'), onnxForExport(exported, { kvCache: true, docString: `caravan export, params sha256 ${paramsSha256}` }));
  await writeAtomically(join(dir, 'generation_config.json'), `${JSON.stringify({ do_sample: true, temperature: 1.0, max_length: model.maxSeqLen }, null, 2)}\n`);
  const caravan = { format: EXPORT_FORMAT, version: EXPORT_VERSION, tokenizer: info.tokenizer, run: info.run ?? null, optimizer_step: stitched.optimizerStep, params_sha256: paramsSha256, model };
  await writeAtomically(join(dir, 'caravan.json'), `${JSON.stringify(caravan, null, 2)}\n`);
  return paramsSha256;
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (err) {
    throw new Error(`${path} is not a JSON object: ${(err as Error).message}`);
  }
}

/** Reads an exported directory (or any transformers Llama directory of F32 safetensors with a caravan.json or a byte-level vocabulary). */
export async function readExportedModel(dir: string): Promise<ExportedModel> {
  const model = fromHfLlamaConfig(await readJson(join(dir, 'config.json')), join(dir, 'config.json'));
  let tokenizer: TokenizerName = 'byte';
  const caravanPath = join(dir, 'caravan.json');
  const caravan = await readJson(caravanPath).catch(() => undefined);
  if (caravan) {
    if (!TOKENIZER_NAMES.includes(caravan.tokenizer as TokenizerName)) throw new Error(`${caravanPath}: unknown tokenizer ${JSON.stringify(caravan.tokenizer)}`);
    tokenizer = caravan.tokenizer as TokenizerName;
  } else if (model.vocabSize !== 256) {
    throw new Error(`${caravanPath} is missing, and a vocabulary of ${model.vocabSize} is not byte-level: the tokenizer is unknown`);
  }
  const weightsPath = join(dir, 'model.safetensors');
  let bytes: Uint8Array;
  try {
    bytes = await readFile(weightsPath);
  } catch (err) {
    throw new Error(`cannot read ${weightsPath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const file = decodeSafeTensors(bytes, weightsPath);
  const ordered: SafeTensor[] = [];
  for (const spec of llamaTensorSpecs(model)) {
    const t = file.tensors.get(spec.name);
    if (!t) throw new Error(`${weightsPath}: tensor ${spec.name} is missing`);
    if (t.shape.length !== spec.shape.length || t.shape.some((n, i) => n !== spec.shape[i])) {
      throw new Error(`${weightsPath}: tensor ${spec.name} has shape [${t.shape.join(', ')}], config.json implies [${spec.shape.join(', ')}]`);
    }
    ordered.push(t);
  }
  const expected = new Set(ordered.map((t) => t.name));
  for (const name of file.tensors.keys()) if (!expected.has(name)) throw new Error(`${weightsPath}: unexpected tensor ${name}`);
  return { model, tensors: new Map(ordered.map((t) => [t.name, t])), tokenizer, paramsSha256: hashParams(ordered.map((t) => t.data)) };
}
