// The Bridge actor of one pipeline stage: it gathers the replicas'
// contributions to each outer step (their stage-s parameters after H inner
// steps) and decides when to combine them: at once when every replica that
// is a member at that outer step has delivered, or once `timeoutMs` has
// passed since the first contribution if a quorum has. Replicas join and
// leave at outer-step boundaries (JOINED, LEAVING): membership over time. A contribution to an outer step already combined is late: that
// replica adopts the published result like everyone else. Pure, keeping time
// on the actor clock (actor-clock.ts): the runtime (runtime/bridge/) does the
// I/O and tells it when a combination is stored.
import { assign, enqueueActions, setup } from 'xstate';
import { elapsedSince, tickDelay, type ActorClock } from './actor-clock.ts';

/** A replica's outer steps in the run: it contributes to `from` … `until` (open-ended while it stays). */
export interface ReplicaSpan {
  readonly replica: number;
  readonly from: number;
  readonly until?: number;
}

export interface BridgeMachineInput {
  readonly stage: number;
  /** Who contributes to which outer step: replicas that joined, and left, mid-run (membership over time). */
  readonly members: readonly ReplicaSpan[];
  /** Fewest contributions a sync goes ahead with once the timeout has passed (at most the outer step's members). */
  readonly quorum: number;
  readonly timeoutMs: number;
  /** The actor clock's tick: a quorum goes ahead within a tick of its timeout. */
  readonly tickMs: number;
}

export type BridgeEvent =
  | { type: 'CONTRIBUTED'; outer: number; replica: number }
  | { type: 'COMBINED'; outer: number }
  /** A replica joins (its first contribution is to outer step `from`), or will leave after contributing to `until`. */
  | { type: 'JOINED'; replica: number; from: number }
  | { type: 'LEAVING'; replica: number; until: number };

export type BridgeCommand =
  /** firstAt: the first contribution's stamp; at: now. Both on the actor clock. */
  | { type: 'COMBINE'; stage: number; outer: number; replicas: number[]; firstAt: number; at: number }
  | { type: 'LATE'; stage: number; outer: number; replica: number };

interface Gathering {
  replicas: number[];  // in arrival order; the runtime sums them in replica order
  firstAt: number;
  combining: boolean;
}

export interface BridgeContext extends BridgeMachineInput, ActorClock {
  now: number;
  /** Outer steps with contributions, not yet combined. */
  open: Record<number, Gathering>;
  /** Outer steps combined (stored), as a sorted list. */
  done: number[];
}

/** The replicas that contribute to outer step `outer`. */
export function membersAt(members: readonly ReplicaSpan[], outer: number): number[] {
  return members.filter((m) => m.from <= outer && (m.until === undefined || outer <= m.until)).map((m) => m.replica);
}

function ready(c: BridgeContext, outer: number, g: Gathering): boolean {
  if (g.combining) return false;
  const members = membersAt(c.members, outer);
  return members.every((r) => g.replicas.includes(r)) || (g.replicas.length >= Math.min(c.quorum, members.length) && elapsedSince(c, g.firstAt) >= c.timeoutMs);
}

export const bridgeMachine = setup({
  types: {
    context: {} as BridgeContext,
    events: {} as BridgeEvent,
    input: {} as BridgeMachineInput,
    emitted: {} as BridgeCommand,
  },
  delays: { tick: tickDelay },
  actions: {
    tick: assign(({ context }) => ({ now: context.now + context.tickMs })),
    combineWhatIsReady: enqueueActions(({ context, enqueue }) => {
      const open = { ...context.open };
      let changed = false;
      for (const [key, g] of Object.entries(open)) {
        const outer = Number(key);
        if (!ready(context, outer, g)) continue;
        open[outer] = { ...g, combining: true };
        changed = true;
        enqueue.emit({ type: 'COMBINE', stage: context.stage, outer, replicas: [...g.replicas].sort((a, b) => a - b), firstAt: g.firstAt, at: context.now });
      }
      if (changed) enqueue.assign({ open });
    }),
  },
}).createMachine({
  id: 'bridge',
  context: ({ input }) => ({ ...input, now: 0, open: {}, done: [] }),
  initial: 'gathering',
  states: {
    gathering: {
      after: { tick: { target: 'gathering', reenter: true, actions: ['tick', 'combineWhatIsReady'] } },
    },
  },
  on: {
    CONTRIBUTED: {
      actions: [
        enqueueActions(({ context, event, enqueue }) => {
          if (context.done.includes(event.outer) || context.open[event.outer]?.combining) {
            enqueue.emit({ type: 'LATE', stage: context.stage, outer: event.outer, replica: event.replica });
            return;
          }
          // Not a member then (it left before, or joins after): it adopts the result like a late one.
          if (!membersAt(context.members, event.outer).includes(event.replica)) {
            enqueue.emit({ type: 'LATE', stage: context.stage, outer: event.outer, replica: event.replica });
            return;
          }
          const g = context.open[event.outer] ?? { replicas: [], firstAt: context.now, combining: false };
          if (g.replicas.includes(event.replica)) return;  // a replacement sending the same contribution again
          enqueue.assign({ open: { ...context.open, [event.outer]: { ...g, replicas: [...g.replicas, event.replica] } } });
        }),
        'combineWhatIsReady',
      ],
    },
    JOINED: {
      actions: [
        assign(({ context, event }) => ({ members: [...context.members.filter((m) => m.replica !== event.replica), { replica: event.replica, from: event.from }] })),
        'combineWhatIsReady',
      ],
    },
    LEAVING: {
      actions: [
        assign(({ context, event }) => ({ members: context.members.map((m) => (m.replica === event.replica ? { ...m, until: event.until } : m)) })),
        'combineWhatIsReady',
      ],
    },
    COMBINED: {
      actions: assign(({ context, event }) => {
        const { [event.outer]: _combined, ...open } = context.open;
        return { open, done: [...context.done, event.outer].sort((a, b) => a - b) };
      }),
    },
  },
});
