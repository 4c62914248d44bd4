// Pipeline schedules as data: for each stage, the order in which it runs one
// step's computations. Pure: no I/O, no clock; the lists are made by a greedy
// event-driven simulation with the given op costs and no link latency, and a
// stage then runs its list strictly in order whatever the real timings are.
//
// '1f1b' is the classic order (what the Stage actor issued before schedules
// became data): a fused backward 'BW', a ready backward first, else a
// forward while fewer than inFlightLimit(s) microbatches are in flight. The zero-bubble schedules (Qi
// et al., "Zero Bubble Pipeline Parallelism", ICLR 2024) split the backward
// into B (the input gradient, on the critical path between stages) and W (the
// weight gradient, needed only by the optimizer), and use the W's to fill the
// idle moments:
//   zb-h1  1F1B's memory: at most S−s microbatches stashed on stage s; at each
//          free moment a ready B, else an F, else a W.
//   zb-h2  more forwards in flight (2(S−s)−1, which fills the warm-up) and,
//          on stage s > 0, the last deferW(s) W's kept for the end of the
//          step. Without a flush those W's fill the time between a stage's
//          last B of step k and the arrival of step k+1's first forward, which
//          goes from stage s up to stage 0 as B's and back down as F's: about
//          Σ_{j<s}(B_j + F_j), so deferW(s) = ⌈that / W_s⌉. With F = B = W that
//          is 2s, and the stash limit 2(S−s)−1 + 2s = 2S−1 on every stage:
//          about twice 1F1B's peak (S, on stage 0), and all stages alike.
// Every limit is at most M (a step has no more microbatches to stash). A
// memoryLimit replaces the zb-* defaults (zb-h2 then gives the forwards in
// flight their slots first and defers W's with what is left) and caps 1f1b's.
//
// Why the lists never deadlock, for any positive durations and link delays:
// every list is one linear extension of the dependency graph (the simulation
// started each op only after all its inputs had finished), so the union of
// the stage orders and the cross-stage dependencies is acyclic. Across steps
// with no flush, stage s starts step k+1 after its own update of step k, and
// no dependency points from a later step to an earlier one, so concatenating
// steps keeps the graph acyclic.

import { scheduleNames, type ScheduleName } from '../schemas/run-config.ts';

/** 1F1B's in-flight limit on stage s: S−s, and `extra` more on every stage but the last (whose gradient is its own). */
const inFlightLimit = (stage: number, stages: number, extra: number) => stages - stage + (stage < stages - 1 ? extra : 0);

// The names are part of the run config (schemas/ imports nothing from here).
export { scheduleNames, type ScheduleName };

/** One computation of one microbatch on one stage. 'BW' is the fused backward (1F1B); 'B' and 'W' are its two halves. */
export interface PipelineOp { readonly kind: 'F' | 'B' | 'W' | 'BW'; readonly mb: number }

/** Time of each op on one microbatch, in any one unit (seconds, FLOPs at a fixed rate…). */
export interface OpCosts { readonly F: number; readonly B: number; readonly W: number }

export interface ScheduleSpec {
  readonly stages: number;                         // S
  readonly microbatches: number;                   // M per step
  readonly costs?: OpCosts | readonly OpCosts[];   // per stage or one for all; default {F:1,B:1,W:1}
  readonly memoryLimit?: number;                   // max microbatches stashed on a stage (forward done, W/BW not yet); replaces the zb-* default, caps 1f1b's
  readonly extraInFlight?: number;                 // more forwards in flight on all but the last stage, to hide link latency (training.extraInFlight)
}

const unitCosts: OpCosts = { F: 1, B: 1, W: 1 };

/** The costs of stage s, from costs given per stage or one for all (default {F:1,B:1,W:1}). */
export function costsOfStage(costs: OpCosts | readonly OpCosts[] | undefined, stage: number): OpCosts {
  const c = costs ?? unitCosts;
  return isCostList(c) ? c[stage] : c;
}

const stageCosts = (spec: ScheduleSpec, stage: number) => costsOfStage(spec.costs, stage);

function isCostList(c: OpCosts | readonly OpCosts[]): c is readonly OpCosts[] {
  return Array.isArray(c);
}

function validate(spec: ScheduleSpec): void {
  const { stages: S, microbatches: M } = spec;
  if (!Number.isSafeInteger(S) || S < 1) throw new Error(`pipeline schedule: stages must be a positive integer, got ${S}`);
  if (!Number.isSafeInteger(M) || M < 1) throw new Error(`pipeline schedule: microbatches must be a positive integer, got ${M}`);
  const c = spec.costs;
  if (c && isCostList(c) && c.length !== S) throw new Error(`pipeline schedule: ${c.length} stage costs for ${S} stages`);
  for (let s = 0; s < S; s++) {
    const { F, B, W } = stageCosts(spec, s);
    for (const [k, v] of [['F', F], ['B', B], ['W', W]] as const) {
      if (!(v > 0) || !Number.isFinite(v)) throw new Error(`pipeline schedule: stage ${s} cost ${k} must be a positive number, got ${v}`);
    }
  }
  const lim = spec.memoryLimit;
  if (lim !== undefined && (!Number.isSafeInteger(lim) || lim < 1)) throw new Error(`pipeline schedule: memoryLimit must be a positive integer, got ${lim}`);
  const extra = spec.extraInFlight ?? 0;
  if (!Number.isSafeInteger(extra) || extra < 0) throw new Error(`pipeline schedule: extraInFlight must be a non-negative integer, got ${extra}`);
}

/** How one stage chooses, in microbatches. */
interface StagePolicy {
  readonly inFlight: number;  // forwards whose B/BW is not done yet, at most
  readonly stash: number;     // forwards whose W/BW is not done yet, at most (= stashLimit)
  readonly deferW: number;    // W's left for the end of the step (taken only once every B is done)
}

/** W's that stage s keeps for the end of the step under zb-h2: enough to cover Σ_{j<s}(B_j + F_j), the B-up-then-F-down gap to step k+1's first forward. */
function zbH2Deferred(spec: ScheduleSpec, stage: number): number {
  let gap = 0;
  for (let j = 0; j < stage; j++) {
    const c = stageCosts(spec, j);
    gap += c.B + c.F;
  }
  return Math.min(spec.microbatches, Math.ceil(gap / stageCosts(spec, stage).W - 1e-9));
}

function policy(name: ScheduleName, spec: ScheduleSpec, stage: number): StagePolicy {
  // No stage can stash more microbatches than the step has.
  const p = unclampedPolicy(name, spec, stage), M = spec.microbatches;
  return { inFlight: Math.min(p.inFlight, M), stash: Math.min(p.stash, M), deferW: p.deferW };
}

function unclampedPolicy(name: ScheduleName, spec: ScheduleSpec, stage: number): StagePolicy {
  const S = spec.stages, extra = spec.extraInFlight ?? 0, limit = spec.memoryLimit;
  const withExtra = (n: number) => n + (stage < S - 1 ? extra : 0);
  switch (name) {
    case '1f1b': {
      // 1F1B's stash is its in-flight limit; a memory limit can only lower it.
      const n = Math.min(inFlightLimit(stage, S, extra), limit ?? Infinity);
      return { inFlight: n, stash: n, deferW: 0 };
    }
    case 'zb-h1': {
      // A memory limit replaces the default stash: above S−s it lets W's lag behind their B's (S on every stage is 1F1B's peak).
      const inFlight = withExtra(S - stage), stash = limit ?? inFlight;
      return { inFlight: Math.min(inFlight, stash), stash, deferW: 0 };
    }
    case 'zb-h2': {
      const want = { inFlight: withExtra(2 * (S - stage) - 1), deferW: zbH2Deferred(spec, stage) };
      const stash = limit ?? want.inFlight + want.deferW;
      // Under a memory limit the forwards in flight come first (they keep the pipeline moving); the deferred W's get what is left.
      const inFlight = Math.min(want.inFlight, stash);
      return { inFlight, stash, deferW: Math.min(want.deferW, stash - inFlight) };
    }
  }
}

/** The stash limit a schedule keeps on stage s (what memory it needs), in microbatches: forwards done whose W/BW is not. */
export function stashLimit(name: ScheduleName, spec: ScheduleSpec, stage: number): number {
  validate(spec);
  if (!Number.isSafeInteger(stage) || stage < 0 || stage >= spec.stages) throw new Error(`pipeline schedule: no stage ${stage} of ${spec.stages}`);
  return policy(name, spec, stage).stash;
}

/** Each stage's ops for ONE step, in the order that stage runs them. */
export function pipelineSchedule(name: ScheduleName, spec: ScheduleSpec): PipelineOp[][] {
  validate(spec);
  if (!scheduleNames.includes(name)) throw new Error(`pipeline schedule: unknown schedule '${name}'`);
  const { stages: S, microbatches: M } = spec;
  const fused = name === '1f1b';
  const policies = Array.from({ length: S }, (_, s) => policy(name, spec, s));
  const costs = Array.from({ length: S }, (_, s) => stageCosts(spec, s));
  // End times of each op, per stage, per microbatch; Infinity while not run.
  const fEnd = Array.from({ length: S }, () => new Array<number>(M).fill(Infinity));
  const bEnd = Array.from({ length: S }, () => new Array<number>(M).fill(Infinity));
  const next = Array.from({ length: S }, () => ({ f: 0, b: 0, w: 0 }));
  const freeAt = new Array<number>(S).fill(0);
  const lists: PipelineOp[][] = Array.from({ length: S }, () => []);
  const doneAll = (s: number) => next[s].f === M && next[s].b === M && (fused || next[s].w === M);

  /** The op stage s takes at time t, if any: a ready B first, else an F under the limits, else a W. */
  function choose(s: number, t: number): PipelineOp | undefined {
    const n = next[s], p = policies[s];
    if (n.b < n.f && fEnd[s][n.b] <= t && (s === S - 1 || bEnd[s + 1][n.b] <= t)) return { kind: fused ? 'BW' : 'B', mb: n.b };
    const stashed = n.f - (fused ? n.b : n.w);
    if (n.f < M && n.f - n.b < p.inFlight && stashed < p.stash && (s === 0 || fEnd[s - 1][n.f] <= t)) return { kind: 'F', mb: n.f };
    if (!fused && n.w < n.b && (n.b - n.w > p.deferW || n.b === M)) return { kind: 'W', mb: n.w };
    return undefined;
  }

  let t = 0;
  for (;;) {
    for (let s = 0; s < S; s++) {
      if (freeAt[s] > t || doneAll(s)) continue;
      const op = choose(s, t);
      if (!op) continue;
      const c = costs[s];
      const end = t + (op.kind === 'F' ? c.F : op.kind === 'B' ? c.B : op.kind === 'W' ? c.W : c.B + c.W);
      if (op.kind === 'F') { fEnd[s][op.mb] = end; next[s].f++; }
      else if (op.kind === 'W') next[s].w++;
      else { bEnd[s][op.mb] = end; next[s].b++; }
      freeAt[s] = end;
      lists[s].push(op);
    }
    if (lists.every((_, s) => doneAll(s))) return lists;
    // Nothing more can start now: move to the next moment a stage finishes something.
    const later = freeAt.filter((f) => f > t);
    if (later.length === 0) throw new Error(`pipeline schedule '${name}': stuck at t=${t} (S=${S}, M=${M})`);
    t = Math.min(...later);
  }
}
