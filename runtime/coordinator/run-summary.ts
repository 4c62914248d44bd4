// The run's summary, once every replica has finished and every slot's final
// state is uploaded: each replica's parameters hashed from the final states
// (checked against the SHA-256 their holders reported, and hashed in model
// order without optimizer moments, so the hash does not depend on the
// split), losses, speed and pipeline use from the final counters, bytes on
// the wire, recoveries, skipped steps, and with a Bridge every stored sync.
import { scheduleUse } from '../config/run-schedule.ts';
import { decodeSafeTensors, hashParams } from '../../native/index.ts';
import type { StageCounters } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { AuditSummary, BridgeRecord, RunSummary } from '../../schemas/run-records.ts';
import { sha256Hex } from '../security/message-signature.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import type { RunResults } from '../transport/run-results.ts';
import { mfuPercent, pipelineUse, tokensPerStep } from './live-metrics.ts';
import type { LiveRunState } from './run-state.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

/** sha256 over the parameter tensors of stage states, in order (optimizer moments excluded). */
export function hashStageStates(states: readonly Uint8Array[]): string {
  return hashParams(states.flatMap((bytes, i) =>
    [...decodeSafeTensors(bytes, `stage state ${i}`).tensors].filter(([name]) => !name.startsWith('optimizer.')).map(([, t]) => t.data)));
}

export interface FinishedRun {
  readonly run: string;
  readonly config: RunConfig;
  readonly state: LiveRunState;
  readonly results: RunResults;
  readonly bridges: BridgeStore;
  /** The final counters of every slot, `${replica}.${stage}`, and the sha256 of its final state. */
  readonly counters: ReadonlyMap<string, StageCounters>;
  readonly finals: ReadonlyMap<string, string>;
  /** The replicas that trained in the run: those that started it and those that joined. */
  readonly active: readonly number[];
  /** Of those, the ones whose stages uploaded final states (not those retired for a vacant slot). */
  readonly finishing: readonly number[];
  readonly losses: number[][];
  /** `${replica}.${step}` committed as skipped. */
  readonly skipped: ReadonlySet<string>;
  /** `${replica}.${step}` whose commit rolled back a provisional update. */
  readonly rolledBack: ReadonlySet<string>;
  /** With training.audit: what the audits found. */
  readonly audits?: AuditSummary;
}

export async function finishRun(o: FinishedRun): Promise<RunSummary> {
  const { config, counters, losses, state } = o;
  const t = config.training;
  const wall = state.elapsedSeconds();
  state.state.status = 'finishing';
  await state.save();
  const hashes = await finalHashes(o);
  const dead = await o.results.deadLetters();
  // The run waited for every slot's final report: the counters are the final ones.
  const wire = { frames: 0, f32_bytes: 0, wire_bytes: 0 };
  for (const c of counters.values()) {
    for (const sent of [c.sent_by_kind.act, c.sent_by_kind.grad]) {
      wire.frames += sent.frames;
      wire.f32_bytes += sent.f32_bytes;
      wire.wire_bytes += sent.wire_bytes;
    }
  }
  // Steps before a run's given states (--from-states) were not trained in this run's time.
  // A replica that joined mid-run trained from the step it joined at.
  const firstStep = (r: number) => state.state.joined?.find((j) => j.replica === r)?.step ?? state.state.from_step ?? 0;
  // A replica that left trained up to its last step.
  const endStep = (r: number) => (state.state.left?.find((l) => l.replica === r)?.step ?? t.steps - 1) + 1;
  const trained = o.active.reduce((n, r) => n + endStep(r) - firstStep(r), 0);
  const tokensPerS = (trained * tokensPerStep(t)) / wall;
  // The run's own figures are its first replica's: 0, unless it was retired for a vacant slot.
  const lead = o.finishing[0];
  const stagesOfLead = Array.from({ length: t.stages }, (_, s) => counters.get(`${lead}.${s}`)!.compute);
  return {
    run: o.run,
    steps: t.steps,
    stages: t.stages,
    replicas: t.replicas,
    losses: losses[lead],
    final_loss: losses[lead][losses[lead].length - 1],
    tokens_per_s: tokensPerS,
    params_sha256: hashes[lead]!,
    params_sha256_by_replica: hashes,
    losses_by_replica: losses,
    wall_seconds: wall,
    dead_letters: dead,
    wire: { ...wire, ratio_vs_f32: wire.wire_bytes > 0 ? wire.f32_bytes / wire.wire_bytes : 0 },
    ...pipelineUse(stagesOfLead, scheduleUse(config)),
    devices_by_stage: stagesOfLead.map((c) => c.device),
    mfu_pct: mfuPercent(tokensPerS, config.model, t.seqLen, [...counters.values()].map((c) => c.compute.peak_gflops)),
    recoveries: { ...state.recoveries },
    skipped_steps: replicaSteps(o.skipped),
    rolled_back_steps: replicaSteps(o.rolledBack),
    ...(o.audits ? { audits: o.audits } : {}),
    ...(t.bridge ? await bridgeSummary(o.bridges, t.stages, Math.floor(t.steps / t.bridge.syncEvery)) : {}),
    ...(state.state.joined?.length ? { replicas_joined: state.state.joined } : {}),
    ...(state.state.left?.length ? { replicas_left: state.state.left } : {}),
  };
}

/** Each replica's parameter hash, from the final states its holders uploaded and reported. */
async function finalHashes(o: FinishedRun): Promise<Array<string | null>> {
  const t = o.config.training;
  const ranges = stageRanges(o.config);
  const hashes: Array<string | null> = [];
  for (let r = 0; r < t.replicas; r++) {
    if (!o.finishing.includes(r)) { hashes.push(null); continue; }
    const blobs: Uint8Array[] = [];
    for (const [begin, end] of ranges) {
      const blob = await o.results.finalState(r, begin, end);
      if (!blob) throw new Error(`final state of replica ${r} layers [${begin}, ${end}) is missing from the object store`);
      const reported = o.finals.get(`${r}.${blobs.length}`);
      if (sha256Hex(blob) !== reported) {
        throw new Error(`final state of replica ${r} layers [${begin}, ${end}) is not the one its holder reported: it was overwritten in the object store`);
      }
      blobs.push(blob);
    }
    hashes.push(hashStageStates(blobs));
  }
  return hashes;
}

/**
 * Every stored sync, from KV (a restarted coordinator did not see them all), and the outer steps all stages completed.
 * A record a live re-split wrote (the run's first, re-sharded from its predecessor's) is the predecessor's sync: its
 * summary lists it (resplit.ts concludeResplit).
 */
export async function bridgeSummary(store: BridgeStore, stages: number, outers: number): Promise<{ outer_steps: number; bridge_syncs: BridgeRecord[] }> {
  const syncs: BridgeRecord[] = [];
  const reached = Array.from({ length: stages }, () => 0);
  for (let stage = 0; stage < stages; stage++) {
    for (let outer = 1; outer <= outers; outer++) {
      const r = await store.readRecord(stage, outer);
      if (!r) continue;
      reached[stage] = outer;
      if (!r.resharded_from) syncs.push(r);
    }
  }
  return { outer_steps: Math.min(...reached), bridge_syncs: syncs };
}

/** `${replica}.${step}` keys as records, in order. */
function replicaSteps(keys: ReadonlySet<string>): Array<{ replica: number; step: number }> {
  return [...keys].map((k) => { const [replica, step] = k.split('.').map(Number); return { replica, step }; }).sort((a, b) => a.replica - b.replica || a.step - b.step);
}
