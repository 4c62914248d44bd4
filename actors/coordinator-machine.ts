// The Coordinator actor: one per run. Admits hosts, gives the first S×R of
// them a (replica, stage) slot and keeps the rest as standbys, starts the run
// once every slot's host is ready, watches heartbeats on the actor clock, and
// ends the run when every replica has finished. Losing a slot's host fails the
// run for now (replacing it from the standbys is the fault-recovery work).
import { assign, enqueueActions, setup } from 'xstate';

export interface CoordinatorMachineInput {
  readonly stages: number;
  readonly replicas: number;
  readonly heartbeatTimeoutMs: number;
  readonly tickMs: number;
}

export interface HostRecord {
  readonly id: string;
  readonly datacenter: string;
  readonly lastSeen: number;
  readonly slot: { replica: number; stage: number } | null;
  readonly ready: boolean;
}

export type CoordinatorEvent =
  | { type: 'HOST_JOINED'; host: string; datacenter: string }
  | { type: 'HEARTBEAT'; host: string }
  | { type: 'HOST_READY'; host: string }
  | { type: 'REPLICA_FINISHED'; replica: number }
  | { type: 'SLOT_LOST'; host: string };  // raised by the liveness check

export type CoordinatorCommand =
  | { type: 'ASSIGN'; host: string; replica: number; stage: number }
  | { type: 'STANDBY'; host: string }
  | { type: 'START_RUN' }
  | { type: 'HOST_LOST'; host: string; slot: { replica: number; stage: number } | null }
  | { type: 'RUN_FAILED'; reason: string }
  | { type: 'RUN_FINISHED' };

export interface CoordinatorContext extends CoordinatorMachineInput {
  now: number;                 // ms on the actor clock, advanced by ticks
  hosts: HostRecord[];         // in join order
  finished: number[];          // replicas
}

const slotCount = (c: CoordinatorContext) => c.stages * c.replicas;

export const coordinatorMachine = setup({
  types: {
    context: {} as CoordinatorContext,
    events: {} as CoordinatorEvent,
    input: {} as CoordinatorMachineInput,
    emitted: {} as CoordinatorCommand,
  },
  delays: { tick: ({ context }) => context.tickMs },
  actions: {
    admit: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'HOST_JOINED' || context.hosts.some((h) => h.id === event.host)) return;
      enqueue.assign({ hosts: [...context.hosts, { id: event.host, datacenter: event.datacenter, lastSeen: context.now, slot: null, ready: false }] });
    }),
    seen: assign(({ context, event }) => ({
      hosts: context.hosts.map((h) => ('host' in event && h.id === event.host ? { ...h, lastSeen: context.now } : h)),
    })),
    // Slots in replica-major order go to hosts in join order.
    assignSlots: enqueueActions(({ context, enqueue }) => {
      const hosts = context.hosts.map((h, i) =>
        i < slotCount(context) ? { ...h, slot: { replica: Math.floor(i / context.stages), stage: i % context.stages } } : h,
      );
      enqueue.assign({ hosts });
      for (const h of hosts) {
        if (h.slot) enqueue.emit({ type: 'ASSIGN', host: h.id, replica: h.slot.replica, stage: h.slot.stage });
        else enqueue.emit({ type: 'STANDBY', host: h.id });
      }
    }),
    standbyLate: enqueueActions(({ context, event, enqueue }) => {
      if (event.type === 'HOST_JOINED' && !context.hosts.some((h) => h.id === event.host)) {
        enqueue.assign({ hosts: [...context.hosts, { id: event.host, datacenter: event.datacenter, lastSeen: context.now, slot: null, ready: false }] });
        enqueue.emit({ type: 'STANDBY', host: event.host });
      }
    }),
    checkLiveness: enqueueActions(({ context, enqueue }) => {
      const now = context.now + context.tickMs;
      // lastSeen is the tick before the host's last message, up to a tick early: that tick is not silence.
      const lost = context.hosts.filter((h) => now - h.lastSeen - context.tickMs >= context.heartbeatTimeoutMs);
      enqueue.assign({ now, hosts: context.hosts.filter((h) => !lost.includes(h)) });
      for (const h of lost) {
        enqueue.emit({ type: 'HOST_LOST', host: h.id, slot: h.slot });
        if (h.slot) enqueue.raise({ type: 'SLOT_LOST', host: h.id });
      }
    }),
  },
  guards: {
    enoughHosts: ({ context, event }) =>
      event.type === 'HOST_JOINED' && !context.hosts.some((h) => h.id === event.host) && context.hosts.length + 1 >= slotCount(context),
    allReady: ({ context, event }) =>
      event.type === 'HOST_READY' && context.hosts.filter((h) => h.slot).every((h) => h.ready || h.id === event.host),
    allFinished: ({ context, event }) =>
      event.type === 'REPLICA_FINISHED' && new Set([...context.finished, event.replica]).size === context.replicas,
  },
}).createMachine({
  id: 'coordinator',
  type: 'parallel',
  context: ({ input }) => ({ ...input, now: 0, hosts: [], finished: [] }),
  states: {
    run: {
      initial: 'gathering',
      states: {
        gathering: {
          on: {
            HOST_JOINED: [{ guard: 'enoughHosts', target: 'starting', actions: ['admit', 'assignSlots'] }, { actions: 'admit' }],
          },
        },
        starting: {
          on: {
            HOST_JOINED: { actions: 'standbyLate' },
            HOST_READY: [
              { guard: 'allReady', target: 'running', actions: ['seen', enqueueActions(({ enqueue }) => enqueue.emit({ type: 'START_RUN' }))] },
              { actions: assign(({ context, event }) => ({ hosts: context.hosts.map((h) => (h.id === event.host ? { ...h, ready: true, lastSeen: context.now } : h)) })) },
            ],
            SLOT_LOST: { target: 'failed' },
          },
        },
        running: {
          on: {
            HOST_JOINED: { actions: 'standbyLate' },
            REPLICA_FINISHED: [
              { guard: 'allFinished', target: 'finished' },
              { actions: assign(({ context, event }) => ({ finished: [...context.finished, event.replica] })) },
            ],
            SLOT_LOST: { target: 'failed' },
          },
        },
        finished: { entry: enqueueActions(({ enqueue }) => enqueue.emit({ type: 'RUN_FINISHED' })) },
        failed: {
          entry: enqueueActions(({ event, enqueue }) =>
            enqueue.emit({ type: 'RUN_FAILED', reason: event.type === 'SLOT_LOST' ? `host ${event.host} holding a slot stopped sending heartbeats` : 'run failed' })),
        },
      },
    },
    liveness: {
      initial: 'watching',
      states: {
        watching: {
          on: { HEARTBEAT: { actions: 'seen' } },
          after: { tick: { target: 'watching', reenter: true, actions: 'checkLiveness' } },
        },
      },
    },
  },
});
