// A discrete-event evaluator of pipeline schedules (pipeline-schedule.ts):
// each stage runs its list strictly in order, an op starts when the stage is
// free and its inputs have arrived, and a result crosses one stage boundary in
// `latency` time units. Pure: it computes times, it does not keep any. It
// answers what a schedule costs before a stage machine runs it: utilization,
// the bubble, and the stash each stage must hold.
//
// Steps run one after another with the same lists. 'flush' is today's
// behaviour: every stage waits for the whole step to finish, plus a
// `roundTrip` (the replica's STEP_READY → STEP_COMMIT → STEP_OPEN), before
// any stage starts the next. 'no-flush' is the zero-bubble plan: stage s
// applies its own update (`update` time units, optimistic and validated
// after) right after its last W/BW of step k and starts step k+1 at once.
import { costsOfStage, type OpCosts, type PipelineOp } from './pipeline-schedule.ts';

export type FlushMode = 'flush' | 'no-flush';

export interface SimulationSpec {
  readonly lists: readonly (readonly PipelineOp[])[];  // per stage, one step (the same every step)
  readonly costs?: OpCosts | readonly OpCosts[];       // per stage or one for all; default {F:1,B:1,W:1}; BW = B + W
  readonly latency?: number;                           // time units per hop between neighbouring stages; default 0
  readonly steps?: number;                             // default 1
  readonly mode?: FlushMode;                           // default 'flush'
  readonly roundTrip?: number;                         // flush only: from the step's last op to the next step's start; default 0
  readonly update?: number;                            // each stage's optimizer update, after its last op of a step; default 0
  /** Overrides `costs` op by op (e.g. random durations, to show a schedule cannot deadlock whatever the timings). */
  readonly opTime?: (stage: number, step: number, op: PipelineOp) => number;
  /** Overrides `latency` result by result: the time op's output takes from stage `from` to its neighbour. */
  readonly linkTime?: (from: number, step: number, op: PipelineOp) => number;
}

/** One op as it ran. */
export interface TimedOp extends PipelineOp {
  readonly stage: number;
  readonly step: number;
  readonly start: number;
  readonly end: number;
}

export interface SimulationResult {
  readonly makespan: number;
  readonly busy: readonly number[];          // per stage: time spent in ops (updates not counted)
  readonly utilization: number;              // Σ busy / (S · makespan)
  readonly bubble: number;                   // 1 − utilization
  readonly peakStash: readonly number[];     // per stage, in microbatches: forwards done whose W/BW is not
  readonly ops: readonly (readonly TimedOp[])[];  // per stage, in the order run
}

function opCost(c: OpCosts, kind: PipelineOp['kind']): number {
  return kind === 'F' ? c.F : kind === 'B' ? c.B : kind === 'W' ? c.W : c.B + c.W;
}

/** The peak stash of one stage's list for one step (a stage runs its ops one at a time, so list order is time order). */
export function listPeakStash(list: readonly PipelineOp[]): number {
  let stash = 0, peak = 0;
  for (const op of list) {
    if (op.kind === 'F') peak = Math.max(peak, ++stash);
    else if (op.kind === 'W' || op.kind === 'BW') stash--;
  }
  return peak;
}

/** Runs the lists; throws if they deadlock (some stage's next op can never have its inputs). */
export function simulateSchedule(spec: SimulationSpec): SimulationResult {
  const { lists, latency = 0, steps = 1, mode = 'flush', roundTrip = 0, update = 0 } = spec;
  const S = lists.length;
  const costs = Array.from({ length: S }, (_, s) => costsOfStage(spec.costs, s));
  const len = lists.map((l) => l.length);
  // End time of (step, stage, kind, mb), for the cross-stage inputs.
  const ends = new Map<string, number>();
  const key = (step: number, s: number, kind: string, mb: number) => `${step}/${s}/${kind}/${mb}`;
  const ops: TimedOp[][] = Array.from({ length: S }, () => []);
  const pos = new Array<number>(S).fill(0);      // next op index within the step
  const stepOf = new Array<number>(S).fill(0);
  const freeAt = new Array<number>(S).fill(0);
  const busy = new Array<number>(S).fill(0);
  const stepEnd: number[][] = Array.from({ length: steps }, () => new Array<number>(S).fill(-Infinity));

  /** When op may start on stage s as far as its inputs go, or undefined while one of them has not run yet. */
  function inputsAt(s: number, step: number, op: PipelineOp): number | undefined {
    const at = (st: number, kind: PipelineOp['kind'], hop: boolean) => {
      const e = ends.get(key(step, st, kind, op.mb));
      if (e === undefined) return undefined;
      return hop ? e + (spec.linkTime ? spec.linkTime(st, step, { kind, mb: op.mb }) : latency) : e;
    };
    const backward = (st: number) => at(st, 'B', true) ?? at(st, 'BW', true);
    switch (op.kind) {
      case 'F': return s === 0 ? 0 : at(s - 1, 'F', true);
      case 'B': case 'BW': return s === S - 1 ? at(s, 'F', false) : backward(s + 1);
      case 'W': return at(s, 'B', false);
    }
  }

  /** When stage s may start step `step` at all. */
  function stepStart(s: number, step: number): number | undefined {
    if (step === 0) return 0;
    if (mode === 'no-flush') return stepEnd[step - 1][s] + update;
    const prev = stepEnd[step - 1];
    return prev.every((e) => e > -Infinity) ? Math.max(...prev) + update + roundTrip : undefined;
  }

  let remaining = steps * len.reduce((a, b) => a + b, 0);
  while (remaining > 0) {
    let progressed = false;
    for (let s = 0; s < S; s++) {
      // Run stage s as far as its inputs allow.
      for (;;) {
        if (stepOf[s] >= steps) break;
        if (pos[s] === len[s]) { stepOf[s]++; pos[s] = 0; continue; }
        const step = stepOf[s], op = lists[s][pos[s]];
        const begin = stepStart(s, step);
        const ready = inputsAt(s, step, op);
        if (begin === undefined || ready === undefined) break;
        const start = Math.max(freeAt[s], ready, begin);
        const end = start + (spec.opTime ? spec.opTime(s, step, op) : opCost(costs[s], op.kind));
        ends.set(key(step, s, op.kind, op.mb), end);
        ops[s].push({ ...op, stage: s, step, start, end });
        busy[s] += end - start;
        freeAt[s] = end;
        pos[s]++;
        remaining--;
        if (pos[s] === len[s]) stepEnd[step][s] = end;
        progressed = true;
      }
    }
    if (!progressed) {
      const where = lists.map((l, s) => `stage ${s} step ${stepOf[s]} at ${l[pos[s]]?.kind}${l[pos[s]]?.mb}`).join(', ');
      throw new Error(`schedule deadlocks: ${where}`);
    }
  }
  const makespan = Math.max(0, ...freeAt);
  const total = busy.reduce((a, b) => a + b, 0);
  const utilization = makespan > 0 ? total / (S * makespan) : 0;
  return { makespan, busy, utilization, bubble: 1 - utilization, peakStash: lists.map(listPeakStash), ops };
}

/**
 * A schedule's bound: its utilization in steady state with no link latency
 * and no round trip, Σ work of one step / (S · the step period), where the
 * period is measured between step `from` and step `to` so the first step's
 * warm-up (and, for no-flush, the pipeline filling) is left out.
 */
export function steadyStateUtilization(lists: readonly (readonly PipelineOp[])[], costs: SimulationSpec['costs'], mode: FlushMode, from = 4, to = 12): number {
  const at = (steps: number) => simulateSchedule({ lists, costs, steps, mode }).makespan;
  const period = (at(to) - at(from)) / (to - from);
  const S = lists.length;
  const work = lists.reduce((n, list, s) => {
    const c = costsOfStage(costs, s);
    return n + list.reduce((m, op) => m + opCost(c, op.kind), 0);
  }, 0);
  return work / (S * period);
}
