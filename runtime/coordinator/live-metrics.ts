// What the coordinator knows of a run's speed while it runs, from the
// counters every stage sends with its step reports: how busy each stage is,
// the pipeline bubble beside the schedule's bound, MFU against the hosts'
// peaks, bytes on the wire per edge, frames waiting per stage, and the
// recovery events it saw. The same numbers go to `caravan status` (through
// the run's KV state) and to OpenTelemetry metrics (runtime/telemetry/metrics.ts).
import type { LlamaConfig } from '../../schemas/model-config.ts';
import { trainFlopsPerToken } from '../../schemas/model-flops.ts';
import type { ComputeCount, StageCounters, WireCount } from '../host/stage-runner.ts';

/** Replica 0's stages over the window from the first engine call of any stage to the last. */
export interface PipelineUse {
  /** The fraction of the window each stage spent in engine calls (hosts' clocks are compared, so they must agree). */
  readonly utilization_by_stage: number[];
  /** What the stages together did not compute, beside the 1F1B bound (S−1)/(M+S−1). */
  readonly bubble: number;
  readonly bubble_bound: number;
}

export function pipelineUse(stages: readonly ComputeCount[], microbatches: number): PipelineUse {
  const S = stages.length;
  const window = Math.max(...stages.map((c) => c.last_ms)) - Math.min(...stages.map((c) => c.first_ms));
  const utilization = stages.map((c) => (window > 0 ? c.busy_ms / window : 0));
  return {
    utilization_by_stage: utilization,
    bubble: 1 - utilization.reduce((a, b) => a + b, 0) / S,
    bubble_bound: (S - 1) / (microbatches + S - 1),
  };
}

/** Model FLOPs per second over the sum of the hosts' peaks (GFLOP/s), in percent. */
export function mfuPercent(tokensPerS: number, model: LlamaConfig, seqLen: number, peaksGflops: readonly number[]): number {
  const peak = peaksGflops.reduce((a, b) => a + b, 0);
  return peak > 0 ? (100 * tokensPerS * trainFlopsPerToken(model, seqLen)) / (peak * 1e9) : 0;
}

/** Recovery events the coordinator saw, over the run's life (kept across coordinator restarts). */
export interface RecoveryCounts {
  hosts_lost: number;
  slots_reassigned: number;
  coordinator_restarts: number;
}

export const NO_RECOVERIES: RecoveryCounts = { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 };

/** The boundary between stages s and s+1 of replica 0: activations s → s+1, gradients s+1 → s. */
export interface EdgeTraffic {
  readonly edge: string;  // "s-(s+1)"
  readonly act: WireCount;
  readonly grad: WireCount;
}

export interface LiveMetrics extends PipelineUse {
  /** The step these numbers were taken after (replica 0). */
  readonly step: number;
  readonly tokens_per_s: number;
  readonly mfu_pct: number;
  readonly devices_by_stage: string[];
  /** Replica 0's edges; a replacement's counts start from its restore. */
  readonly edges: EdgeTraffic[];
  /** Replica 0: frames each stage has received or has waiting in its edge stream, not yet computed on. */
  readonly queued_by_stage: number[];
  readonly recoveries: RecoveryCounts;
}

const NO_WIRE: WireCount = { frames: 0, f32_bytes: 0, wire_bytes: 0 };

/**
 * Live metrics from the latest counters of every (replica, stage) slot,
 * keyed `${replica}.${stage}`; undefined until every stage of replica 0 has
 * reported once.
 */
export function liveMetrics(o: {
  readonly counters: ReadonlyMap<string, StageCounters>;
  readonly stages: number;
  readonly microbatches: number;
  readonly model: LlamaConfig;
  readonly seqLen: number;
  readonly step: number;
  readonly tokensPerS: number;
  readonly recoveries: RecoveryCounts;
}): LiveMetrics | undefined {
  const replica0 = Array.from({ length: o.stages }, (_, s) => o.counters.get(`0.${s}`));
  if (replica0.some((c) => c === undefined)) return undefined;
  const stages = replica0 as StageCounters[];
  const edges = Array.from({ length: o.stages - 1 }, (_, s) => ({
    edge: `${s}-${s + 1}`,
    act: stages[s].sent_by_kind.act ?? NO_WIRE,
    grad: stages[s + 1].sent_by_kind.grad ?? NO_WIRE,
  }));
  return {
    step: o.step,
    tokens_per_s: o.tokensPerS,
    ...pipelineUse(stages.map((c) => c.compute), o.microbatches),
    mfu_pct: mfuPercent(o.tokensPerS, o.model, o.seqLen, [...o.counters.values()].map((c) => c.compute.peak_gflops)),
    devices_by_stage: stages.map((c) => c.compute.device),
    edges,
    queued_by_stage: stages.map((c) => c.queued),
    recoveries: { ...o.recoveries },
  };
}
