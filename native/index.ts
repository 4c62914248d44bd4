// The engine's TypeScript surface: loads the Node-API addon and wraps its
// Stage with typed calls, versioned state (safetensors) and parameter hashes.
// Imports nothing from the rest of caravan, as native/ may not.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeSafeTensors, encodeSafeTensors, type SafeTensor } from './safetensors.ts';

import type { LlamaConfig } from '../schemas/model-config.ts';
import type { OptimizerConfig } from '../schemas/run-config.ts';
export { decodeSafeTensors, encodeSafeTensors, type SafeTensor, type SafeTensorsFile } from './safetensors.ts';
export { splitLayers } from '../schemas/stage-layers.ts';

// The engine's model and optimizer settings are the run config's own types (type-only imports: no runtime dependency).
export type EngineModelConfig = LlamaConfig;
export type { OptimizerConfig };

export interface StageSpec {
  readonly model: EngineModelConfig;
  readonly optim: OptimizerConfig;
  readonly layerBegin: number;
  readonly layerEnd: number;
  readonly seed: number;
  /** OpenBLAS/OpenMP threads of this process; fixed per run because OpenBLAS's sums depend on it. */
  readonly threads?: number;
  /** 'cpu' (the default) or 'cuda': the same model on an NVIDIA GPU (bf16 GEMMs, fp32 master weights; docs/cuda.md). */
  readonly device?: EngineDevice;
  /** GPU index with device 'cuda'. */
  readonly gpu?: number;
}

export type EngineDevice = 'cpu' | 'cuda';

/** The GPU a CUDA stage runs on, as the engine reports it. */
export interface CudaDeviceInfo {
  readonly index: number;
  readonly name: string;
  readonly totalBytes: number;
  readonly freeBytes: number;
  readonly computeCapability: string;
  readonly multiprocessors: number;
  /** Dense bf16 tensor-core peak from the engine's table; 0 for a GPU it does not know. */
  readonly peakBf16Tflops: number;
}

export interface TensorEntry {
  readonly name: string;
  readonly shape: readonly number[];
  readonly offset: number;
  readonly numel: number;
  readonly decay: boolean;
}

export interface GradCheckResult {
  readonly op: string;
  readonly input: string;
  readonly samples: number;
  readonly relErr: number;
  readonly tolerance: number;
}

/** An engine call that ran off the event loop: its result, and the ms the device spent on it. */
export interface DeviceResult<T> {
  readonly value: T;
  readonly deviceMs: number;
}

interface NativeStage {
  forward(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets: Int32Array | null, train: boolean, tokens: Int32Array | null): number | Float32Array;
  backward(mb: number, gradOut: Float32Array | null): Float32Array | null;
  backwardInput(mb: number, gradOut: Float32Array | null): Float32Array | null;
  backwardWeight(mb: number): void;
  /** The four computations on libuv's thread pool (the CPU stage; the CUDA stage has none yet). */
  forwardAsync?(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets: Int32Array | null, train: boolean, tokens: Int32Array | null): Promise<DeviceResult<number | Float32Array>>;
  backwardAsync?(mb: number, gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>>;
  backwardInputAsync?(mb: number, gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>>;
  backwardWeightAsync?(mb: number): Promise<DeviceResult<void>>;
  stashedBytes(): number;
  gradSumSquares(): Float64Array;
  step(gradScale: number): number;
  stepWithUndo(gradScale: number): number;
  undoStep(): void;
  dropUndo(): void;
  zeroGrad(): void;
  tensors(): TensorEntry[];
  /** The CPU stage's arenas are views of its memory; the CUDA stage's are host copies. */
  arena(kind: ArenaKind): Float32Array;
  setArena(kind: ArenaKind, data: Float32Array): void;
  stashed(): number[];
  drop(mb: number): boolean;
  optimizerStep: number;
  readonly inWidth: number;
  readonly outWidth: number;
  readonly needsTokens: boolean;
}

type ArenaKind = 'params' | 'grads' | 'exp_avg' | 'exp_avg_sq';

interface NativeModule {
  Stage: new (spec: StageSpec) => NativeStage;
  /** Present only in a build made where nvcc was (info().cuda). */
  CudaStage?: new (spec: StageSpec) => NativeStage & { readonly device: CudaDeviceInfo };
  cudaDevice?: (gpu: number) => CudaDeviceInfo;
  gradcheck(seed: number): GradCheckResult[];
  sgemmGflops(M: number, N: number, K: number, reps: number): number;
  info(): EngineInfo;
  setThreads(n: number): void;
  tuneAllocator(): void;
  mxint8RoundTrip(x: Float32Array, width: number): void;
}

export const ADDON_PATH = join(dirname(fileURLToPath(import.meta.url)), 'build', 'Release', 'caravan_engine.node');
export const DRIVER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', 'build', 'driver', 'caravan-engine');

let loaded: NativeModule | undefined;
function addon(): NativeModule {
  if (!loaded) {
    if (!existsSync(ADDON_PATH)) {
      throw new Error(`the native engine is not built (${ADDON_PATH} is missing): run 'npm run build:native'`);
    }
    // OpenMP's threads would otherwise spin after each parallel loop and take
    // the cores from OpenBLAS's own threads (measured: half the throughput on
    // 2 cores). libgomp reads this once, when the addon loads it.
    process.env.OMP_WAIT_POLICY ??= 'PASSIVE';
    loaded = createRequire(import.meta.url)(ADDON_PATH) as NativeModule;
  }
  return loaded;
}

export interface EngineInfo {
  readonly backend: string;
  /** Whether this build has the CUDA backend (it was built where nvcc was). */
  readonly cuda: boolean;
  readonly blas: string;
  readonly blasThreads: number;
  readonly ompThreads: number;
}

const NO_CUDA_BUILD = 'this build of the engine has no CUDA backend (it was built where nvcc was missing): rebuild it with the CUDA toolkit installed (npm test or scripts/build-native.sh does)';

/**
 * The GPU a CUDA stage would run on: name, memory, compute capability. Throws
 * with the reason when it cannot be used (no driver or GPU, an index out of
 * range, no bf16 tensor cores, or a build without the CUDA backend).
 */
export function cudaDevice(gpu: number): CudaDeviceInfo {
  const native = addon();
  if (!native.cudaDevice) throw new Error(NO_CUDA_BUILD);
  return native.cudaDevice(gpu);
}

export const STATE_FORMAT = 'caravan-stage';
export const STATE_VERSION = 1;

export const DEFAULT_OPTIMIZER: OptimizerConfig = {
  lr: 3e-3, minLrRatio: 0.1, warmupSteps: 10, totalSteps: 1000, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1,
};

export interface StateHeader {
  readonly layerBegin: number;
  readonly layerEnd: number;
  /** As stored: the caller compares it with the config it expects. */
  readonly model: EngineModelConfig;
  readonly optimizerStep: number;
}

/** The metadata of a stage state (format, version, layer range, model, optimizer step), checked field by field. */
export function readStateHeader(meta: Record<string, string>, where: string): StateHeader {
  if (meta.format !== STATE_FORMAT) throw new Error(`${where}: not a caravan stage state (format ${JSON.stringify(meta.format ?? null)})`);
  if (meta.version !== String(STATE_VERSION)) throw new Error(`${where}: unknown state version ${meta.version} (this build reads ${STATE_VERSION})`);
  const layerBegin = /^\d{1,9}$/.test(meta.layer_begin ?? '') ? Number(meta.layer_begin) : NaN;
  const layerEnd = /^\d{1,9}$/.test(meta.layer_end ?? '') ? Number(meta.layer_end) : NaN;
  if (!(layerBegin < layerEnd)) throw new Error(`${where}: bad layer range [${meta.layer_begin}, ${meta.layer_end})`);
  let model: EngineModelConfig;
  try {
    model = JSON.parse(meta.model ?? 'null');
  } catch {
    throw new Error(`${where}: model metadata is not JSON`);
  }
  const optimizerStep = /^\d{1,10}$/.test(meta.optimizer_step ?? '') ? Number(meta.optimizer_step) : NaN;
  if (!(optimizerStep <= 2 ** 31 - 1)) throw new Error(`${where}: bad optimizer_step ${JSON.stringify(meta.optimizer_step ?? null)}`);
  return { layerBegin, layerEnd, model, optimizerStep };
}

/**
 * The first setting of `model` that a state's header says otherwise, in words naming both sides (`model dModel is 64
 * in the state, 128 here`); undefined when the state is of that model.
 */
export function modelDifference(stateModel: unknown, model: object, words: { state: string; here: string }): string | undefined {
  for (const [k, v] of Object.entries(model)) {
    const got = (stateModel as Record<string, unknown> | null)?.[k];
    if (JSON.stringify(got) !== JSON.stringify(v)) return `model ${k} is ${JSON.stringify(got)} in ${words.state}, ${JSON.stringify(v)} ${words.here}`;
  }
  return undefined;
}

/** sha256 of parameter tensors in model order: the run's params_sha256 when they are a whole model's. */
export function hashParams(tensors: Iterable<Float32Array>): string {
  const h = createHash('sha256');
  for (const t of tensors) h.update(new Uint8Array(t.buffer, t.byteOffset, t.byteLength));
  return h.digest('hex');
}

/** A computation run here and now, timed, as an off-loop call's result (the CUDA stage has no off-loop calls yet). */
async function timedCall<T>(f: () => T): Promise<DeviceResult<T>> {
  const t0 = performance.now();
  const value = f();
  return { value, deviceMs: performance.now() - t0 };
}

/**
 * One pipeline stage of the model, on the CPU backend or (spec.device 'cuda')
 * on an NVIDIA GPU. Stage 0 takes token ids
 * Int32Array[B·T]; other stages take activations Float32Array[B·T·d]. The last
 * stage returns the mean loss when given targets, or logits [B·T·V] without.
 */
export class EngineStage {
  readonly spec: StageSpec;
  readonly isFirst: boolean;
  readonly isLast: boolean;
  /** Channels of the activations this stage takes (0 on stage 0, which takes tokens) and sends (0 on the last stage). */
  readonly inWidth: number;
  readonly outWidth: number;
  /** A non-first stage that re-embeds tokens at a bottleneck (model.bottleneckEmbed) takes the microbatch's token ids beside its activations. */
  readonly needsTokens: boolean;
  /** The GPU of a CUDA stage; undefined on the CPU backend. */
  readonly cuda?: CudaDeviceInfo;
  /** Parameters of this stage: the length of every arena. */
  readonly paramCount: number;
  private readonly native: NativeStage;
  private readonly tensorList: TensorEntry[];

  constructor(spec: StageSpec) {
    this.spec = spec;
    if (spec.threads !== undefined) addon().setThreads(spec.threads);
    if (spec.device === 'cuda') {
      const CudaStage = addon().CudaStage;
      if (!CudaStage) throw new Error(NO_CUDA_BUILD);
      const native = new CudaStage(spec);
      this.native = native;
      this.cuda = native.device;
    } else {
      this.native = new (addon().Stage)(spec);
    }
    this.isFirst = spec.layerBegin === 0;
    this.isLast = spec.layerEnd === spec.model.nLayers;
    this.inWidth = this.isFirst ? 0 : this.native.inWidth;
    this.outWidth = this.isLast ? 0 : this.native.outWidth;
    this.needsTokens = !this.isFirst && this.native.needsTokens;
    this.tensorList = this.native.tensors();
    this.paramCount = this.tensorList.reduce((n, t) => Math.max(n, t.offset + t.numel), 0);
  }

  get describe(): string {
    const where = this.cuda ? ` on GPU ${this.cuda.index} (${this.cuda.name})` : '';
    return `stage [${this.spec.layerBegin}, ${this.spec.layerEnd}) of ${this.spec.model.nLayers} layers${where}`;
  }

  /** Training forward: keeps what backward needs under `mb`. Returns the output activations [B,T,outWidth], or the loss on the last stage. */
  forwardTrain(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets?: Int32Array, tokens?: Int32Array): Float32Array | number {
    return this.native.forward(mb, input, B, T, targets ?? null, true, tokens ?? null);
  }

  /** Inference forward: nothing is stashed. Returns activations [B,T,d], or logits [B,T,V] on the last stage. */
  forwardInfer(input: Int32Array | Float32Array, B: number, T: number, tokens?: Int32Array): Float32Array {
    return this.native.forward(0, input, B, T, null, false, tokens ?? null) as Float32Array;
  }

  /** Loss of a batch without stashing (last stage only): for evaluation. */
  evalLoss(input: Int32Array | Float32Array, B: number, T: number, targets: Int32Array, tokens?: Int32Array): number {
    if (!this.isLast) throw new Error(`${this.describe}: evalLoss needs the last stage`);
    return this.native.forward(0, input, B, T, targets, false, tokens ?? null) as number;
  }

  /** Backward of a stashed microbatch: gradOut [B,T,outWidth] (null on the last stage) → gradIn [B,T,inWidth] (null on stage 0). */
  backward(mb: number, gradOut: Float32Array | null): Float32Array | null {
    return this.native.backward(mb, gradOut);
  }

  /**
   * B of the split backward (zero-bubble pipelines): `backward`'s arguments,
   * result and errors — gradOut [B,T,outWidth] (null on the last stage) →
   * gradIn [B,T,inWidth] (null on stage 0) — without the weight gradients: the
   * gradient arena is left alone. The microbatch's stash keeps what W needs:
   * per layer the output gradients of the linears and norms (dy, dh and the
   * two norms' dxn [N,d] each, N = B·T; dgate, dup [N,F]; dq [N,H·hd]; dk, dv
   * [N,Hkv·hd], the last five in the place of gate, up, q, k, v) beside the
   * forward activations the weight gradients read; the attention
   * probabilities [B,H,T,T] are freed. Per layer: 4·N·d floats more and N·H·T
   * fewer than the forward stash (the last stage also keeps dlogits [N,V] in
   * the place of the probabilities and its final norm's dxn [N,d], stage 0 the
   * embedding's output gradient [N,d], bottlenecks their dy [N,d] and dz [N,k]).
   */
  backwardInput(mb: number, gradOut: Float32Array | null): Float32Array | null {
    return this.native.backwardInput(mb, gradOut);
  }

  /**
   * W of the split backward: adds the weight gradients of microbatch `mb`
   * (every linear and norm, the embedding on stage 0, the final norm and head
   * on the last stage, bottleneck projections) into the gradient arena and
   * releases its stash. Throws, naming the stage and microbatch, when B has
   * not run for `mb` or W already has.
   *
   * Bit-identity: with W's run in microbatch order (0, 1, 2, …) — B's in any
   * order — the gradients, and so the weights after `step`, equal the fused
   * `backward` run in microbatch order bit for bit: W makes the fused path's
   * weight-gradient calls with the same operands, and each weight's gradient
   * is a sum in call order.
   */
  backwardWeight(mb: number): void {
    this.native.backwardWeight(mb);
  }

  // The same computations off the event loop, each resolving with its result
  // and the ms it took, so the host reads and sends frames while the engine
  // computes; their arguments, results, errors and bits are the sync ones'.
  // The CPU stage runs them on libuv's thread pool, and no other call may
  // reach the stage until the promise settles (it throws, saying so). The
  // CUDA stage has no such calls yet: it computes at once, blocking the
  // thread as the sync call does, and resolves when done.

  forwardTrainAsync(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets?: Int32Array, tokens?: Int32Array): Promise<DeviceResult<Float32Array | number>> {
    if (this.native.forwardAsync) return this.native.forwardAsync(mb, input, B, T, targets ?? null, true, tokens ?? null);
    return timedCall(() => this.forwardTrain(mb, input, B, T, targets, tokens));
  }

  backwardAsync(mb: number, gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>> {
    if (this.native.backwardAsync) return this.native.backwardAsync(mb, gradOut);
    return timedCall(() => this.backward(mb, gradOut));
  }

  backwardInputAsync(mb: number, gradOut: Float32Array | null): Promise<DeviceResult<Float32Array | null>> {
    if (this.native.backwardInputAsync) return this.native.backwardInputAsync(mb, gradOut);
    return timedCall(() => this.backwardInput(mb, gradOut));
  }

  backwardWeightAsync(mb: number): Promise<DeviceResult<void>> {
    if (this.native.backwardWeightAsync) return this.native.backwardWeightAsync(mb);
    return timedCall(() => this.backwardWeight(mb));
  }

  /** Bytes held by this stage's stashed microbatches (forward stashes and what B keeps for W); 0 when none is stashed. */
  stashedBytes(): number {
    return this.native.stashedBytes();
  }

  /** Σg² per tensor, in model order, of the gradients accumulated since the last step. */
  gradSumSquares(): Float64Array {
    return this.native.gradSumSquares();
  }

  /** AdamW on g·gradScale; advances the learning-rate schedule and zeroes gradients. Returns the lr used. */
  step(gradScale: number): number {
    return this.native.step(gradScale);
  }

  /**
   * `step`, after saving the parameters, both AdamW moments, the gradient
   * arena and the optimizer step, so that `undoStep` can take it back (for an
   * optimizer step validated after it is taken). The saved copy costs 4 ×
   * paramCount floats (on the GPU for a CUDA stage) until `undoStep`,
   * `dropUndo`, `step` or `setParams`/`loadState` lets it go.
   */
  stepWithUndo(gradScale: number): number {
    return this.native.stepWithUndo(gradScale);
  }

  /**
   * Restores what `stepWithUndo` saved: parameters, moments, optimizer step
   * and its accumulated gradients (gradients added since, e.g. by W's of the
   * next step, are discarded), so a following `step(s)` equals a direct
   * `step(s)` bit for bit. Throws when nothing is saved.
   */
  undoStep(): void {
    this.native.undoStep();
  }

  /** Forgets the copy `stepWithUndo` saved (no-op when none is). */
  dropUndo(): void {
    this.native.dropUndo();
  }

  zeroGrad(): void {
    this.native.zeroGrad();
  }

  get optimizerStep(): number {
    return this.native.optimizerStep;
  }

  stashed(): number[] {
    return this.native.stashed();
  }

  /** Forgets a stashed forward (a microbatch abandoned by recovery). */
  drop(mb: number): boolean {
    return this.native.drop(mb);
  }

  tensors(): readonly TensorEntry[] {
    return this.tensorList;
  }

  /** All parameters in model order: a zero-copy view of the engine's memory on the CPU, a copy from the GPU on CUDA. */
  params(): Float32Array {
    return this.native.arena('params');
  }

  grads(): Float32Array {
    return this.native.arena('grads');
  }

  /** Overwrites every parameter (model order), leaving the optimizer's moments and the step as they are: what a Bridge sync hands a replica. */
  setParams(values: Float32Array): void {
    this.native.setArena('params', values);
  }

  /** A named parameter tensor: a zero-copy view on the CPU (writes reach the engine), a copy on CUDA. */
  param(name: string): Float32Array {
    const t = this.tensorList.find((e) => e.name === name);
    if (!t) throw new Error(`${this.describe} has no tensor ${name}`);
    const all = this.params();
    return all.subarray(t.offset, t.offset + t.numel);
  }

  /** sha256 of the parameters in model order. */
  paramHash(): string {
    return hashStages([this]);
  }

  /** Parameters and AdamW moments as a safetensors blob, with the format, version, config and step in its metadata. */
  state(): Uint8Array {
    const arenas = { params: this.params(), exp_avg: this.native.arena('exp_avg'), exp_avg_sq: this.native.arena('exp_avg_sq') };
    const tensors: SafeTensor[] = [];
    for (const [prefix, arena] of [['', arenas.params], ['optimizer.exp_avg.', arenas.exp_avg], ['optimizer.exp_avg_sq.', arenas.exp_avg_sq]] as const) {
      for (const t of this.tensorList) tensors.push({ name: prefix + t.name, shape: t.shape, data: arena.subarray(t.offset, t.offset + t.numel) });
    }
    return encodeSafeTensors(tensors, {
      format: STATE_FORMAT,
      version: String(STATE_VERSION),
      layer_begin: String(this.spec.layerBegin),
      layer_end: String(this.spec.layerEnd),
      optimizer_step: String(this.optimizerStep),
      model: JSON.stringify(this.spec.model),
      optimizer: JSON.stringify(this.spec.optim),
    });
  }

  /**
   * Restores state() output. Everything is checked before anything is
   * written, so a truncated or foreign blob leaves the stage as it was.
   */
  loadState(bytes: Uint8Array, source = 'stage state'): void {
    const where = `${source} (loading into ${this.describe})`;
    const file = decodeSafeTensors(bytes, where);
    const header = readStateHeader(file.metadata, where);
    if (header.layerBegin !== this.spec.layerBegin || header.layerEnd !== this.spec.layerEnd) {
      throw new Error(`${where}: state holds layers [${header.layerBegin}, ${header.layerEnd})`);
    }
    const differs = modelDifference(header.model, this.spec.model, { state: 'the state', here: 'here' });
    if (differs) throw new Error(`${where}: ${differs}`);
    const step = header.optimizerStep;
    const expected = new Set<string>();
    const arenas: Array<[ArenaKind, Float32Array]> = [];
    for (const [prefix, kind] of [['', 'params'], ['optimizer.exp_avg.', 'exp_avg'], ['optimizer.exp_avg_sq.', 'exp_avg_sq']] as const) {
      const arena = new Float32Array(this.paramCount);
      for (const t of this.tensorList) {
        const name = prefix + t.name;
        expected.add(name);
        const got = file.tensors.get(name);
        if (!got) throw new Error(`${where}: tensor ${name} is missing`);
        if (got.shape.length !== t.shape.length || got.shape.some((s, i) => s !== t.shape[i])) {
          throw new Error(`${where}: tensor ${name} has shape [${got.shape.join(', ')}], expected [${t.shape.join(', ')}]`);
        }
        arena.set(got.data, t.offset);
      }
      arenas.push([kind, arena]);
    }
    for (const name of file.tensors.keys()) {
      if (!expected.has(name)) throw new Error(`${where}: unexpected tensor ${name}`);
    }
    for (const [kind, arena] of arenas) this.native.setArena(kind, arena);
    this.native.optimizerStep = step;
    this.native.zeroGrad();
    // Forwards stashed under the old weights cannot be backpropagated under the new ones.
    for (const mb of this.native.stashed()) this.native.drop(mb);
  }
}

/** sha256 over the parameters of consecutive stages in model order: equal for every split of the same weights. */
export function hashStages(stages: readonly EngineStage[]): string {
  return hashParams(stages.map((s) => s.params()));
}

export function gradcheck(seed = 1): GradCheckResult[] {
  return addon().gradcheck(seed);
}

/** GFLOP/s of a plain cblas_sgemm of M×K · K×N: the machine's practical fp32 peak. */
export function sgemmGflops(M: number, N: number, K: number, reps: number): number {
  return addon().sgemmGflops(M, N, K, reps);
}

/** Keeps freed large buffers in the process heap (see addon.cpp): call once at process start. */
export function tuneAllocator(): void {
  addon().tuneAllocator();
}

/** The engine's in-model MX int8 quantizer, in place: x[rows, width] = dequantize(quantize(x)). */
export function mxint8RoundTrip(x: Float32Array, width: number): void {
  addon().mxint8RoundTrip(x, width);
}

export function engineInfo(): EngineInfo {
  return addon().info();
}
