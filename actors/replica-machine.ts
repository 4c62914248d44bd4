// The Replica actor: one per pipeline chain. Opens each step, collects every
// stage's report (Σg² per tensor, and the loss from the last stage), decides
// the clip factor over all stages in model order, commits the step and, in
// the same breath, opens the next; the run finishes once every stage has
// applied the last step. Pure: the coordinator's runtime carries out what it
// emits. It keeps no time: it moves on events alone (actor-clock.ts).
//
// The next step is not held back until every stage says it applied the
// commit: each stage takes its step control in log order (the commit before
// the open) and keeps inputs of a step it has not opened, so waiting would
// only add a round trip to the coordinator between every two steps.
//
// A replica told to leave (RETIRE) ends at the step given, as if the run had
// as many steps: no later step has been opened, so none is half begun.
//
// A step whose gradient norm or loss is not finite never reaches the
// weights: under 'skip-step' it is committed as skipped (every stage leaves
// its weights and optimizer state as they were), under 'stop' the replica
// stops and says which stages' gradients were not finite.
import { assign, enqueueActions, setup } from 'xstate';
import { clipDecision } from './grad-clip.ts';

export interface ReplicaMachineInput {
  readonly replica: number;
  readonly stages: number;
  readonly microbatches: number;
  readonly steps: number;
  readonly maxGradNorm: number;
  readonly firstStep?: number;
  /** Default 'stop'. */
  readonly nonFinite?: 'stop' | 'skip-step';
  /** Steps opened ahead of the one being decided: 1 where stages apply updates before their commit (post-validation), so a stage can go on to the next step; default 0. */
  readonly openAhead?: number;
}

export type ReplicaEvent =
  | { type: 'START' }
  /** Σg² per tensor as the stage reported it: null where it was not finite (JSON has no NaN). */
  | { type: 'STAGE_DONE'; stage: number; step: number; sumSquares: ReadonlyArray<number | null>; loss?: number }
  | { type: 'STAGE_STEPPED'; stage: number; step: number }
  /** The replica leaves the run after `lastStep` (no step beyond it was opened): that step is its last, as the run's would be. */
  | { type: 'RETIRE'; lastStep: number };

export type ReplicaCommand =
  | { type: 'OPEN_STEP'; replica: number; step: number }
  | { type: 'COMMIT_STEP'; replica: number; step: number; gradScale: number; gradNorm: number; loss: number; skip?: true }
  | { type: 'NOT_FINITE'; replica: number; step: number; gradNorm: number; loss: number; stages: number[] }
  | { type: 'FINISHED'; replica: number; losses: number[] };

export interface ReplicaContext extends ReplicaMachineInput {
  step: number;
  reports: Array<{ sumSquares: ReadonlyArray<number | null>; loss?: number } | undefined>;  // by stage
  stepped: boolean[];
  losses: number[];
}

/** The step's outcome once the last report is in: the reports, the clip decision, the loss, and whether it stops the run. */
function decide(context: ReplicaContext, event: { stage: number; sumSquares: ReadonlyArray<number | null>; loss?: number }) {
  const reports = context.reports.map((r, s) => (s === event.stage ? { sumSquares: event.sumSquares, loss: event.loss } : r!));
  // null is a sum that was not finite: NaN, so the norm is not finite either (Float64Array.from alone would make it 0).
  const clip = clipDecision(reports.map((r) => Float64Array.from(r.sumSquares, (x) => x ?? NaN)), context.microbatches, context.maxGradNorm);
  const loss = reports[context.stages - 1].loss ?? NaN;
  const finite = Number.isFinite(clip.gradNorm) && Number.isFinite(loss);
  return { reports, clip, loss, finite, stops: !finite && context.nonFinite !== 'skip-step' };
}

/** This report completes the step's: every other stage has reported. */
function lastReport(context: ReplicaContext, event: ReplicaEvent): event is Extract<ReplicaEvent, { type: 'STAGE_DONE' }> {
  return event.type === 'STAGE_DONE' && event.step === context.step && context.reports.every((r, s) => r !== undefined || s === event.stage);
}

function lastStepped(context: ReplicaContext, event: { step: number; stage: number }): boolean {
  return event.step === context.step && context.stepped.every((done, s) => done || s === event.stage);
}

export const replicaMachine = setup({
  types: {
    context: {} as ReplicaContext,
    events: {} as ReplicaEvent,
    input: {} as ReplicaMachineInput,
    emitted: {} as ReplicaCommand,
  },
  actions: {
    // The step now decided is open already when steps are opened ahead: only the one furthest ahead is new.
    open: enqueueActions(({ context, enqueue }, params: { first: boolean }) => {
      enqueue.assign({ reports: Array(context.stages).fill(undefined), stepped: Array(context.stages).fill(false) });
      const ahead = context.openAhead ?? 0;
      for (let step = params.first ? context.step : context.step + ahead; step <= context.step + ahead && step < context.steps; step++) {
        enqueue.emit({ type: 'OPEN_STEP', replica: context.replica, step });
      }
    }),
    retire: assign(({ context, event }) => (event.type === 'RETIRE' && event.lastStep >= context.step + (context.openAhead ?? 0) && event.lastStep + 1 < context.steps
      ? { steps: event.lastStep + 1 } : {})),
  },
}).createMachine({
  id: 'replica',
  on: { RETIRE: { actions: 'retire' } },
  context: ({ input }) => ({ ...input, step: input.firstStep ?? 0, reports: [], stepped: [], losses: [] }),
  initial: 'idle',
  states: {
    idle: { on: { START: [{ guard: ({ context }) => context.step >= context.steps, target: 'finished' }, { target: 'collecting', actions: { type: 'open', params: { first: true } } }] } },
    collecting: {
      on: {
        STAGE_DONE: [
          {
            guard: ({ context, event }) => lastReport(context, event) && decide(context, event).stops,
            target: 'stopped',
            actions: enqueueActions(({ context, event, enqueue }) => {
              if (event.type !== 'STAGE_DONE') return;
              const { reports, clip, loss } = decide(context, event);
              const stages = reports.flatMap((r, s) => (r.sumSquares.every(Number.isFinite) ? [] : [s]));
              enqueue.assign({ reports, losses: [...context.losses, loss] });
              enqueue.emit({ type: 'NOT_FINITE', replica: context.replica, step: context.step, gradNorm: clip.gradNorm, loss, stages });
            }),
          },
          {
            guard: ({ context, event }) => lastReport(context, event),
            target: 'committing',
            actions: enqueueActions(({ context, event, enqueue }) => {
              if (event.type !== 'STAGE_DONE') return;
              const { reports, clip, loss, finite } = decide(context, event);
              enqueue.assign({ reports, losses: [...context.losses, loss] });
              // Under 'skip-step' a step that is not finite is committed as skipped: every stage leaves its weights as they were.
              enqueue.emit(finite
                ? { type: 'COMMIT_STEP', replica: context.replica, step: context.step, gradScale: clip.gradScale, gradNorm: clip.gradNorm, loss }
                : { type: 'COMMIT_STEP', replica: context.replica, step: context.step, gradScale: 0, gradNorm: clip.gradNorm, loss, skip: true });
            }),
          },
          {
            guard: ({ context, event }) => event.step === context.step,
            actions: assign(({ context, event }) => ({
              reports: context.reports.map((r, s) => (s === event.stage ? { sumSquares: event.sumSquares, loss: event.loss } : r)),
            })),
          },
        ],
      },
    },
    committing: {
      always: {
        guard: ({ context }) => context.step + 1 < context.steps,
        target: 'collecting',
        actions: [assign(({ context }) => ({ step: context.step + 1 })), { type: 'open', params: { first: false } }],
      },
      on: {
        STAGE_STEPPED: [
          { guard: ({ context, event }) => lastStepped(context, event), target: 'finished' },
          {
            guard: ({ context, event }) => event.step === context.step,
            actions: assign(({ context, event }) => ({ stepped: context.stepped.map((d, s) => d || s === event.stage) })),
          },
        ],
      },
    },
    // A step that was not finite under 'stop': nothing more is decided (the coordinator fails the run).
    stopped: {},
    finished: {
      type: 'final',
      entry: enqueueActions(({ context, enqueue }) => enqueue.emit({ type: 'FINISHED', replica: context.replica, losses: context.losses })),
    },
  },
});
