// The Stage actor: one per (replica, stage). Pure: it receives events about
// arrivals, finished computations and step control, and emits the commands
// the host runtime carries out (run one computation of one microbatch, report
// the step, apply, confirm or roll back the optimizer step, ack the step's
// inputs). It never touches a tensor, and keeps no time: it moves on events
// alone (actor-clock.ts).
//
// Schedule as data: each step the stage runs `ops` (pipeline-schedule.ts: F,
// B and W, or F and the fused BW for 1F1B) strictly in that order, each once
// its input is here (an activation for F, a gradient for B or BW; a W needs
// nothing but its B, which comes first in the list). The lists are a
// linearisation of one feasible run of the whole pipeline, so any timing
// completes them, and weight gradients accumulate in microbatch order
// whatever the arrival order: the bits do not depend on the schedule.
//
// Between steps. With a flush (1F1B), a stage reports the step's Σg² and
// waits for the replica's commit (the clip factor) before it applies the
// update and starts the next step. Post-validated (`postValidate`, the
// zero-bubble schedules): once its last W is done, a stage applies the update
// it expects (no clipping, every value finite: gradScale 1/M) keeping an
// undo, and goes straight on with the next step. The commit then confirms
// it, or says the step was clipped or skipped: the stage undoes the update,
// applies the committed one (bit-exactly what a flush would have done), and
// redoes the next step's work as attempt 1, which every stage of the replica
// derives from the same commit. Frames carry their attempt; a frame of an
// attempt that was rolled back is acked and dropped. At most one step is
// provisional: a stage reports step k+1 only once step k is final, so a
// report is never of gradients a roll-back would void. A step after which
// the Bridge syncs (`barrierEvery`) is never run ahead of, and neither is
// one after a commit that was not the optimistic one: while clipping is on,
// redoing would cost more than the flush (the attempt still follows the
// commit, so every stage numbers it the same whichever it chose).
//
// Recovery: a replacement starts from a checkpoint (`committed` and
// `nextAttempt` in the input) and replays the step control and the inputs
// recorded since. Opens and commits may then arrive before the stage can act
// on them; they are kept and taken in step order, so a replayed step runs
// exactly like a live one (with a known commit it applies the final update
// at once, never a provisional one).
import { enqueueActions, setup } from 'xstate';
import type { PipelineOp } from './pipeline-schedule.ts';

export interface StageMachineInput {
  readonly stage: number;         // s
  readonly stages: number;        // S
  readonly microbatches: number;  // M per step
  /** One step's computations on this stage, in the order it runs them. */
  readonly ops: readonly PipelineOp[];
  readonly committed?: number;    // the last step in the weights it starts from (a checkpoint); −1 when fresh
  /** The attempt of step committed+1, as the checkpoint recorded it; default 0. */
  readonly nextAttempt?: number;
  /** Steps already opened before the point the control log is replayed from (a post-validated run opens step k+1 before it commits k). */
  readonly opened?: readonly number[];
  /** Apply each update before its commit, validate it when the commit comes (no flush between steps). Default false. */
  readonly postValidate?: boolean;
  /** Every n-th step ends in a barrier (a Bridge sync): its update must be final before the next step starts. 0 or absent: none. */
  readonly barrierEvery?: number;
}

export type InputKind = 'act' | 'grad';

export type StageEvent =
  | { type: 'STEP_OPEN'; step: number }
  | { type: 'ACT_ARRIVED'; step: number; mb: number; attempt: number }
  | { type: 'GRAD_ARRIVED'; step: number; mb: number; attempt: number }
  | { type: 'OP_DONE'; step: number; attempt: number }
  | { type: 'STEP_COMMIT'; step: number; gradScale: number; skip?: boolean };

export type StageCommand =
  | { type: 'RUN_OP'; step: number; attempt: number; op: PipelineOp }
  | { type: 'STEP_READY'; step: number }        // every op of the step done: report Σg² (and the loss)
  | { type: 'APPLY_STEP'; step: number; gradScale: number; skip: boolean }  // the final update
  | { type: 'APPLY_PROVISIONAL'; step: number; gradScale: number }          // the expected update, with an undo
  | { type: 'CONFIRM_STEP'; step: number }      // the provisional update was the committed one: forget the undo
  | { type: 'ROLLBACK_STEP'; step: number; gradScale: number; skip: boolean }  // undo it, apply the committed one, void step+1's work
  | { type: 'ACK_STEP'; step: number }          // the step's effect is in the weights: ack its inputs
  | { type: 'STEPPED'; step: number }
  | { type: 'DUPLICATE'; kind: InputKind; step: number; mb: number; attempt: number };  // already seen, or of a voided attempt: ack it, nothing else

interface Arrival { readonly kind: InputKind; readonly step: number; readonly mb: number; readonly attempt: number }
interface Commit { readonly step: number; readonly gradScale: number; readonly skip: boolean }

export interface StageContext extends StageMachineInput {
  step: number;              // the step being run, or whose update was applied last
  phase: 'applied' | 'running';
  attempt: number;           // of `step`
  next: number;              // index in `ops` of the next computation to issue
  running: { step: number; attempt: number } | null;  // the computation being carried out
  reported: boolean;         // STEP_READY issued for `step`
  committed: number;         // the last step whose update is final
  afterCommitted: number;    // the attempt of step committed+1
  provisional: number | null;  // the step applied before its commit, awaiting it
  arrived: Arrival[];        // inputs here and not yet taken, for this step or later ones
  taken: Arrival[];          // inputs of `step`'s attempt already taken
  opens: number[];           // opened steps not yet started
  commits: Commit[];         // commits not yet acted on
}

/** The update a post-validated stage applies before its commit: no clipping, every value finite. */
export const optimisticScale = (microbatches: number) => 1 / microbatches;

/** The attempt of the step after one with this commit: 1 where a provisional update of it would have been rolled back. */
export function attemptAfter(ctx: Pick<StageContext, 'postValidate' | 'microbatches'>, c: Commit): number {
  return ctx.postValidate && (c.skip || c.gradScale !== optimisticScale(ctx.microbatches)) ? 1 : 0;
}

const same = (a: Arrival, b: Arrival) => a.kind === b.kind && a.step === b.step && a.mb === b.mb && a.attempt === b.attempt;

/** The input an op takes, if any. */
function inputOf(ctx: StageContext, op: PipelineOp): Arrival | undefined {
  if (op.kind === 'F' && ctx.stage > 0) return { kind: 'act', step: ctx.step, mb: op.mb, attempt: ctx.attempt };
  if ((op.kind === 'B' || op.kind === 'BW') && ctx.stage < ctx.stages - 1) return { kind: 'grad', step: ctx.step, mb: op.mb, attempt: ctx.attempt };
  return undefined;
}

const isBarrier = (ctx: StageContext, step: number) => (ctx.barrierEvery ?? 0) > 0 && (step + 1) % ctx.barrierEvery! === 0;

type Emit = (cmd: StageCommand) => void;

/** Inputs of an earlier step, or of `step` from an attempt before `attempt`: acked, forgotten. */
function dropStale(ctx: StageContext, emit: Emit): Arrival[] {
  return ctx.arrived.filter((a) => {
    const stale = a.step < ctx.step || (a.step === ctx.step && a.attempt < ctx.attempt);
    if (stale) emit({ type: 'DUPLICATE', ...a });
    return !stale;
  });
}

/** Starts `step` (its attempt known, or tentatively 0 while the step before is provisional). */
function start(ctx: StageContext, step: number, attempt: number, emit: Emit): StageContext {
  const next: StageContext = { ...ctx, step, attempt, phase: 'running', next: 0, reported: false, taken: [], opens: ctx.opens.filter((o) => o !== step) };
  return { ...next, arrived: dropStale(next, emit) };
}

/** The commit of the provisional step is here: confirm it, or roll it back and redo what ran ahead of it. */
function validate(ctx: StageContext, c: Commit, emit: Emit): StageContext {
  const p = c.step;
  const attempt = attemptAfter(ctx, c);
  emit(attempt === 0 ? { type: 'CONFIRM_STEP', step: p } : { type: 'ROLLBACK_STEP', step: p, gradScale: c.gradScale, skip: c.skip });
  emit({ type: 'ACK_STEP', step: p });
  emit({ type: 'STEPPED', step: p });
  const settled: StageContext = { ...ctx, committed: p, afterCommitted: attempt, provisional: null, commits: ctx.commits.filter((x) => x !== c) };
  if (ctx.step !== p + 1 || attempt === ctx.attempt) return settled;
  // Step p+1 ran ahead on weights that were not the committed ones: it starts over as the attempt every stage derives.
  return start(settled, p + 1, attempt, emit);
}

/** The step's computations are all done: report it, then apply its update as far as is known. */
function finish(ctx: StageContext, emit: Emit): StageContext {
  if (ctx.committed !== ctx.step - 1) return ctx;  // the step before is provisional still
  if (!ctx.reported) {
    emit({ type: 'STEP_READY', step: ctx.step });
    ctx = { ...ctx, reported: true };
  }
  const c = ctx.commits.find((x) => x.step === ctx.step);
  if (c) {
    emit({ type: 'APPLY_STEP', step: ctx.step, gradScale: c.gradScale, skip: c.skip });
    emit({ type: 'ACK_STEP', step: ctx.step });
    emit({ type: 'STEPPED', step: ctx.step });
    return { ...ctx, phase: 'applied', committed: ctx.step, afterCommitted: attemptAfter(ctx, c), commits: ctx.commits.filter((x) => x !== c) };
  }
  // After a commit that was not the optimistic one (clipping is on, say), the next is likely not either: flush instead of redoing.
  if (ctx.postValidate && !isBarrier(ctx, ctx.step) && ctx.afterCommitted === 0) {
    emit({ type: 'APPLY_PROVISIONAL', step: ctx.step, gradScale: optimisticScale(ctx.microbatches) });
    return { ...ctx, phase: 'applied', provisional: ctx.step };
  }
  return ctx;
}

/** Issues the next computation if its input is here. */
function issue(ctx: StageContext, emit: Emit): StageContext {
  const op = ctx.ops[ctx.next];
  const input = inputOf(ctx, op);
  if (input && !ctx.arrived.some((a) => same(a, input))) return ctx;
  emit({ type: 'RUN_OP', step: ctx.step, attempt: ctx.attempt, op });
  return {
    ...ctx, next: ctx.next + 1, running: { step: ctx.step, attempt: ctx.attempt },
    ...(input ? { arrived: ctx.arrived.filter((a) => !same(a, input)), taken: [...ctx.taken, input] } : {}),
  };
}

/** Everything the stage can do now, in order (pure): the commands, through `emit`, and the context after them. */
export function advance(ctx: StageContext, emit: Emit): StageContext {
  for (;;) {
    const before = ctx;
    const pc = ctx.provisional === null ? undefined : ctx.commits.find((c) => c.step === ctx.provisional);
    if (pc) ctx = validate(ctx, pc, emit);
    else if (ctx.phase === 'running' && ctx.running === null) {
      ctx = ctx.next < ctx.ops.length ? issue(ctx, emit) : finish(ctx, emit);
    } else if (ctx.phase === 'applied' && ctx.opens.includes(ctx.step + 1)) {
      const ahead = ctx.provisional === ctx.step;
      ctx = start(ctx, ctx.step + 1, ahead ? 0 : ctx.afterCommitted, emit);
    }
    if (ctx === before) return ctx;
  }
}

/** An input's arrival: taken into `arrived`, or answered as a duplicate (seen already, or of a voided attempt). */
function arrive(ctx: StageContext, a: Arrival, emit: Emit): StageContext {
  const duplicate = () => { emit({ type: 'DUPLICATE', ...a }); return ctx; };
  if (a.step <= ctx.committed || a.mb < 0 || a.mb >= ctx.microbatches) return duplicate();
  if (a.step < ctx.step || (a.step === ctx.step && ctx.phase === 'applied')) return duplicate();
  if (a.step === ctx.step && a.attempt < ctx.attempt) return duplicate();
  if (ctx.arrived.some((x) => same(x, a)) || ctx.taken.some((x) => same(x, a))) return duplicate();
  return { ...ctx, arrived: [...ctx.arrived, a] };
}

export function initialContext(input: StageMachineInput): StageContext {
  const committed = input.committed ?? -1;
  return {
    ...input, step: committed, phase: 'applied', attempt: 0, next: 0, running: null, reported: false,
    committed, afterCommitted: input.nextAttempt ?? 0, provisional: null, arrived: [], taken: [], opens: (input.opened ?? []).filter((s) => s > committed), commits: [],
  };
}

/** The context after one event, and the commands it leads to (pure: what the machine below does). */
export function stageTransition(ctx: StageContext, event: StageEvent, emit: Emit): StageContext {
  switch (event.type) {
    case 'STEP_OPEN':
      if (event.step <= ctx.committed || ctx.opens.includes(event.step) || event.step <= ctx.step) return ctx;
      return advance({ ...ctx, opens: [...ctx.opens, event.step] }, emit);
    case 'STEP_COMMIT':
      if (event.step <= ctx.committed || ctx.commits.some((c) => c.step === event.step)) return ctx;
      return advance({ ...ctx, commits: [...ctx.commits, { step: event.step, gradScale: event.gradScale, skip: event.skip ?? false }] }, emit);
    case 'ACT_ARRIVED':
    case 'GRAD_ARRIVED': {
      const kind: InputKind = event.type === 'ACT_ARRIVED' ? 'act' : 'grad';
      return advance(arrive(ctx, { kind, step: event.step, mb: event.mb, attempt: event.attempt }, emit), emit);
    }
    case 'OP_DONE':
      if (!ctx.running || ctx.running.step !== event.step || ctx.running.attempt !== event.attempt) return ctx;
      return advance({ ...ctx, running: null }, emit);
  }
}

export const stageMachine = setup({
  types: {
    context: {} as StageContext,
    events: {} as StageEvent,
    input: {} as StageMachineInput,
    emitted: {} as StageCommand,
  },
}).createMachine({
  id: 'stage',
  context: ({ input }) => initialContext(input),
  on: {
    '*': {
      actions: enqueueActions(({ context, event, enqueue }) => {
        const cmds: StageCommand[] = [];
        const next = stageTransition(context, event, (c) => cmds.push(c));
        if (next !== context) enqueue.assign(() => next);
        for (const c of cmds) enqueue.emit(c);
      }),
    },
  },
});
