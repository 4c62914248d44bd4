// A run's configuration: the model, the optimizer and the training plan. It is
// written to the run's KV bucket by the coordinator and read by every host, so
// validation here names the field that is wrong, wherever the config came from.
import { decodeJson } from './json-message.ts';
import { validateLlamaConfig, type LlamaConfig } from './model-config.ts';

export interface OptimizerConfig {
  readonly lr: number;
  readonly minLrRatio: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
}

export interface TrainingConfig {
  readonly steps: number;
  readonly microbatches: number;  // M per optimizer step
  readonly batchSize: number;     // B rows per microbatch
  readonly seqLen: number;        // T
  readonly stages: number;
  // Layers per stage, in order (sums to model.nLayers); absent: as even as
  // possible. `caravan simulate --split speed` chooses them for stages of
  // different speeds (runtime/config/speed-split.ts).
  readonly stageLayers?: readonly number[];
  // Once every slot's holder has reported its speed, a split those speeds call
  // for whose slowest stage is this many times faster than the run's is taken
  // by a live re-split (runtime/coordinator/resplit.ts); absent: never.
  readonly resplitGain?: number;
  readonly replicas: number;
  readonly seed: number;
  readonly maxGradNorm: number;
  readonly tokenizer: 'byte' | 'gpt2';
  readonly dataFile?: string;     // llm.c / nanoGPT token shard; the bundled corpus when absent
  // CPU engine threads per host. Part of the config because OpenBLAS adds in
  // a different order with a different thread count: fixing it keeps a run's
  // bits the same on every machine and however it is split.
  readonly cpuThreads: number;
  // Every K steps each stage uploads its state to the Object Store; a
  // replacement replays at most K steps. 0 turns checkpoints off (a lost host
  // then replays from step 0).
  readonly checkpointEvery: number;
  // LZ4 on frames between stages where it saves at least 5% (per frame).
  // Changes bytes on the wire, never results. Default true.
  readonly lz4: boolean;
  // What a run does when a step's gradients or loss are not finite (NaN or
  // ±Inf, from a frame a peer sent or from the math itself): 'stop' fails the
  // run with an error naming where they came from; 'skip-step' leaves every
  // stage's weights and optimizer state as they were for that step, on every
  // stage of the replica alike. Either way they never reach the weights.
  // Default 'stop'.
  readonly nonFinite: NonFinitePolicy;
  // Microbatches each stage but the last may have in flight (forwarded, not
  // yet backwarded) beyond 1F1B's S−s: with links of latency L, a gradient
  // comes back 2(S−s−1)·L later than on one machine, and each extra one in
  // flight hides one microbatch's forward and backward of that wait, for one
  // more stored activation. Changes timing, never results. Default 0.
  readonly extraInFlight?: number;
  // The pipeline schedule (actors/pipeline-schedule.ts): '1f1b' (the fused
  // backward, a flush between steps) or a zero-bubble one, 'zb-h1' (1F1B's
  // activation memory) or 'zb-h2' (about twice it), which split the backward
  // into its input and weight halves and validate each optimizer step after
  // applying it instead of flushing. Changes timing and memory, never
  // results. Default 'zb-h2'.
  readonly schedule?: ScheduleName;
  // Audits by exact replay (runtime/audit/): the coordinator recomputes this
  // fraction of the slots' checkpoint intervals from the checkpoint before,
  // the inputs the slot took and the commits, and compares what its holder
  // reported (digests of the frames it sent, Σg², loss, the state after).
  // Absent: no audits.
  readonly audit?: AuditConfig;
  // Replicas synchronised by the Bridge every syncEvery steps (DiLoCo);
  // without it replicas train independently.
  readonly bridge?: BridgeConfig;
  // Hosts compute nothing and take the time the given device would
  // (`caravan simulate`, docs/simulate.md); absent for real training.
  readonly synthetic?: SyntheticCompute;
}

/**
 * A stage that does no math: each forward sleeps for the stage's model FLOPs
 * of the microbatch ÷ (peakTflops · efficiency), each backward twice that,
 * all divided by timeScale; it sends frames of frameBytes. Everything else
 * (actors, transport, checkpoints, recovery) is the real code.
 */
export interface SyntheticCompute {
  readonly device: string;
  readonly peakTflops: number;
  /** The fraction of peak the device's kernels reach on this model (the MFU it would have with no bubble and no waiting). */
  readonly efficiency: number;
  /** Simulated seconds per wall second: compute runs this much faster than on the device. */
  readonly timeScale: number;
  /** Bytes of one activation or gradient frame's payload, as the real model would send at a boundary. */
  readonly frameBytes: number;
  /** The device's memory (GiB), where known: what the speed-aware split must fit (schemas/model-memory.ts). */
  readonly memoryGiB?: number;
  /** A device per stage, in order, where stages run on different ones (efficiency is shared); absent: `device` everywhere. */
  readonly stageDevices?: readonly StageDevice[];
}

/** A simulated device: its name, peak dense bf16 TFLOP/s and, where given, its memory (GiB). */
export interface StageDevice {
  readonly device: string;
  readonly peakTflops: number;
  readonly memoryGiB?: number;
}

/** Which checkpoint intervals are audited: each (replica, stage, interval) with probability `rate`, drawn from `seed` (default: the run's seed). */
export interface AuditConfig {
  readonly rate: number;
  readonly seed?: number;
}

/**
 * The Bridge: every `syncEvery` inner steps, each stage's parameters are
 * combined across the replicas, all stages at once (docs/bridge.md).
 */
export interface BridgeConfig {
  readonly syncEvery: number;
  /** nesterov: DiLoCo's outer SGD with Nesterov momentum on the mean pseudo-gradient; average: the replicas' mean. */
  readonly outer: 'nesterov' | 'average';
  readonly outerLr: number;
  readonly outerMomentum: number;
  /**
   * What a replica sends: mxint8, its pseudo-gradient in 8 bits with a scale
   * per block of 32; fp32, its parameters as they are; topk, the topkFraction
   * of its pseudo-gradient (plus what earlier syncs left out: error
   * feedback) largest in magnitude.
   */
  readonly payload: 'mxint8' | 'fp32' | 'topk';
  readonly topkFraction: number;
  /** Fewest replicas a sync goes ahead with once timeoutMs has passed since the first contribution (default: all that start). */
  readonly quorum: number;
  readonly timeoutMs: number;
  /**
   * Replicas 0…startReplicas−1 start the run; each of the others joins when a full replica of hosts is waiting as
   * standbys, at an outer-step boundary, from the Bridge's parameters there (docs/bridge.md). Default: every replica.
   */
  readonly startReplicas: number;
  /**
   * A replica one of whose slots has stayed vacant this long (its host lost, no standby, no host joined) is retired
   * after the last outer step all its stages contributed to, so that the others' syncs no longer wait for it
   * (docs/bridge.md). Unset: it waits for a host however long that takes.
   */
  readonly retireVacantMs?: number;
}

export const DEFAULT_BRIDGE: Omit<BridgeConfig, 'syncEvery' | 'quorum' | 'startReplicas'> = {
  outer: 'nesterov', outerLr: 0.7, outerMomentum: 0.9, payload: 'mxint8', topkFraction: 0.01, timeoutMs: 30_000,
};

export type NonFinitePolicy = 'stop' | 'skip-step';

export interface RunConfig {
  readonly model: LlamaConfig;
  readonly optim: OptimizerConfig;
  readonly training: TrainingConfig;
}

export const DEFAULT_CHECKPOINT_EVERY = 10;

/** The pipeline schedules (actors/pipeline-schedule.ts makes their lists). */
export type ScheduleName = '1f1b' | 'zb-h1' | 'zb-h2';
export const scheduleNames: readonly ScheduleName[] = ['1f1b', 'zb-h1', 'zb-h2'];

/** The best schedule that is exact: all of them are, and ZB-H2 leaves the least bubble (docs/architecture.md). */
export const DEFAULT_SCHEDULE: ScheduleName = 'zb-h2';

function field(obj: unknown, path: string): unknown {
  return path.split('.').reduce<unknown>((o, k) => (o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined), obj);
}

/** Returns the config typed, or throws one line naming the first bad field. */
export function validateRunConfig(config: unknown): RunConfig {
  const fail = (why: string): never => { throw new Error(`invalid run config: ${why}`); };
  if (!config || typeof config !== 'object') fail('expected an object with model, optim and training');
  for (const section of ['model', 'optim', 'training']) {
    if (!field(config, section) || typeof field(config, section) !== 'object') fail(`${section} is missing`);
  }
  try {
    validateLlamaConfig(field(config, 'model') as LlamaConfig);
  } catch (err) {
    fail((err as Error).message);
  }
  const positiveInt = ['training.steps', 'training.microbatches', 'training.batchSize', 'training.seqLen', 'training.stages', 'training.replicas', 'training.cpuThreads', 'optim.totalSteps'];
  for (const p of positiveInt) {
    const v = field(config, p);
    if (!Number.isSafeInteger(v) || (v as number) < 1) fail(`${p} must be a positive integer, got ${JSON.stringify(v)}`);
  }
  for (const p of ['training.seed', 'optim.warmupSteps', 'training.checkpointEvery', 'training.extraInFlight']) {
    if ((p === 'training.checkpointEvery' || p === 'training.extraInFlight') && field(config, p) === undefined) continue;
    const v = field(config, p);
    if (!Number.isSafeInteger(v) || (v as number) < 0) fail(`${p} must be a non-negative integer, got ${JSON.stringify(v)}`);
  }
  for (const p of ['optim.lr', 'optim.minLrRatio', 'optim.beta1', 'optim.beta2', 'optim.eps', 'optim.weightDecay', 'training.maxGradNorm']) {
    const v = field(config, p);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) fail(`${p} must be a non-negative number, got ${JSON.stringify(v)}`);
  }
  const raw = config as RunConfig;
  if (raw.training.lz4 !== undefined && typeof raw.training.lz4 !== 'boolean') fail(`training.lz4 must be a boolean, got ${JSON.stringify(raw.training.lz4)}`);
  const schedule = raw.training.schedule ?? DEFAULT_SCHEDULE;
  if (!scheduleNames.includes(schedule)) fail(`training.schedule must be one of ${scheduleNames.map((n) => `'${n}'`).join(', ')}, got ${JSON.stringify(schedule)}`);
  const nonFinite = raw.training.nonFinite ?? 'stop';
  if (nonFinite !== 'stop' && nonFinite !== 'skip-step') fail(`training.nonFinite must be 'stop' or 'skip-step', got ${JSON.stringify(nonFinite)}`);
  const c: RunConfig = {
    ...raw,
    training: { ...raw.training, checkpointEvery: raw.training.checkpointEvery ?? DEFAULT_CHECKPOINT_EVERY, lz4: raw.training.lz4 ?? true, nonFinite, schedule },
  };
  if (c.training.seqLen > c.model.maxSeqLen) fail(`training.seqLen ${c.training.seqLen} exceeds model.maxSeqLen ${c.model.maxSeqLen}`);
  if (c.training.stages > c.model.nLayers) fail(`training.stages ${c.training.stages} exceeds model.nLayers ${c.model.nLayers}`);
  if (c.training.tokenizer !== 'byte' && c.training.tokenizer !== 'gpt2') fail(`training.tokenizer must be 'byte' or 'gpt2', got ${JSON.stringify(c.training.tokenizer)}`);
  if (c.training.dataFile !== undefined && typeof c.training.dataFile !== 'string') fail('training.dataFile must be a path');
  if (c.model.tiedEmbeddings && c.training.stages > 1) fail('model.tiedEmbeddings needs training.stages = 1 (the head and the embedding on one stage)');
  if (raw.training.stageLayers !== undefined) validateStageLayers(c, fail);
  const gain = raw.training.resplitGain;
  if (gain !== undefined && !(typeof gain === 'number' && Number.isFinite(gain) && gain > 1)) fail(`training.resplitGain must be a number above 1 (how many times faster the slowest stage must get), got ${JSON.stringify(gain)}`);
  const rawBridge = raw.training.bridge as { payload?: unknown } | undefined;
  if (gain !== undefined && ((c.training.replicas > 1 && !rawBridge) || rawBridge?.payload === 'topk' || raw.training.audit !== undefined)) {
    fail('training.resplitGain needs a run of one replica or with the Bridge (not top-k), without audits: only such a run is re-split live');
  }
  if (raw.training.synthetic !== undefined) validateSynthetic(raw.training.synthetic, c.training.stages, fail);
  if (raw.training.audit !== undefined) validateAudit(raw.training, fail);
  if (raw.training.bridge === undefined) return c;
  const bridge = validateBridge(raw.training.bridge, c.training.replicas, fail);
  if (bridge.startReplicas < c.training.replicas && c.training.synthetic) fail('a synthetic run has no parameters for a replica to join from: training.bridge.startReplicas must be the replicas');
  return { ...c, training: { ...c.training, bridge } };
}

function validateAudit(t: TrainingConfig, fail: (why: string) => never): void {
  const a = t.audit as unknown as Record<string, unknown> | null;
  if (!a || typeof a !== 'object') fail('training.audit must be an object {rate, seed?}');
  if (typeof a!.rate !== 'number' || !(a!.rate > 0 && a!.rate <= 1)) fail(`training.audit.rate must be in (0, 1], got ${JSON.stringify(a!.rate)}`);
  if (a!.seed !== undefined && (!Number.isSafeInteger(a!.seed) || (a!.seed as number) < 0)) fail(`training.audit.seed must be a non-negative integer, got ${JSON.stringify(a!.seed)}`);
  // A synthetic stage computes nothing to recompute; a Bridge's sync changes the weights between checkpoints, which a replay does not redo yet.
  if (t.synthetic) fail('training.audit needs real compute: a synthetic run has nothing to recompute');
  if (t.bridge) fail('training.audit is not built for runs with a Bridge (replicas synchronised by DiLoCo): leave out one or the other');
}

function validateStageLayers(c: RunConfig, fail: (why: string) => never): void {
  const counts = c.training.stageLayers as unknown;
  const { stages } = c.training;
  if (!Array.isArray(counts) || counts.length !== stages || !counts.every((n) => Number.isSafeInteger(n) && n >= 1)) {
    fail(`training.stageLayers must be ${stages} positive integers (one per stage), got ${JSON.stringify(counts)}`);
  }
  const sum = (counts as number[]).reduce((a, b) => a + b, 0);
  if (sum !== c.model.nLayers) fail(`training.stageLayers ${JSON.stringify(counts)} holds ${sum} layers, the model has ${c.model.nLayers}`);
}

function validateSynthetic(raw: unknown, stages: number, fail: (why: string) => never): void {
  if (!raw || typeof raw !== 'object') fail('training.synthetic must be an object {device, peakTflops, efficiency, timeScale, frameBytes}');
  const s = raw as Record<string, unknown>;
  if (typeof s.device !== 'string' || !s.device) fail('training.synthetic.device must name the device');
  for (const k of ['peakTflops', 'timeScale', 'frameBytes']) {
    if (typeof s[k] !== 'number' || !Number.isFinite(s[k]) || !((s[k] as number) > 0)) fail(`training.synthetic.${k} must be a positive number, got ${JSON.stringify(s[k])}`);
  }
  if (typeof s.efficiency !== 'number' || !(s.efficiency > 0 && s.efficiency <= 1)) fail(`training.synthetic.efficiency must be in (0, 1], got ${JSON.stringify(s.efficiency)}`);
  if (s.memoryGiB !== undefined && !(typeof s.memoryGiB === 'number' && Number.isFinite(s.memoryGiB) && s.memoryGiB > 0)) fail(`training.synthetic.memoryGiB must be a positive number, got ${JSON.stringify(s.memoryGiB)}`);
  if (s.stageDevices === undefined) return;
  const devices = s.stageDevices as unknown;
  const good = (d: unknown) => !!d && typeof d === 'object' && typeof (d as { device: unknown }).device === 'string' && !!(d as { device: string }).device
    && typeof (d as { peakTflops: unknown }).peakTflops === 'number' && (d as { peakTflops: number }).peakTflops > 0 && Number.isFinite((d as { peakTflops: number }).peakTflops)
    && ((d as { memoryGiB?: unknown }).memoryGiB === undefined || ((d as { memoryGiB: number }).memoryGiB > 0 && Number.isFinite((d as { memoryGiB: number }).memoryGiB)));
  if (!Array.isArray(devices) || devices.length !== stages || !devices.every(good)) {
    fail(`training.synthetic.stageDevices must be ${stages} entries {device, peakTflops > 0, memoryGiB > 0 (optional)} (one per stage), got ${JSON.stringify(devices)}`);
  }
}

function validateBridge(raw: unknown, replicas: number, fail: (why: string) => never): BridgeConfig {
  if (!raw || typeof raw !== 'object') fail('training.bridge must be an object {syncEvery, outer, outerLr, outerMomentum, payload, quorum, timeoutMs, startReplicas, retireVacantMs}');
  const starting = (raw as Partial<BridgeConfig>).startReplicas ?? replicas;
  if (!Number.isSafeInteger(starting) || starting < 1 || starting > replicas) fail(`training.bridge.startReplicas must be an integer in [1, ${replicas}] (the replicas), got ${JSON.stringify(starting)}`);
  const b = { ...DEFAULT_BRIDGE, quorum: starting, startReplicas: starting, ...(raw as Partial<BridgeConfig>) };
  if (!Number.isSafeInteger(b.syncEvery) || (b.syncEvery as number) < 1) fail(`training.bridge.syncEvery must be a positive integer, got ${JSON.stringify(b.syncEvery)}`);
  if (b.outer !== 'nesterov' && b.outer !== 'average') fail(`training.bridge.outer must be 'nesterov' or 'average', got ${JSON.stringify(b.outer)}`);
  if (b.payload !== 'mxint8' && b.payload !== 'fp32' && b.payload !== 'topk') fail(`training.bridge.payload must be 'mxint8', 'fp32' or 'topk', got ${JSON.stringify(b.payload)}`);
  if (typeof b.topkFraction !== 'number' || !(b.topkFraction > 0 && b.topkFraction <= 1)) fail(`training.bridge.topkFraction must be in (0, 1], got ${JSON.stringify(b.topkFraction)}`);
  for (const k of ['outerLr', 'outerMomentum'] as const) {
    if (typeof b[k] !== 'number' || !Number.isFinite(b[k]) || b[k] < 0) fail(`training.bridge.${k} must be a non-negative number, got ${JSON.stringify(b[k])}`);
  }
  if (b.outerMomentum >= 1) fail(`training.bridge.outerMomentum must be below 1, got ${b.outerMomentum}`);
  if (!Number.isSafeInteger(b.quorum) || b.quorum < 1 || b.quorum > replicas) fail(`training.bridge.quorum must be an integer in [1, ${replicas}] (the replicas), got ${JSON.stringify(b.quorum)}`);
  if (!Number.isSafeInteger(b.timeoutMs) || b.timeoutMs < 1) fail(`training.bridge.timeoutMs must be a positive integer, got ${JSON.stringify(b.timeoutMs)}`);
  if (b.retireVacantMs !== undefined && (!Number.isSafeInteger(b.retireVacantMs) || b.retireVacantMs < 1)) fail(`training.bridge.retireVacantMs must be a positive integer (ms), got ${JSON.stringify(b.retireVacantMs)}`);
  // A replica joining mid-run starts with no error-feedback residual, which top-k's restore requires.
  if (b.startReplicas < replicas && b.payload === 'topk') fail(`training.bridge.startReplicas below the replicas (${b.startReplicas} of ${replicas}) needs payload 'mxint8' or 'fp32': a replica joining mid-run has no top-k residual to restore`);
  const known = new Set(['syncEvery', 'outer', 'outerLr', 'outerMomentum', 'payload', 'topkFraction', 'quorum', 'timeoutMs', 'startReplicas', 'retireVacantMs']);
  for (const k of Object.keys(raw as object)) if (!known.has(k)) fail(`training.bridge.${k} is not a setting (known: ${[...known].join(', ')})`);
  return b as BridgeConfig;
}

/** `config` in the run's KV bucket: JSON, then every field checked as for a config file. */
export const decodeRunConfig = (bytes: Uint8Array, what = 'run config'): RunConfig => validateRunConfig(decodeJson(bytes, what));
