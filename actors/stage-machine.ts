// The Stage actor: one per (replica, stage). Pure: it receives events about
// arrivals and finished computations and emits the commands the host runtime
// carries out (run a forward or a backward, report the step, apply the
// optimizer step, ack the step's inputs). It never touches a tensor, and
// keeps no time: it moves on events alone (actor-clock.ts).
//
// Schedule: 1F1B. Forward when the next microbatch's input has arrived and
// fewer than S−s microbatches (plus `extraInFlight` on all but the last
// stage, to hide link latency) are in flight (forwarded, not yet backwarded);
// a waiting backward always goes first. Forwards and backwards both run in
// microbatch order, so gradients accumulate in microbatch order whatever the
// arrival order.
//
// Recovery: a replacement starts from a checkpoint (`committed` in the input)
// and replays the step control and the inputs recorded since. Opens and
// commits may then arrive before the stage can act on them; they are kept
// and taken in step order, so a replayed step runs exactly like a live one.
import { assign, enqueueActions, setup } from 'xstate';

export interface StageMachineInput {
  readonly stage: number;         // s
  readonly stages: number;        // S
  readonly microbatches: number;  // M per step
  readonly committed?: number;    // the last step in the weights it starts from (a checkpoint); −1 when fresh
  readonly extraInFlight?: number;  // beyond S−s, on all but the last stage (training.extraInFlight); default 0
}

type InputKind = 'act' | 'grad';

export type StageEvent =
  | { type: 'STEP_OPEN'; step: number }
  | { type: 'ACT_ARRIVED'; step: number; mb: number }
  | { type: 'GRAD_ARRIVED'; step: number; mb: number }
  | { type: 'FORWARD_DONE'; step: number; mb: number }
  | { type: 'BACKWARD_DONE'; step: number; mb: number }
  | { type: 'STEP_COMMIT'; step: number; gradScale: number };

export type StageCommand =
  | { type: 'RUN_FORWARD'; step: number; mb: number }
  | { type: 'RUN_BACKWARD'; step: number; mb: number }
  | { type: 'STEP_READY'; step: number }        // every backward done: report Σg² (and the loss)
  | { type: 'APPLY_STEP'; step: number; gradScale: number }
  | { type: 'ACK_STEP'; step: number }          // the step's effect is in the weights: ack its inputs
  | { type: 'STEPPED'; step: number }
  | { type: 'DUPLICATE'; kind: InputKind; step: number; mb: number };  // already seen: ack it, nothing else

export interface StageContext extends StageMachineInput {
  step: number;              // the open step, or the last committed one while waiting
  committed: number;         // last committed step, −1 before the first
  acts: number[];            // microbatches whose input is here and not yet forwarded
  grads: number[];           // microbatches whose gradient is here and not yet backwarded
  nextForward: number;
  nextBackward: number;
  busy: boolean;             // a RUN_* command is being carried out
  future: Array<{ kind: InputKind; step: number; mb: number }>;  // inputs for steps not open yet
  opens: number[];           // opened steps not yet run (replayed control can run ahead)
  commits: Array<{ step: number; gradScale: number }>;  // commits not yet applied
}

/** The in-flight limit of stage s of S under 1F1B, with `extra` more on every stage but the last (whose gradient is its own). */
export const inFlightLimit = (stage: number, stages: number, extra = 0) => stages - stage + (stage < stages - 1 ? extra : 0);

function seen(ctx: StageContext, kind: InputKind, mb: number): boolean {
  return kind === 'act' ? mb < ctx.nextForward || ctx.acts.includes(mb) : mb < ctx.nextBackward || ctx.grads.includes(mb);
}

/** A reported result is for the computation now running: this step, the expected microbatch. */
function isOutstanding(ctx: StageContext, step: number, mb: number, expected: number): boolean {
  return ctx.busy && step === ctx.step && mb === expected;
}

/** The command to issue next, if any (pure). */
export function nextCommand(ctx: StageContext): StageCommand | undefined {
  if (ctx.busy || ctx.step <= ctx.committed) return undefined;
  // A gradient can come before its microbatch's forward when inputs are replayed; the backward needs that forward.
  if (ctx.grads.includes(ctx.nextBackward) && ctx.nextBackward < ctx.nextForward) return { type: 'RUN_BACKWARD', step: ctx.step, mb: ctx.nextBackward };
  const inFlight = ctx.nextForward - ctx.nextBackward;
  if (ctx.acts.includes(ctx.nextForward) && inFlight < inFlightLimit(ctx.stage, ctx.stages, ctx.extraInFlight)) {
    return { type: 'RUN_FORWARD', step: ctx.step, mb: ctx.nextForward };
  }
  return undefined;
}

export const stageMachine = setup({
  types: {
    context: {} as StageContext,
    events: {} as StageEvent,
    input: {} as StageMachineInput,
    emitted: {} as StageCommand,
  },
  actions: {
    // Issue the next computation, marking the stage busy until it is reported done.
    schedule: enqueueActions(({ context, enqueue }) => {
      const cmd = nextCommand(context);
      if (!cmd) return;
      enqueue.assign({ busy: true });
      enqueue.emit(cmd);
    }),
    // An input: the open step's is queued (and may start a computation); a
    // later step's waits in `future`; anything already seen or finished is a
    // duplicate, which the runtime only acks.
    arrive: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'ACT_ARRIVED' && event.type !== 'GRAD_ARRIVED') return;
      const kind: InputKind = event.type === 'ACT_ARRIVED' ? 'act' : 'grad';
      const { step, mb } = event;
      const duplicate = () => enqueue.emit({ type: 'DUPLICATE', kind, step, mb });
      if (step <= context.committed || mb < 0 || mb >= context.microbatches) return duplicate();
      if (step > context.step) {
        if (context.future.some((f) => f.kind === kind && f.step === step && f.mb === mb)) return duplicate();
        enqueue.assign({ future: [...context.future, { kind, step, mb }] });
        return;
      }
      if (step < context.step || seen(context, kind, mb)) return duplicate();
      const next = kind === 'act' ? { acts: [...context.acts, mb] } : { grads: [...context.grads, mb] };
      const cmd = nextCommand({ ...context, ...next });
      enqueue.assign(cmd ? { ...next, busy: true } : next);
      if (cmd) enqueue.emit(cmd);
    }),
  },
}).createMachine({
  id: 'stage',
  context: ({ input }) => ({
    ...input, step: input.committed ?? -1, committed: input.committed ?? -1,
    acts: [], grads: [], nextForward: 0, nextBackward: 0, busy: false, future: [], opens: [], commits: [],
  }),
  // Step control is remembered whatever the state; `always` below takes it in order.
  on: {
    STEP_OPEN: {
      guard: ({ context, event }) => event.step > context.committed && !context.opens.includes(event.step) && !(event.step === context.step && context.step > context.committed),
      actions: assign(({ context, event }) => ({ opens: [...context.opens, event.step] })),
    },
    STEP_COMMIT: {
      guard: ({ context, event }) => event.step > context.committed && !context.commits.some((c) => c.step === event.step),
      actions: assign(({ context, event }) => ({ commits: [...context.commits, { step: event.step, gradScale: event.gradScale }] })),
    },
  },
  initial: 'waiting',
  states: {
    // Between steps: inputs for later steps wait in `future`.
    waiting: {
      always: {
        guard: ({ context }) => context.opens.includes(context.committed + 1),
        target: 'running',
        actions: [
          assign(({ context }) => {
            const step = context.committed + 1;
            const early = context.future.filter((f) => f.step === step);
            return {
              step,
              opens: context.opens.filter((o) => o !== step),
              nextForward: 0,
              nextBackward: 0,
              busy: false,
              // Stage 0 reads its own data: every microbatch's input is here at once.
              acts: context.stage === 0
                ? Array.from({ length: context.microbatches }, (_, i) => i)
                : early.filter((f) => f.kind === 'act').map((f) => f.mb),
              grads: early.filter((f) => f.kind === 'grad').map((f) => f.mb),
              future: context.future.filter((f) => f.step !== step),
            };
          }),
          'schedule',
        ],
      },
      on: {
        ACT_ARRIVED: { actions: 'arrive' },
        GRAD_ARRIVED: { actions: 'arrive' },
      },
    },
    running: {
      on: {
        ACT_ARRIVED: { actions: 'arrive' },
        GRAD_ARRIVED: { actions: 'arrive' },
        FORWARD_DONE: {
          guard: ({ context, event }) => isOutstanding(context, event.step, event.mb, context.nextForward),
          actions: [
            assign(({ context }) => ({
              busy: false,
              acts: context.acts.filter((m) => m !== context.nextForward),
              nextForward: context.nextForward + 1,
              // The last stage's backward starts from its own loss.
              grads: context.stage === context.stages - 1 ? [...context.grads, context.nextForward] : context.grads,
            })),
            'schedule',
          ],
        },
        BACKWARD_DONE: [
          {
            guard: ({ context, event }) =>
              isOutstanding(context, event.step, event.mb, context.nextBackward) && event.mb === context.microbatches - 1,
            target: 'reporting',
            actions: [
              assign(({ context }) => ({ busy: false, grads: [], nextBackward: context.nextBackward + 1 })),
              enqueueActions(({ context, enqueue }) => enqueue.emit({ type: 'STEP_READY', step: context.step })),
            ],
          },
          {
            guard: ({ context, event }) => isOutstanding(context, event.step, event.mb, context.nextBackward),
            actions: [
              assign(({ context }) => ({
                busy: false,
                grads: context.grads.filter((m) => m !== context.nextBackward),
                nextBackward: context.nextBackward + 1,
              })),
              'schedule',
            ],
          },
        ],
      },
    },
    // Every backward of the step is done; the replica decides the clip factor.
    reporting: {
      always: {
        guard: ({ context }) => context.commits.some((c) => c.step === context.step),
        target: 'waiting',
        actions: [
          enqueueActions(({ context, enqueue }) => {
            const { gradScale } = context.commits.find((c) => c.step === context.step)!;
            enqueue.emit({ type: 'APPLY_STEP', step: context.step, gradScale });
            enqueue.emit({ type: 'ACK_STEP', step: context.step });
            enqueue.emit({ type: 'STEPPED', step: context.step });
          }),
          assign(({ context }) => ({ committed: context.step, commits: context.commits.filter((c) => c.step !== context.step) })),
        ],
      },
      on: {
        ACT_ARRIVED: { actions: 'arrive' },
        GRAD_ARRIVED: { actions: 'arrive' },
      },
    },
  },
});
