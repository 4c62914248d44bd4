// Builds the ONNX inference graph of the Llama-style model of docs/engine.md:
// input_ids int64 [batch, seq] -> logits float32 [batch, seq, V].
//
// It is the independent oracle for the engine's forward pass and the graph we
// export and benchmark, so it is written the way an exporter would write it:
// checkpoint tensors are initializers under their checkpoint names and shapes
// ([out, in]; linears go through a Transpose node that ORT constant-folds), and
// RMSNorm is spelt Pow/ReduceMean/Add/Sqrt/Div/Mul, the pattern ORT fuses into
// SimplifiedLayerNormalization. It is not a training graph.
//
// With `kvCache`, the graph also takes each layer's keys and values of the
// tokens before (past_key_values.<i>.key/.value [batch, Hkv, past, hd], past
// may be 0) and returns them with this call's appended (present.<i>.key/
// .value): a generator feeds one new token a call instead of the whole
// context. Positions start at `past`, and the causal mask lets a query at
// position past+i see keys 0..past+i.

import { elementCount, headDim, llamaTensorSpecs, validateLlamaConfig, type LlamaConfig, type TensorSpec } from '../../schemas/model-config.ts';
import { attr, floatTensor, OnnxGraph } from './onnx-graph.ts';

// Opset 17 with IR version 8 is what torch.onnx exports by default; it keeps
// ReduceMean's axes an attribute, which every ORT fusion recognises.
export const LLAMA_ONNX_OPSET = 17;
export const LLAMA_ONNX_IR_VERSION = 8;

/** A weight with its stored shape, so the builder can check more than the element count. */
export interface ShapedWeight {
  readonly data: Float32Array;
  readonly shape: readonly number[];
}

export type WeightSource = (name: string) => Float32Array | ShapedWeight;

export interface BuildLlamaOnnxOptions {
  /** ModelProto graph name; default "caravan-llama". */
  readonly graphName?: string;
  /** Past keys and values in, present ones out (see the header). */
  readonly kvCache?: boolean;
  readonly docString?: string;
}

const sameShape = (a: readonly number[], b: readonly number[]): boolean => a.length === b.length && a.every((x, i) => x === b[i]);
const fmt = (shape: readonly number[]): string => `[${shape.join(', ')}]`;

function readWeight(weights: WeightSource, spec: TensorSpec): Float32Array {
  let got: Float32Array | ShapedWeight | undefined;
  try {
    got = weights(spec.name);
  } catch (err) {
    throw new Error(`buildLlamaOnnx: reading ${spec.name}: ${(err as Error).message}`, { cause: err });
  }
  const expected = elementCount(spec.shape);
  if (got instanceof Float32Array) {
    if (got.length !== expected) {
      throw new Error(
        `buildLlamaOnnx: ${spec.name}: expected shape ${fmt(spec.shape)} (${expected} values), got ${got.length} values`,
      );
    }
    return got;
  }
  if (got === undefined || got === null || !(got.data instanceof Float32Array)) {
    throw new Error(`buildLlamaOnnx: ${spec.name}: no Float32Array for this tensor (shape ${fmt(spec.shape)})`);
  }
  if (!sameShape(got.shape, spec.shape)) {
    throw new Error(`buildLlamaOnnx: ${spec.name}: expected shape ${fmt(spec.shape)}, got ${fmt(got.shape)}`);
  }
  if (got.data.length !== expected) {
    throw new Error(
      `buildLlamaOnnx: ${spec.name}: shape ${fmt(spec.shape)} needs ${expected} values, data has ${got.data.length}`,
    );
  }
  return got.data;
}

/**
 * cos/sin of p·inv_freq[i mod hd/2] for every position p < maxSeqLen, laid out
 * [maxSeqLen, hd] with the half-table repeated, as rotate_half expects. Angles
 * are computed in float64 so the only rounding is the final one to float32.
 */
export function rotaryTables(config: LlamaConfig): { cos: Float32Array; sin: Float32Array } {
  const hd = headDim(config);
  const half = hd / 2;
  const cos = new Float32Array(config.maxSeqLen * hd);
  const sin = new Float32Array(config.maxSeqLen * hd);
  for (let p = 0; p < config.maxSeqLen; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * Math.pow(config.ropeTheta, (-2 * i) / hd);
      cos[p * hd + i] = cos[p * hd + i + half] = Math.cos(a);
      sin[p * hd + i] = sin[p * hd + i + half] = Math.sin(a);
    }
  }
  return { cos, sin };
}

export function buildLlamaOnnx(config: LlamaConfig, weights: WeightSource, options: BuildLlamaOnnxOptions = {}): Uint8Array {
  validateLlamaConfig(config);
  if (config.bottlenecks?.length) {
    throw new Error(`buildLlamaOnnx: models with residual bottlenecks (at ${config.bottlenecks.map((b) => b.at).join(', ')}) have no ONNX graph yet`);
  }
  const { vocabSize: V, nLayers, nKvHeads: Hkv } = config;
  const hd = headDim(config);
  const g = new OnnxGraph();

  for (const spec of llamaTensorSpecs(config)) g.addFloatInitializer(spec.name, spec.shape, readWeight(weights, spec));
  const rope = rotaryTables(config);
  const tables: Rotary = {
    cos: g.addFloatInitializer('model.rotary_emb.cos_table', [config.maxSeqLen, hd], rope.cos),
    sin: g.addFloatInitializer('model.rotary_emb.sin_table', [config.maxSeqLen, hd], rope.sin),
  };

  const inputIds = g.addInput('input_ids', 'int64', ['batch', 'seq']);
  const kvCache = options.kvCache === true;
  const past: PastKv[] = kvCache
    ? Array.from({ length: nLayers }, (_, i) => ({
      key: g.addInput(`past_key_values.${i}.key`, 'float32', ['batch', Hkv, 'past', hd]),
      value: g.addInput(`past_key_values.${i}.value`, 'float32', ['batch', Hkv, 'past', hd]),
    }))
    : [];
  const { rotary, mask } = positions(g, inputIds, kvCache ? past[0].key : undefined, tables);

  let x = g.node('Gather', '/model/embed_tokens/Gather', ['model.embed_tokens.weight', inputIds], [attr.int('axis', 0)]);
  const layers: LayerContext = { config, hd, rotary, mask, scale: g.float(1 / Math.sqrt(hd)), kvCache, past };
  for (let i = 0; i < nLayers; i++) x = decoderLayer(g, layers, i, x);

  const normed = rmsNorm(g, '/model/norm', x, 'model.norm.weight', config.normEps);
  const headWeight = config.tiedEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight';
  const logits = linear(g, '/lm_head', normed, headWeight, 'logits');
  g.addOutput(logits, 'float32', ['batch', 'seq', V]);

  return g.encode({
    graphName: options.graphName ?? 'caravan-llama',
    opset: LLAMA_ONNX_OPSET,
    irVersion: LLAMA_ONNX_IR_VERSION,
    producerName: 'caravan',
    docString: options.docString,
  });
}

/** Rotary cos and sin values, [positions, hd]: the whole tables, or this call's rows of them. */
interface Rotary {
  readonly cos: string;
  readonly sin: string;
}

/** One layer's past keys and values, graph inputs [batch, Hkv, past, hd]. */
interface PastKv {
  readonly key: string;
  readonly value: string;
}

/** What every decoder layer reads besides its own weights. */
interface LayerContext {
  readonly config: LlamaConfig;
  readonly hd: number;
  /** This call's rows of the rotary tables. */
  readonly rotary: Rotary;
  /** The causal mask [seq, past+seq], added to the attention scores. */
  readonly mask: string;
  /** 1/√hd, the attention scale. */
  readonly scale: string;
  readonly kvCache: boolean;
  /** Each layer's past keys and values when kvCache; empty otherwise. */
  readonly past: readonly PastKv[];
}

/**
 * The rows of the rotary tables for positions past..past+seq-1, and the causal
 * mask [seq, past+seq]: -inf where key j > past + query i, 0 elsewhere. Key
 * past+i is always kept, so no softmax row is all -inf. `pastKey` is a past
 * keys input (its dim 2 is past); without one, past is 0.
 */
function positions(g: OnnxGraph, inputIds: string, pastKey: string | undefined, tables: Rotary): { rotary: Rotary; mask: string } {
  // seq (and past) as 1-D [1] tensors, to slice the rotary tables and size the mask.
  const inputShape = g.node('Shape', '/model/Shape', [inputIds]);
  const seqLen = g.node('Slice', '/model/Slice_seq', [inputShape, g.int64([1]), g.int64([2]), g.int64([0])]);
  const pastLen = pastKey !== undefined
    ? g.node('Slice', '/model/Slice_past', [g.node('Shape', '/model/Shape_past', [pastKey]), g.int64([2]), g.int64([3]), g.int64([0])])
    : g.int64([0]);
  const totalLen = pastKey !== undefined ? g.node('Add', '/model/Add_total', [pastLen, seqLen]) : seqLen;
  const rotary = {
    cos: g.node('Slice', '/model/rotary_emb/Slice_cos', [tables.cos, pastLen, totalLen, g.int64([0])]),
    sin: g.node('Slice', '/model/rotary_emb/Slice_sin', [tables.sin, pastLen, totalLen, g.int64([0])]),
  };

  const maskShape = g.node('Concat', '/model/mask/Concat', [seqLen, totalLen], [attr.int('axis', 0)]);
  const minusInf = g.node('ConstantOfShape', '/model/mask/ConstantOfShape', [maskShape], [
    attr.tensor('value', floatTensor('', [1], Float32Array.of(-Infinity))),
  ]);
  const diagonal = pastKey !== undefined
    ? g.node('Squeeze', '/model/mask/Squeeze', [g.node('Add', '/model/mask/Add', [pastLen, g.int64([1])]), g.int64([0])])
    : g.int64([1], true);
  const mask = g.node('Trilu', '/model/mask/Trilu', [minusInf, diagonal], [attr.int('upper', 1)]);
  return { rotary, mask };
}

/** Decoder layer i: x + attention, then + MLP, each on the RMS-normed input. */
function decoderLayer(g: OnnxGraph, layers: LayerContext, i: number, x: string): string {
  const w = `model.layers.${i}`;
  const s = `/model/layers.${i}`;
  const h = rmsNorm(g, `${s}/input_layernorm`, x, `${w}.input_layernorm.weight`, layers.config.normEps);
  const attended = g.node('Add', `${s}/Add_attn`, [x, selfAttention(g, layers, i, h)]);
  const h2 = rmsNorm(g, `${s}/post_attention_layernorm`, attended, `${w}.post_attention_layernorm.weight`, layers.config.normEps);
  return g.node('Add', `${s}/Add_mlp`, [attended, mlp(g, `${s}/mlp`, `${w}.mlp`, h2)]);
}

/** Layer i's self-attention on the normed input h, through o_proj; with kvCache it also outputs present.<i>.key/.value. */
function selfAttention(g: OnnxGraph, layers: LayerContext, i: number, h: string): string {
  const { config: { nHeads: H, nKvHeads: Hkv }, hd } = layers;
  const w = `model.layers.${i}.self_attn`;
  const a = `/model/layers.${i}/self_attn`;
  const q = splitHeads(g, `${a}/q`, linear(g, `${a}/q_proj`, h, `${w}.q_proj.weight`), H, hd);
  const k = splitHeads(g, `${a}/k`, linear(g, `${a}/k_proj`, h, `${w}.k_proj.weight`), Hkv, hd);
  const v = splitHeads(g, `${a}/v`, linear(g, `${a}/v_proj`, h, `${w}.v_proj.weight`), Hkv, hd);
  const qr = applyRotary(g, `${a}/rotary_q`, q, layers.rotary, hd);
  let kAll = applyRotary(g, `${a}/rotary_k`, k, layers.rotary, hd);
  let vAll = v;
  if (layers.kvCache) {
    kAll = g.nodeAs(`present.${i}.key`, 'Concat', `${a}/Concat_past_k`, [layers.past[i].key, kAll], [attr.int('axis', 2)]);
    vAll = g.nodeAs(`present.${i}.value`, 'Concat', `${a}/Concat_past_v`, [layers.past[i].value, vAll], [attr.int('axis', 2)]);
    g.addOutput(kAll, 'float32', ['batch', Hkv, 'total', hd]);
    g.addOutput(vAll, 'float32', ['batch', Hkv, 'total', hd]);
  }
  const kr = repeatKv(g, `${a}/repeat_k`, kAll, H, Hkv, hd);
  const vr = repeatKv(g, `${a}/repeat_v`, vAll, H, Hkv, hd);

  const kT = g.node('Transpose', `${a}/Transpose_k`, [kr], [attr.ints('perm', [0, 1, 3, 2])]);
  const scores = g.node('Mul', `${a}/Mul_scale`, [g.node('MatMul', `${a}/MatMul_qk`, [qr, kT]), layers.scale]);
  const probs = g.node('Softmax', `${a}/Softmax`, [g.node('Add', `${a}/Add_mask`, [scores, layers.mask])], [attr.int('axis', -1)]);
  const ctx = g.node('Transpose', `${a}/Transpose_ctx`, [g.node('MatMul', `${a}/MatMul_pv`, [probs, vr])], [
    attr.ints('perm', [0, 2, 1, 3]),
  ]);
  const merged = g.node('Reshape', `${a}/Reshape_ctx`, [ctx, g.int64([0, 0, H * hd])]);
  return linear(g, `${a}/o_proj`, merged, `${w}.o_proj.weight`);
}

/** The SwiGLU MLP: down(silu(gate(x)) · up(x)); `w` prefixes its weights, `scope` its nodes. */
function mlp(g: OnnxGraph, scope: string, w: string, x: string): string {
  const gate = linear(g, `${scope}/gate_proj`, x, `${w}.gate_proj.weight`);
  const up = linear(g, `${scope}/up_proj`, x, `${w}.up_proj.weight`);
  const silu = g.node('Mul', `${scope}/act_fn/Mul`, [gate, g.node('Sigmoid', `${scope}/act_fn/Sigmoid`, [gate])]);
  return linear(g, `${scope}/down_proj`, g.node('Mul', `${scope}/Mul`, [silu, up]), `${w}.down_proj.weight`);
}

/** x·Wᵀ for a checkpoint weight W [out, in]. */
function linear(g: OnnxGraph, scope: string, x: string, weight: string, output = `${scope}/MatMul_output_0`): string {
  const wT = g.node('Transpose', `${scope}/Transpose`, [weight], [attr.ints('perm', [1, 0])]);
  return g.nodeAs(output, 'MatMul', `${scope}/MatMul`, [x, wT]);
}

function rmsNorm(g: OnnxGraph, scope: string, x: string, weight: string, eps: number): string {
  const sq = g.node('Pow', `${scope}/Pow`, [x, g.float(2)]);
  const mean = g.node('ReduceMean', `${scope}/ReduceMean`, [sq], [attr.ints('axes', [-1]), attr.int('keepdims', 1)]);
  const rms = g.node('Sqrt', `${scope}/Sqrt`, [g.node('Add', `${scope}/Add`, [mean, g.float(eps)])]);
  const normed = g.node('Div', `${scope}/Div`, [x, rms]);
  return g.node('Mul', `${scope}/Mul`, [normed, weight]);
}

// [batch, seq, heads·hd] -> [batch, heads, seq, hd]
function splitHeads(g: OnnxGraph, scope: string, x: string, heads: number, hd: number): string {
  const r = g.node('Reshape', `${scope}/Reshape`, [x, g.int64([0, 0, heads, hd])]);
  return g.node('Transpose', `${scope}/Transpose`, [r], [attr.ints('perm', [0, 2, 1, 3])]);
}

// x·cos + rotate_half(x)·sin, rotate_half(x) = [-x2, x1] for halves x1, x2.
function applyRotary(g: OnnxGraph, scope: string, x: string, rotary: Rotary, hd: number): string {
  const [x1, x2] = g.nodeN('Split', `${scope}/Split`, [x, g.int64([hd / 2, hd / 2])], 2, [attr.int('axis', -1)]);
  const rotated = g.node('Concat', `${scope}/Concat`, [g.node('Neg', `${scope}/Neg`, [x2]), x1], [attr.int('axis', -1)]);
  return g.node('Add', `${scope}/Add`, [
    g.node('Mul', `${scope}/Mul_cos`, [x, rotary.cos]),
    g.node('Mul', `${scope}/Mul_sin`, [rotated, rotary.sin]),
  ]);
}

// [batch, Hkv, seq, hd] -> [batch, H, seq, hd], each kv head repeated H/Hkv
// times consecutively so query head h reads kv head floor(h / (H/Hkv)).
function repeatKv(g: OnnxGraph, scope: string, x: string, H: number, Hkv: number, hd: number): string {
  const nRep = H / Hkv;
  if (nRep === 1) return x;
  const u = g.node('Unsqueeze', `${scope}/Unsqueeze`, [x, g.int64([2])]);
  const e = g.node('Expand', `${scope}/Expand`, [u, g.int64([1, 1, nRep, 1, 1])]);
  return g.node('Reshape', `${scope}/Reshape`, [e, g.int64([0, H, -1, hd])]);
}
