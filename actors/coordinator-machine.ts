// The Coordinator actor: one per run. Admits hosts, gives the first S×R of
// them a (replica, stage) slot and keeps the rest as standbys, starts the run
// once every slot's host is ready (R: the replicas that start it; each other
// replica joins later, once S standbys wait), watches heartbeats on the actor clock, and
// ends the run when every replica has finished. A slot whose host goes quiet
// goes to the first standby, or, when there is none, to the next host that
// joins; while the coordinator's own link to NATS is silent, silence counts
// against no host. A slot vacant for `retireVacantMs` strands its replica: the
// runtime may retire it (REPLICA_RETIRED), after which its slots are nobody's
// to fill and the run ends without it. A restarted coordinator starts from the
// hosts and slots it kept in KV (`restore`).
import { assign, enqueueActions, setup } from 'xstate';
import { elapsedSince, tickDelay } from './actor-clock.ts';

export interface Slot {
  readonly replica: number;
  readonly stage: number;
}

export interface CoordinatorMachineInput {
  readonly stages: number;
  readonly replicas: number;
  /** Replicas 0…startReplicas−1 start the run; each of the others joins once `stages` standbys wait (default: all start). */
  readonly startReplicas?: number;
  readonly heartbeatTimeoutMs: number;
  readonly tickMs: number;
  /** A slot vacant this long strands its replica (REPLICA_STRANDED, once per vacancy); unset: never. */
  readonly retireVacantMs?: number;
  /** Hosts that take the first slots in this order, wherever they joined (a run re-split for its holders' speeds). */
  readonly preferredHosts?: readonly string[];
  /** A restarted coordinator: the hosts it knew, with their slots; `running` once slots were given out. */
  readonly restore?: {
    readonly running: boolean; readonly hosts: ReadonlyArray<{ id: string; datacenter: string; slot: Slot | null }>;
    /** The replicas that had joined the run (default: those that start it). */
    readonly active?: readonly number[];
    /** Replicas retired because a slot stayed vacant. */
    readonly retired?: readonly number[];
  };
}

export interface HostRecord {
  readonly id: string;
  readonly datacenter: string;
  readonly lastSeen: number;
  readonly slot: Slot | null;
  readonly ready: boolean;
}

export type CoordinatorEvent =
  | { type: 'HOST_JOINED'; host: string; datacenter: string }
  | { type: 'HEARTBEAT'; host: string }
  | { type: 'HOST_READY'; host: string }
  | { type: 'REPLICA_FINISHED'; replica: number }
  // An audit's catch rewound the replica to its start: it is not finished, whatever it said before.
  | { type: 'REPLICA_REWOUND'; replica: number }
  // An audit caught the host computing wrongly: it is lost at the next tick, as if it had gone silent for good.
  | { type: 'HOST_EVICTED'; host: string }
  // The coordinator's own link to NATS went silent (a paused or partitioned server), and came back: while it is
  // deaf, no host's silence is its host's fault.
  | { type: 'LINK_LOST' }
  | { type: 'LINK_BACK' }
  // The runtime retired a stranded replica: its slots are filled no more, and the run ends without it.
  | { type: 'REPLICA_RETIRED'; replica: number }
  | { type: 'SLOT_LOST'; host: string; slot: Slot; datacenter: string };  // raised by the liveness check

export type CoordinatorCommand =
  | { type: 'ASSIGN'; host: string; replica: number; stage: number; replacing?: string }
  | { type: 'STANDBY'; host: string }
  | { type: 'START_RUN' }
  | { type: 'HOST_LOST'; host: string; slot: Slot | null }
  | { type: 'SLOT_VACANT'; replica: number; stage: number; lost: string }  // no standby: the next host to join gets it
  // A replica that did not start the run joins it: the ASSIGNs of its slots follow.
  | { type: 'REPLICA_JOINED'; replica: number }
  // A slot of the replica has been vacant for retireVacantMs: the runtime decides whether it can be retired.
  | { type: 'REPLICA_STRANDED'; replica: number; stage: number; vacantMs: number }
  | { type: 'RUN_FINISHED' };

export interface CoordinatorContext extends CoordinatorMachineInput {
  now: number;                 // ms on the actor clock (actor-clock.ts), advanced by ticks
  hosts: HostRecord[];         // in join order
  vacant: Array<Slot & { lost: string; since: number; stranded: boolean }>;  // slots whose host was lost and no standby was there
  finished: number[];          // replicas
  active: number[];            // replicas in the run: those that started it, and those that joined since
  retired: number[];           // of those, retired because a slot stayed vacant (REPLICA_RETIRED)
  deafSince: number | undefined;  // on the actor clock, while the coordinator's link to NATS is silent
}

/** The slots the run starts with: every stage of the replicas that start it. */
const slotCount = (c: CoordinatorContext) => c.stages * (c.startReplicas ?? c.replicas);

export const coordinatorMachine = setup({
  types: {
    context: {} as CoordinatorContext,
    events: {} as CoordinatorEvent,
    input: {} as CoordinatorMachineInput,
    emitted: {} as CoordinatorCommand,
  },
  delays: { tick: tickDelay },
  actions: {
    admit: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'HOST_JOINED' || context.hosts.some((h) => h.id === event.host)) return;
      enqueue.assign({ hosts: [...context.hosts, { id: event.host, datacenter: event.datacenter, lastSeen: context.now, slot: null, ready: false }] });
    }),
    seen: assign(({ context, event }) => ({
      hosts: context.hosts.map((h) => ('host' in event && h.id === event.host ? { ...h, lastSeen: context.now } : h)),
    })),
    // Slots in replica-major order go to hosts grouped by datacenter (datacenters in the order their first host
    // joined, hosts in join order within each), so a replica's neighbouring stages share a datacenter wherever
    // they can and its frames cross as few WAN links as the hosts allow. The rest wait as standbys. Preferred hosts
    // (a run re-split for their speeds) come first, in their order: each gets the stage the split was sized for.
    assignSlots: enqueueActions(({ context, enqueue }) => {
      const dcOrder = [...new Set(context.hosts.map((h) => h.datacenter))];
      const n = context.hosts.length;
      const preferred = (id: string) => context.preferredHosts?.indexOf(id) ?? -1;
      const order = context.hosts.map((h, i) => ({ id: h.id, key: preferred(h.id) >= 0 ? preferred(h.id) - n * n : dcOrder.indexOf(h.datacenter) * n + i }))
        .sort((a, b) => a.key - b.key).map((x) => x.id);
      const hosts = context.hosts.map((h) => {
        const i = order.indexOf(h.id);
        return i < slotCount(context) ? { ...h, slot: { replica: Math.floor(i / context.stages), stage: i % context.stages } } : h;
      });
      enqueue.assign({ hosts });
      for (const h of hosts) {
        if (h.slot) enqueue.emit({ type: 'ASSIGN', host: h.id, replica: h.slot.replica, stage: h.slot.stage });
        else enqueue.emit({ type: 'STANDBY', host: h.id });
      }
    }),
    // A host joining after the slots went out fills a vacant slot, or waits as a standby.
    joinLate: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'HOST_JOINED' || context.hosts.some((h) => h.id === event.host)) return;
      const [slot, ...rest] = context.vacant;
      const record = { id: event.host, datacenter: event.datacenter, lastSeen: context.now, slot: slot ? { replica: slot.replica, stage: slot.stage } : null, ready: false };
      enqueue.assign({ hosts: [...context.hosts, record], vacant: rest });
      if (slot) enqueue.emit({ type: 'ASSIGN', host: event.host, replica: slot.replica, stage: slot.stage, replacing: slot.lost });
      else enqueue.emit({ type: 'STANDBY', host: event.host });
    }),
    // Once the run is under way, `stages` standbys form a replica that has not joined yet: in join order, grouped by
    // datacenter as at the start.
    formReplica: enqueueActions(({ context, enqueue }) => {
      let hosts = context.hosts;
      const joining = Array.from({ length: context.replicas }, (_, r) => r).find((r) => !context.active.includes(r));
      const standbys = hosts.filter((h) => !h.slot);
      if (joining === undefined || standbys.length < context.stages) return;
      const dcOrder = [...new Set(standbys.map((h) => h.datacenter))];
      const chosen = standbys.map((h, i) => ({ id: h.id, key: dcOrder.indexOf(h.datacenter) * standbys.length + i })).sort((a, b) => a.key - b.key).slice(0, context.stages).map((x) => x.id);
      hosts = hosts.map((h) => (chosen.includes(h.id) ? { ...h, slot: { replica: joining, stage: chosen.indexOf(h.id) } } : h));
      enqueue.assign({ hosts, active: [...context.active, joining] });
      enqueue.emit({ type: 'REPLICA_JOINED', replica: joining });
      chosen.forEach((host, stage) => enqueue.emit({ type: 'ASSIGN', host, replica: joining, stage }));
    }),
    // The lost host's slot goes to the first standby (in join order) in the lost host's datacenter, so the
    // stage stays beside its neighbours; else to the first standby anywhere.
    evict: assign(({ context, event }) => ({
      hosts: context.hosts.map((h) => (event.type === 'HOST_EVICTED' && h.id === event.host ? { ...h, lastSeen: context.now - context.heartbeatTimeoutMs - context.tickMs } : h)),
    })),
    unfinish: assign(({ context, event }) => (event.type === 'REPLICA_REWOUND' ? { finished: context.finished.filter((r) => r !== event.replica) } : {})),
    reassign: enqueueActions(({ context, event, enqueue }) => {
      if (event.type !== 'SLOT_LOST' || context.retired.includes(event.slot.replica)) return;  // a retired replica's slot waits for no one
      const standby = context.hosts.find((h) => !h.slot && h.datacenter === event.datacenter) ?? context.hosts.find((h) => !h.slot);
      if (!standby) {
        enqueue.assign({ vacant: [...context.vacant, { ...event.slot, lost: event.host, since: context.now, stranded: false }] });
        enqueue.emit({ type: 'SLOT_VACANT', ...event.slot, lost: event.host });
        return;
      }
      enqueue.assign({ hosts: context.hosts.map((h) => (h === standby ? { ...h, slot: event.slot } : h)) });
      enqueue.emit({ type: 'ASSIGN', host: standby.id, replica: event.slot.replica, stage: event.slot.stage, replacing: event.host });
    }),
    // Deaf: time passes, but a host's silence is not counted against it.
    passDeaf: assign(({ context }) => ({ now: context.now + context.tickMs })),
    becomeDeaf: assign(({ context }) => ({ deafSince: context.now })),
    // What the coordinator could not hear for is taken off every host's silence, so a host is lost only after
    // heartbeatTimeoutMs of silence the coordinator was there to hear. (Resetting silence to zero instead would let
    // a link that fails over and over keep a dead host in its slot for good.)
    forgiveDeafness: assign(({ context }) => {
      const deaf = context.now - (context.deafSince ?? context.now);
      return { deafSince: undefined, hosts: context.hosts.map((h) => ({ ...h, lastSeen: Math.min(context.now, h.lastSeen + deaf) })) };
    }),
    checkLiveness: enqueueActions(({ context, enqueue }) => {
      const now = context.now + context.tickMs;
      // lastSeen is the tick before the host's last message, up to a tick early: that tick is not silence.
      const lost = context.hosts.filter((h) => elapsedSince({ now, tickMs: context.tickMs }, h.lastSeen) >= context.heartbeatTimeoutMs);
      enqueue.assign({ now, hosts: context.hosts.filter((h) => !lost.includes(h)) });
      for (const h of lost) {
        enqueue.emit({ type: 'HOST_LOST', host: h.id, slot: h.slot });
        if (h.slot) enqueue.raise({ type: 'SLOT_LOST', host: h.id, slot: h.slot, datacenter: h.datacenter });
      }
      const limit = context.retireVacantMs;
      if (limit === undefined) return;
      // One stranding per replica: the first of its slots to reach the limit.
      const stranded = context.vacant.filter((v, i) => !v.stranded && now - v.since >= limit && !context.vacant.some((w, j) => w.replica === v.replica && (w.stranded || j < i)));
      if (!stranded.length) return;
      enqueue.assign({ vacant: context.vacant.map((v) => (stranded.includes(v) ? { ...v, stranded: true } : v)) });
      for (const v of stranded) enqueue.emit({ type: 'REPLICA_STRANDED', replica: v.replica, stage: v.stage, vacantMs: now - v.since });
    }),
    retire: assign(({ context, event }) => (event.type === 'REPLICA_RETIRED' ? {
      retired: [...context.retired, event.replica], vacant: context.vacant.filter((v) => v.replica !== event.replica),
    } : {})),
  },
  guards: {
    enoughHosts: ({ context, event }) =>
      event.type === 'HOST_JOINED' && !context.hosts.some((h) => h.id === event.host) && context.hosts.length + 1 >= slotCount(context),
    allReady: ({ context, event }) =>
      event.type === 'HOST_READY' && context.hosts.filter((h) => h.slot).every((h) => h.ready || h.id === event.host),
    allFinished: ({ context, event }) =>
      event.type === 'REPLICA_FINISHED' && context.active.every((r) => r === event.replica || context.finished.includes(r) || context.retired.includes(r)),
    // Retiring the last replica still training ends the run (the runtime retires only while another trains).
    othersFinished: ({ context, event }) =>
      event.type === 'REPLICA_RETIRED' && context.active.every((r) => r === event.replica || context.finished.includes(r) || context.retired.includes(r)),
  },
}).createMachine({
  id: 'coordinator',
  type: 'parallel',
  context: ({ input }) => ({
    ...input,
    now: 0,
    hosts: (input.restore?.hosts ?? []).map((h) => ({ ...h, lastSeen: 0, ready: h.slot !== null })),
    vacant: [],
    finished: [],
    active: [...(input.restore?.active ?? Array.from({ length: input.startReplicas ?? input.replicas }, (_, r) => r))],
    retired: [...(input.restore?.retired ?? [])],
    deafSince: undefined,
  }),
  states: {
    run: {
      initial: 'booting',
      states: {
        // A restarted coordinator goes straight back to where its KV says the run was.
        booting: {
          always: [
            { guard: ({ context }) => context.restore?.running === true, target: 'running' },
            { guard: ({ context }) => context.hosts.length >= slotCount(context), target: 'starting', actions: 'assignSlots' },
            { target: 'gathering' },
          ],
        },
        gathering: {
          on: {
            HOST_JOINED: [{ guard: 'enoughHosts', target: 'starting', actions: ['admit', 'assignSlots'] }, { actions: 'admit' }],
          },
        },
        starting: {
          on: {
            HOST_JOINED: { actions: 'joinLate' },
            HOST_READY: [
              { guard: 'allReady', target: 'running', actions: 'seen' },
              { actions: assign(({ context, event }) => ({ hosts: context.hosts.map((h) => (h.id === event.host ? { ...h, ready: true, lastSeen: context.now } : h)) })) },
            ],
            SLOT_LOST: { actions: 'reassign' },
          },
        },
        running: {
          entry: [enqueueActions(({ enqueue }) => enqueue.emit({ type: 'START_RUN' })), 'formReplica'],
          on: {
            HOST_JOINED: { actions: ['joinLate', 'formReplica'] },
            REPLICA_FINISHED: [
              { guard: 'allFinished', target: 'finished' },
              { actions: assign(({ context, event }) => ({ finished: [...context.finished, event.replica] })) },
            ],
            REPLICA_REWOUND: { actions: 'unfinish' },
            REPLICA_RETIRED: [{ guard: 'othersFinished', target: 'finished', actions: 'retire' }, { actions: 'retire' }],
            SLOT_LOST: { actions: 'reassign' },
          },
        },
        finished: {
          entry: enqueueActions(({ enqueue }) => enqueue.emit({ type: 'RUN_FINISHED' })),
          // The last audits run after the last step: a catch then sends the run back to work.
          on: { REPLICA_REWOUND: { target: 'running', actions: 'unfinish' } },
        },
      },
    },
    liveness: {
      initial: 'watching',
      states: {
        watching: {
          on: { HEARTBEAT: { actions: 'seen' }, HOST_EVICTED: { actions: 'evict' }, LINK_LOST: { target: 'deaf', actions: 'becomeDeaf' } },
          after: { tick: { target: 'watching', reenter: true, actions: 'checkLiveness' } },
        },
        deaf: {
          on: { HEARTBEAT: { actions: 'seen' }, HOST_EVICTED: { actions: 'evict' }, LINK_BACK: { target: 'watching', actions: 'forgiveDeafness' } },
          after: { tick: { target: 'deaf', reenter: true, actions: 'passDeaf' } },
        },
      },
    },
  },
});
