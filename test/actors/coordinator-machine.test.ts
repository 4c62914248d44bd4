// The Coordinator machine on a simulated clock: admission, slot assignment in
// replica-major order, standbys, the start barrier, the end of the run, and
// liveness by heartbeat. The liveness check runs on the machine's tick (a
// re-entered `after` delay); SimulatedClock fires at most one round of timers
// per increment, so the clock is advanced tick by tick, as real time would.
import test from 'ava';
import { createActor, SimulatedClock } from 'xstate';
import { coordinatorMachine, type CoordinatorCommand, type CoordinatorEvent, type CoordinatorMachineInput } from '../../actors/coordinator-machine.ts';

const TIMEOUT = 1000, TICK = 100;

function coordinator(input: Partial<CoordinatorMachineInput> = {}) {
  const config: CoordinatorMachineInput = { stages: 3, replicas: 2, heartbeatTimeoutMs: TIMEOUT, tickMs: TICK, ...input };
  const clock = new SimulatedClock();
  const actor = createActor(coordinatorMachine, { input: config, clock });
  const log: Array<{ at: number; cmd: CoordinatorCommand }> = [];
  actor.on('*', (cmd) => { log.push({ at: clock.now(), cmd }); });
  actor.start();
  /** Sends one event and returns the commands it caused. */
  const send = (event: CoordinatorEvent): CoordinatorCommand[] => {
    const from = log.length;
    actor.send(event);
    return log.slice(from).map((e) => e.cmd);
  };
  /** Advances the clock by `ms`, tick by tick; `alive` hosts heartbeat every `every` ms. Returns the commands emitted meanwhile. */
  const advance = (ms: number, alive: readonly string[] = [], every = 300) => {
    const from = log.length;
    const end = clock.now() + ms;
    let nextBeat = clock.now() + every;
    while (clock.now() < end) {
      const to = Math.min(end, nextBeat, (Math.floor(clock.now() / TICK) + 1) * TICK);
      clock.increment(to - clock.now());
      if (clock.now() === nextBeat) {
        for (const host of alive) actor.send({ type: 'HEARTBEAT', host });
        nextBeat += every;
      }
    }
    return log.slice(from);
  };
  return { actor, clock, log, send, advance, config };
}

const hostIds = (n: number) => Array.from({ length: n }, (_, i) => `h${i}`);
const join = (host: string, datacenter = 'dc-a'): CoordinatorEvent => ({ type: 'HOST_JOINED', host, datacenter });

/** Joins S×R hosts (and `extra` more), makes every slotted one ready, and returns the coordinator running. */
function running(extra = 0, input: Partial<CoordinatorMachineInput> = {}) {
  const c = coordinator(input);
  const slots = c.config.stages * c.config.replicas;
  const hosts = hostIds(slots + extra);
  for (const h of hosts) c.send(join(h));
  for (const h of hosts.slice(0, slots)) c.send({ type: 'HOST_READY', host: h });
  return { ...c, hosts, slotted: hosts.slice(0, slots), standbys: hosts.slice(slots) };
}

test('slots go out in replica-major order once S×R hosts have joined, grouped by datacenter; the rest are standbys', (t) => {
  const { send } = coordinator();  // S=3, R=2
  for (const h of hostIds(5)) t.deepEqual(send(join(h, h === 'h1' ? 'dc-b' : 'dc-a')), [], `${h}: not enough hosts yet`);
  t.deepEqual(send(join('h1')), [], 'a host joining twice counts once');
  // dc-a's hosts (h0, h2, h3, h4, h5) take the first five slots in join order, dc-b's h1 the last.
  t.deepEqual(send(join('h5')), [
    { type: 'ASSIGN', host: 'h0', replica: 0, stage: 0 },
    { type: 'ASSIGN', host: 'h1', replica: 1, stage: 2 },
    { type: 'ASSIGN', host: 'h2', replica: 0, stage: 1 },
    { type: 'ASSIGN', host: 'h3', replica: 0, stage: 2 },
    { type: 'ASSIGN', host: 'h4', replica: 1, stage: 0 },
    { type: 'ASSIGN', host: 'h5', replica: 1, stage: 1 },
  ]);
  t.deepEqual(send(join('h6')), [{ type: 'STANDBY', host: 'h6' }]);
  t.deepEqual(send(join('h6')), [], 'a standby joining twice is told once');
  t.deepEqual(send(join('h2')), [], 'a slotted host joining again keeps its slot, no STANDBY');
});

test('preferred hosts take the first slots in their order, wherever and whenever they joined; the others follow as usual', (t) => {
  const c = coordinator({ stages: 3, replicas: 1, preferredHosts: ['h2', 'gone', 'h0'] });
  const out = ['h0', 'h1', 'h2', 'h3'].flatMap((h) => c.send(join(h, h === 'h2' ? 'dc-b' : 'dc-a')));
  const assigned = out.flatMap((x) => (x.type === 'ASSIGN' ? [[x.host, x.stage] as const] : [])).sort((a, b) => a[1] - b[1]);
  t.deepEqual(assigned, [['h2', 0], ['h0', 1], ['h1', 2]]);
  t.deepEqual(c.send(join('h4')), [{ type: 'STANDBY', host: 'h4' }]);
});

test('hosts that join interleaved from three datacenters get contiguous stages: a replica crosses each datacenter boundary once', (t) => {
  const { send } = coordinator();  // S=3, R=2
  const dcs = ['dc-x', 'dc-y', 'dc-z'];
  let out: CoordinatorCommand[] = [];
  for (const [i, h] of hostIds(6).entries()) out = send(join(h, dcs[i % 3]));  // h0 x, h1 y, h2 z, h3 x, h4 y, h5 z
  const stageOf = new Map(out.filter((c) => c.type === 'ASSIGN').map((c) => [(c as { host: string }).host, c as { replica: number; stage: number }]));
  // Grouped: x (h0, h3), y (h1, h4), z (h2, h5) → slots 0..5 in that order.
  t.deepEqual(['h0', 'h3', 'h1', 'h4', 'h2', 'h5'].map((h) => [stageOf.get(h)!.replica, stageOf.get(h)!.stage]), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
});

test('START_RUN comes once, after the last slotted host is ready', (t) => {
  const { send } = coordinator();
  const hosts = hostIds(7);
  for (const h of hosts) send(join(h));
  t.deepEqual(send({ type: 'HOST_READY', host: 'h6' }), [], 'a standby is not waited for and does not count');
  for (const h of ['h5', 'h0', 'h3', 'h1', 'h2']) t.deepEqual(send({ type: 'HOST_READY', host: h }), [], `${h} ready, h4 not yet`);
  t.deepEqual(send({ type: 'HOST_READY', host: 'h0' }), [], 'ready twice counts once');
  t.deepEqual(send({ type: 'HOST_READY', host: 'h4' }), [{ type: 'START_RUN' }]);
  t.deepEqual(send({ type: 'HOST_READY', host: 'h4' }), [], 'START_RUN only once');
  t.deepEqual(send(join('h7')), [{ type: 'STANDBY', host: 'h7' }], 'a late joiner during the run is a standby');
});

test('HOST_READY before the slots are assigned does not count', (t) => {
  const { send } = coordinator({ stages: 1, replicas: 2 });
  send(join('h0'));
  t.deepEqual(send({ type: 'HOST_READY', host: 'h0' }), []);
  t.is(send(join('h1')).length, 2);
  t.deepEqual(send({ type: 'HOST_READY', host: 'h1' }), [], 'h0 has not said ready since it got its slot');
  t.deepEqual(send({ type: 'HOST_READY', host: 'h0' }), [{ type: 'START_RUN' }]);
});

test('RUN_FINISHED once every replica has finished', (t) => {
  const { send } = running();
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 1 }), []);
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 1 }), [], 'the same replica twice');
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), [{ type: 'RUN_FINISHED' }]);
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), []);
});

test('REPLICA_FINISHED before the run started is ignored', (t) => {
  const { send } = coordinator({ stages: 1, replicas: 1 });
  send(join('h0'));
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), []);
  t.deepEqual(send({ type: 'HOST_READY', host: 'h0' }), [{ type: 'START_RUN' }]);
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), [{ type: 'RUN_FINISHED' }]);
});

test('a replica rewound after the run finished sends the run back to work, and it finishes again when the replica does', (t) => {
  const c = running(1);
  c.send({ type: 'REPLICA_FINISHED', replica: 0 });
  t.deepEqual(c.send({ type: 'REPLICA_FINISHED', replica: 1 }), [{ type: 'RUN_FINISHED' }]);
  // Back in `running`, whose entry says START_RUN: the runtime starts a run once (LiveRunState.start) and ignores it.
  t.deepEqual(c.send({ type: 'REPLICA_REWOUND', replica: 1 }), [{ type: 'START_RUN' }]);
  t.true(c.actor.getSnapshot().matches({ run: 'running' }));
  t.deepEqual(c.actor.getSnapshot().context.finished, [0]);
  // Back at work, a lost slot is handed on again.
  c.send({ type: 'HOST_EVICTED', host: 'h4' });
  t.deepEqual(c.advance(TICK, c.hosts.filter((h) => h !== 'h4')).map((e) => e.cmd), [
    { type: 'HOST_LOST', host: 'h4', slot: { replica: 1, stage: 1 } },
    { type: 'ASSIGN', host: c.standbys[0], replica: 1, stage: 1, replacing: 'h4' },
  ], 'an evicted host is lost at the next tick');
  t.deepEqual(c.send({ type: 'REPLICA_FINISHED', replica: 1 }), [{ type: 'RUN_FINISHED' }]);
});

test('heartbeats keep every host alive, slotted or standby, for as long as they come', (t) => {
  const c = running(2);
  t.deepEqual(c.advance(20 * TIMEOUT, c.hosts, 300), []);
  // A period just under the timeout is enough too.
  for (const host of c.hosts) c.send({ type: 'HEARTBEAT', host });
  t.deepEqual(c.advance(20 * TIMEOUT, c.hosts, TIMEOUT - 50), []);
  t.true(c.actor.getSnapshot().matches({ run: 'running' }));
});

test('a slotted host silent for longer than the timeout is lost and its slot goes to the first standby', (t) => {
  const c = running(2);
  const silent = 'h4';  // replica 1, stage 1
  const [first, second] = c.standbys;
  const others = c.hosts.filter((h) => h !== silent);
  const quietFrom = c.clock.now();
  t.deepEqual(c.advance(TIMEOUT, others), [], 'not lost at exactly the timeout');
  const after = c.advance(3 * TIMEOUT, others);
  t.deepEqual(after.map((e) => e.cmd), [
    { type: 'HOST_LOST', host: silent, slot: { replica: 1, stage: 1 } },
    { type: 'ASSIGN', host: first, replica: 1, stage: 1, replacing: silent },
  ]);
  const lostAfter = after[0].at - quietFrom;
  t.true(lostAfter > TIMEOUT && lostAfter <= TIMEOUT + TICK, `lost after ${lostAfter} ms of silence`);
  t.true(c.actor.getSnapshot().matches({ run: 'running' }));
  const hosts = c.actor.getSnapshot().context.hosts;
  t.deepEqual(hosts.find((h) => h.id === first)?.slot, { replica: 1, stage: 1 });
  t.is(hosts.find((h) => h.id === second)?.slot, null, 'the second standby stays a standby');
  t.false(hosts.some((h) => h.id === silent));
  t.deepEqual(c.send({ type: 'HEARTBEAT', host: silent }), [], 'a lost host that speaks again gets nothing back');
  c.send({ type: 'REPLICA_FINISHED', replica: 0 });
  t.deepEqual(c.send({ type: 'REPLICA_FINISHED', replica: 1 }), [{ type: 'RUN_FINISHED' }], 'the run goes on to its end');
});

test('while its own link to NATS is silent the coordinator loses no host; after, a host is lost only for silence it was there to hear', (t) => {
  const c = running(2);
  const dead = 'h4';  // replica 1, stage 1: it dies 600 ms before the link goes
  const others = c.hosts.filter((h) => h !== dead);
  t.deepEqual(c.advance(600, others), []);
  c.send({ type: 'LINK_LOST' });
  t.deepEqual(c.advance(10 * TIMEOUT, []), [], 'ten timeouts of silence from everyone while deaf: nobody is lost');
  c.send({ type: 'LINK_BACK' });
  // The live hosts' heartbeats come again; the dead host has 400 ms of its timeout left, not a whole new one.
  for (const host of others) c.send({ type: 'HEARTBEAT', host });
  const backAt = c.clock.now();
  const after = c.advance(3 * TIMEOUT, others);
  t.deepEqual(after.map((e) => e.cmd), [
    { type: 'HOST_LOST', host: dead, slot: { replica: 1, stage: 1 } },
    { type: 'ASSIGN', host: c.standbys[0], replica: 1, stage: 1, replacing: dead },
  ], 'only the dead host is lost');
  const lostAfter = after[0].at - backAt;
  t.true(lostAfter > 400 - TICK && lostAfter <= 400 + 2 * TICK, `lost ${lostAfter} ms after the link came back (400 ms of its timeout were left)`);
});

test('a link that fails over and over does not keep a dead host in its slot: silence it heard adds up', (t) => {
  const c = running(1);
  const dead = 'h0';
  const others = c.hosts.filter((h) => h !== dead);
  const lost: CoordinatorCommand[] = [];
  for (let i = 0; i < 10 && !lost.length; i++) {
    lost.push(...c.advance(3 * TICK, others).map((e) => e.cmd).filter((cmd) => cmd.type === 'HOST_LOST'));
    c.send({ type: 'LINK_LOST' });
    c.advance(5 * TICK, []);
    c.send({ type: 'LINK_BACK' });
  }
  t.deepEqual(lost, [{ type: 'HOST_LOST', host: dead, slot: { replica: 0, stage: 0 } }]);
});

test('a lost slot goes to a standby in the lost host\'s datacenter before one elsewhere', (t) => {
  const c = coordinator();  // S=3, R=2
  const slotted = hostIds(6);
  for (const h of slotted) c.send(join(h));  // dc-a
  c.send(join('far', 'dc-b'));     // the first standby, in another datacenter
  c.send(join('near', 'dc-a'));    // the second, beside the stage it will take
  for (const h of slotted) c.send({ type: 'HOST_READY', host: h });
  const alive = [...slotted.filter((h) => h !== 'h2'), 'far', 'near'];
  t.deepEqual(c.advance(3 * TIMEOUT, alive).map((e) => e.cmd), [
    { type: 'HOST_LOST', host: 'h2', slot: { replica: 0, stage: 2 } },
    { type: 'ASSIGN', host: 'near', replica: 0, stage: 2, replacing: 'h2' },
  ]);
  const next = c.advance(3 * TIMEOUT, alive.filter((h) => h !== 'h3')).map((e) => e.cmd);
  t.deepEqual(next[1], { type: 'ASSIGN', host: 'far', replica: 1, stage: 0, replacing: 'h3' }, 'with none left there, the first standby anywhere');
});

test('with no standby the slot stays vacant until the next host joins', (t) => {
  const c = running(0);
  const silent = 'h0';
  const out = c.advance(2 * TIMEOUT, c.hosts.filter((h) => h !== silent)).map((e) => e.cmd);
  t.deepEqual(out, [
    { type: 'HOST_LOST', host: silent, slot: { replica: 0, stage: 0 } },
    { type: 'SLOT_VACANT', replica: 0, stage: 0, lost: silent },
  ]);
  t.deepEqual(c.send(join('late')), [{ type: 'ASSIGN', host: 'late', replica: 0, stage: 0, replacing: silent }]);
  t.deepEqual(c.send(join('later')), [{ type: 'STANDBY', host: 'later' }], 'one vacancy, one replacement');
});

test('a slot vacant for retireVacantMs strands its replica once; retired, its slots are filled no more and the run ends without it', (t) => {
  const c = running(0, { retireVacantMs: 2000 });
  const silent = 'h4';  // replica 1, stage 1
  let out = c.advance(2 * TIMEOUT, c.hosts.filter((h) => h !== silent)).map((e) => e.cmd);
  t.deepEqual(out.map((x) => x.type), ['HOST_LOST', 'SLOT_VACANT']);
  const alive = c.hosts.filter((h) => h !== silent);
  t.deepEqual(c.advance(1000, alive), [], 'not yet: vacant for less than the limit');
  out = c.advance(2000, alive).map((e) => e.cmd);
  t.is(out.length, 1);
  t.like(out[0], { type: 'REPLICA_STRANDED', replica: 1, stage: 1 });
  t.true((out[0] as { vacantMs: number }).vacantMs >= 2000);
  t.deepEqual(c.advance(3000, alive), [], 'said once');
  t.deepEqual(c.send({ type: 'REPLICA_RETIRED', replica: 1 }), []);
  t.deepEqual(c.send(join('late')), [{ type: 'STANDBY', host: 'late' }], 'a retired replica\'s slot waits for no one');
  out = c.advance(2 * TIMEOUT, alive.filter((h) => h !== 'h3')).map((e) => e.cmd);
  t.deepEqual(out, [{ type: 'HOST_LOST', host: 'h3', slot: { replica: 1, stage: 0 } }, { type: 'HOST_LOST', host: 'late', slot: null }], 'and its other slots neither');
  t.deepEqual(c.send({ type: 'REPLICA_FINISHED', replica: 0 }), [{ type: 'RUN_FINISHED' }], 'the run ends when the replicas not retired have finished');
});

test('without retireVacantMs a vacant slot waits for a host however long', (t) => {
  const c = running(0);
  const alive = c.hosts.filter((h) => h !== 'h4');
  c.advance(2 * TIMEOUT, alive);
  t.false(c.advance(60_000, alive).some((e) => e.cmd.type === 'REPLICA_STRANDED'));
});

test('a slotted host lost before the run starts is replaced too, and the start waits for its replacement', (t) => {
  const c = coordinator({ stages: 2, replicas: 1 });
  c.send(join('h0'));
  c.send(join('h1'));
  t.deepEqual(c.send(join('h2')), [{ type: 'STANDBY', host: 'h2' }]);
  c.send({ type: 'HOST_READY', host: 'h0' });
  const out = c.advance(2 * TIMEOUT, ['h0', 'h2']).map((e) => e.cmd);
  t.deepEqual(out, [
    { type: 'HOST_LOST', host: 'h1', slot: { replica: 0, stage: 1 } },
    { type: 'ASSIGN', host: 'h2', replica: 0, stage: 1, replacing: 'h1' },
  ]);
  t.deepEqual(c.send({ type: 'HOST_READY', host: 'h1' }), [], 'the lost host does not count');
  t.deepEqual(c.send({ type: 'HOST_READY', host: 'h2' }), [{ type: 'START_RUN' }]);
});

test('a standby that joins while nothing has failed stays a standby', (t) => {
  const c = running(0);
  t.deepEqual(c.send(join('spare')), [{ type: 'STANDBY', host: 'spare' }]);
  t.deepEqual(c.advance(10 * TIMEOUT, [...c.hosts, 'spare']), []);
  t.is(c.actor.getSnapshot().context.hosts.find((h) => h.id === 'spare')?.slot, null);
});

test('a restarted coordinator resumes the running run from its kept slots and times every host from the restart', (t) => {
  const hosts = [
    { id: 'a', datacenter: 'dc-a', slot: { replica: 0, stage: 0 } },
    { id: 'b', datacenter: 'dc-b', slot: { replica: 0, stage: 1 } },
    { id: 'c', datacenter: 'dc-b', slot: null },
  ];
  const c = coordinator({ stages: 2, replicas: 1, restore: { running: true, hosts } });
  t.deepEqual(c.log.map((e) => e.cmd), [{ type: 'START_RUN' }], 'straight to running, no new assignment');
  t.deepEqual(c.advance(TIMEOUT, ['a', 'c']), [], 'every host gets a full timeout from the restart');
  t.deepEqual(c.advance(2 * TIMEOUT, ['a', 'c']).map((e) => e.cmd), [
    { type: 'HOST_LOST', host: 'b', slot: { replica: 0, stage: 1 } },
    { type: 'ASSIGN', host: 'c', replica: 0, stage: 1, replacing: 'b' },
  ]);
});

test('a coordinator restarted while gathering assigns as soon as it holds enough hosts', (t) => {
  const restore = { running: false, hosts: [{ id: 'a', datacenter: 'x', slot: null }, { id: 'b', datacenter: 'x', slot: null }] };
  const c = coordinator({ stages: 2, replicas: 1, restore });
  t.deepEqual(c.log.map((e) => e.cmd), [
    { type: 'ASSIGN', host: 'a', replica: 0, stage: 0 },
    { type: 'ASSIGN', host: 'b', replica: 0, stage: 1 },
  ]);
  const short = coordinator({ stages: 3, replicas: 1, restore });
  t.deepEqual(short.log, []);
  t.deepEqual(short.send(join('c')).map((x) => x.type), ['ASSIGN', 'ASSIGN', 'ASSIGN']);
});

test('a silent standby is lost and nothing else happens', (t) => {
  const c = running(2);
  const [standby, other] = c.standbys;
  const alive = c.hosts.filter((h) => h !== standby);
  const out = c.advance(3 * TIMEOUT, alive).map((e) => e.cmd);
  t.deepEqual(out, [{ type: 'HOST_LOST', host: standby, slot: null }]);
  t.true(c.actor.getSnapshot().matches({ run: 'running' }));
  t.false(c.actor.getSnapshot().context.hosts.some((h) => h.id === standby));
  t.true(c.actor.getSnapshot().context.hosts.some((h) => h.id === other));
  c.send({ type: 'REPLICA_FINISHED', replica: 0 });
  t.deepEqual(c.send({ type: 'REPLICA_FINISHED', replica: 1 }), [{ type: 'RUN_FINISHED' }], 'the run goes on to its end');
});

test('a host silent before the slots are assigned is dropped and takes no slot', (t) => {
  const c = coordinator({ stages: 1, replicas: 2 });
  c.send(join('h0'));
  t.deepEqual(c.advance(2 * TIMEOUT).map((e) => e.cmd), [{ type: 'HOST_LOST', host: 'h0', slot: null }]);
  t.deepEqual(c.send(join('h1')), []);
  t.deepEqual(c.send(join('h2')), [
    { type: 'ASSIGN', host: 'h1', replica: 0, stage: 0 },
    { type: 'ASSIGN', host: 'h2', replica: 1, stage: 0 },
  ]);
});

test('a host that joins late is timed from its join, not from the start', (t) => {
  const c = coordinator({ stages: 1, replicas: 1 });
  c.advance(5 * TIMEOUT);
  c.send(join('h0'));
  const joinedAt = c.clock.now();
  const out = c.advance(3 * TIMEOUT);
  t.is(out.length, 2);
  t.deepEqual(out[0].cmd, { type: 'HOST_LOST', host: 'h0', slot: { replica: 0, stage: 0 } });
  t.true(out[0].at - joinedAt > TIMEOUT);
});

test('a timeout that is not a multiple of the tick still never drops a host that heartbeats within it', (t) => {
  // Heartbeats are stamped with the last tick's time, up to a tick before they came;
  // the check must not count that tick as silence.
  const timeout = 1050;
  const c = coordinator({ stages: 1, replicas: 1, heartbeatTimeoutMs: timeout });
  c.send(join('h0'));
  c.send({ type: 'HOST_READY', host: 'h0' });
  c.advance(199, ['h0'], 199);  // a heartbeat at 199, stamped 100 (the last tick)
  const silence = c.advance(timeout - 30);  // then silence, but less than the timeout
  t.deepEqual(silence.map((e) => e.cmd), [], `lost ${silence[0]?.at - 199} ms after its last heartbeat, timeout ${timeout}`);
  c.send({ type: 'HEARTBEAT', host: 'h0' });
  t.deepEqual(c.advance(timeout, ['h0'], 500), []);
  // And real silence is still caught, within two ticks past the timeout.
  const quietFrom = c.clock.now();
  const lost = c.advance(3 * timeout);
  t.is(lost[0]?.cmd.type, 'HOST_LOST');
  const after = lost[0].at - quietFrom;
  t.true(after > timeout && after < timeout + 2 * TICK, `lost after ${after} ms`);
});

test('a replica that does not start the run joins once a replica\'s worth of standbys waits, and the run ends when the replicas in it have finished', (t) => {
  const { send } = coordinator({ startReplicas: 1 });  // S=3, R=2: replica 0 starts alone
  for (const h of hostIds(2)) t.deepEqual(send(join(h)), []);
  t.deepEqual(send(join('h2')), [0, 1, 2].map((stage) => ({ type: 'ASSIGN', host: `h${stage}`, replica: 0, stage })), 'three hosts start replica 0');
  t.deepEqual(send(join('h3')), [{ type: 'STANDBY', host: 'h3' }], 'before the run runs, a standby');
  for (const h of hostIds(3)) send({ type: 'HOST_READY', host: h });
  t.deepEqual(send(join('h4', 'dc-b')), [{ type: 'STANDBY', host: 'h4' }]);
  t.deepEqual(send(join('h5')), [
    { type: 'STANDBY', host: 'h5' },
    { type: 'REPLICA_JOINED', replica: 1 },
    // Grouped by datacenter as at the start: dc-a's h3 and h5, then dc-b's h4.
    { type: 'ASSIGN', host: 'h3', replica: 1, stage: 0 },
    { type: 'ASSIGN', host: 'h5', replica: 1, stage: 1 },
    { type: 'ASSIGN', host: 'h4', replica: 1, stage: 2 },
  ]);
  t.deepEqual(send(join('h6')), [{ type: 'STANDBY', host: 'h6' }], 'every replica is in: a standby stays one');
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), [], 'replica 1 is still training');
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 1 }), [{ type: 'RUN_FINISHED' }]);
});

test('with a replica that never joined, the run ends when the replicas in it have finished', (t) => {
  const { send } = coordinator({ startReplicas: 1, stages: 2 });
  for (const h of hostIds(2)) send(join(h));
  for (const h of hostIds(2)) send({ type: 'HOST_READY', host: h });
  t.deepEqual(send(join('h2')), [{ type: 'STANDBY', host: 'h2' }], 'one standby is not a replica');
  t.deepEqual(send({ type: 'REPLICA_FINISHED', replica: 0 }), [{ type: 'RUN_FINISHED' }]);
});
