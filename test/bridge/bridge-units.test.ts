// The Bridge's pure parts: when a sync goes ahead (everyone, or a quorum
// after the timeout; late and repeated contributions), the outer step's
// arithmetic, and its payloads, bad ones refused by name.
import test from 'ava';
import { createActor, SimulatedClock } from 'xstate';
import { bridgeMachine, type BridgeCommand } from '../../actors/bridge-machine.ts';
import { decodeParams, encodeParams } from '../../runtime/bridge/bridge-payload.ts';
import { outerStep } from '../../runtime/bridge/outer-step.ts';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { preset } from '../../runtime/config/presets.ts';
import { mulberry32 } from '../support/random-weights.ts';

const TICK = 100;

/** A Bridge on a simulated clock; `at(ms)` advances it to ms tick by tick (SimulatedClock fires one round of timers per increment). */
function bridge(replicas: number, quorum: number, timeoutMs = 1000, members = Array.from({ length: replicas }, (_, replica) => ({ replica, from: 1 }))) {
  const clock = new SimulatedClock();
  const actor = createActor(bridgeMachine, { input: { stage: 2, members, quorum, timeoutMs, tickMs: TICK }, clock });
  const out: BridgeCommand[] = [];
  actor.on('*', (c: BridgeCommand) => out.push(c));
  actor.start();
  const at = (ms: number) => {
    while (clock.now() < ms) clock.increment(Math.min(TICK - (clock.now() % TICK), ms - clock.now()));
  };
  const contributed = (ms: number, outer: number, replica: number) => {
    at(ms);
    actor.send({ type: 'CONTRIBUTED', outer, replica });
  };
  return { actor, out, at, contributed };
}

test('a sync goes ahead when every replica delivered, in replica order, whatever the arrival order', (t) => {
  const { out, at, contributed } = bridge(3, 3);
  contributed(100, 1, 2);
  contributed(150, 1, 0);
  contributed(160, 1, 0);  // a replacement sending it again
  t.deepEqual(out, []);
  contributed(200, 1, 1);
  t.deepEqual(out, [{ type: 'COMBINE', stage: 2, outer: 1, replicas: [0, 1, 2], firstAt: 100, at: 200 }]);
  at(5000);
  t.is(out.length, 1, 'combined once');
});

test('past the timeout a quorum is enough; below it the sync waits; a late replica is told to adopt the result', (t) => {
  const { actor, out, at, contributed } = bridge(3, 2, 1000);
  contributed(0, 1, 1);
  at(5000);
  t.deepEqual(out, [], 'one of a quorum of two: still waiting');
  contributed(5100, 1, 0);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 1, replicas: [0, 1], firstAt: 0, at: 5100 });
  contributed(5200, 1, 2);
  t.deepEqual(out.at(-1), { type: 'LATE', stage: 2, outer: 1, replica: 2 });
  actor.send({ type: 'COMBINED', outer: 1 });
  contributed(6000, 2, 0);
  contributed(6100, 2, 2);
  at(6500);
  t.is(out.length, 2, 'outer 2: a quorum, but the timeout has not passed');
  // Stamped 6000, the first contribution may have come as late as 6099 on the actor clock: the timeout has surely passed one tick later.
  at(7000);
  t.is(out.length, 2, 'never before the timeout');
  at(7000 + TICK);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 2, replicas: [0, 2], firstAt: 6000, at: 7000 + TICK });
});

test('membership over time: a replica that joins is waited for from its first outer step on, one that leaves after its last; a quorum never asks for more than the members', (t) => {
  // Replica 0 alone at first, with a quorum of 1: the replica that joins later holds it up no longer than the timeout.
  const { actor, out, at, contributed } = bridge(2, 1, 1000, [{ replica: 0, from: 1 }]);
  contributed(0, 1, 0);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 1, replicas: [0], firstAt: 0, at: 0 }, 'its one member delivered: at once');
  actor.send({ type: 'COMBINED', outer: 1 });
  contributed(100, 2, 1);
  t.deepEqual(out.at(-1), { type: 'LATE', stage: 2, outer: 2, replica: 1 }, 'not a member yet: it adopts the result');
  actor.send({ type: 'JOINED', replica: 1, from: 3 });
  contributed(200, 2, 0);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 2, replicas: [0], firstAt: 200, at: 200 }, 'outer 2 is before its first');
  actor.send({ type: 'COMBINED', outer: 2 });
  contributed(300, 3, 0);
  at(1000);
  t.is(out.length, 3, 'outer 3 waits for the replica that joined');
  at(1300 + TICK);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 3, replicas: [0], firstAt: 300, at: 1300 + TICK }, 'past the timeout, with the quorum: no longer than that');
  actor.send({ type: 'COMBINED', outer: 3 });
  contributed(2000, 4, 1);
  contributed(2100, 4, 0);
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 4, replicas: [0, 1], firstAt: 2000, at: 2100 });
  actor.send({ type: 'COMBINED', outer: 4 });
  contributed(2200, 5, 0);
  actor.send({ type: 'LEAVING', replica: 1, until: 4 });
  t.deepEqual(out.at(-1), { type: 'COMBINE', stage: 2, outer: 5, replicas: [0], firstAt: 2200, at: 2200 }, 'once it leaves, the outer steps after its last go ahead without it');

  // A quorum of 3 with two members: past the timeout, the two are enough.
  const small = bridge(3, 3, 1000, [{ replica: 0, from: 1 }, { replica: 2, from: 1 }]);
  small.contributed(0, 1, 0);
  small.at(900);
  t.deepEqual(small.out, []);
  small.contributed(950, 1, 2);
  t.like(small.out.at(-1), { type: 'COMBINE', stage: 2, outer: 1, replicas: [0, 2], firstAt: 0 }, 'every member delivered: at once, replica 1 not waited for');
});

test('outer step: averaging fp32 parameters of one replica gives them back exactly; Nesterov follows DiLoCo in double, rounded once', (t) => {
  const rand = mulberry32(3);
  const n = 1000;
  const sync = Float32Array.from({ length: n }, () => rand() - 0.5);
  const theta = Float32Array.from(sync, (x) => x + (rand() - 0.5) * 1e-3);
  const same = outerStep({ sync, momentum: new Float32Array(n), contributions: [{ replica: 0, kind: 'fp32', values: theta }], outer: 'average', lr: 1, mu: 0 });
  t.deepEqual(same.theta, theta);

  const thetas = [0, 1, 2].map(() => Float32Array.from(sync, (x) => x + (rand() - 0.5) * 1e-3));
  const momentum = Float32Array.from({ length: n }, () => (rand() - 0.5) * 1e-4);
  const lr = 0.7, mu = 0.9;
  const out = outerStep({ sync, momentum, contributions: [2, 0, 1].map((r) => ({ replica: r, kind: 'fp32' as const, values: thetas[r] })), outer: 'nesterov', lr, mu });
  for (const i of [0, 17, 999]) {
    const g = ((sync[i] - thetas[0][i]) + (sync[i] - thetas[1][i]) + (sync[i] - thetas[2][i])) / 3;
    const m = mu * momentum[i] + g;
    t.is(out.momentum[i], Math.fround(m));
    t.is(out.theta[i], Math.fround(sync[i] - lr * (g + mu * m)));
  }
  // Pseudo-gradients sent in MX int8 land within the 8-bit grid of the exact step.
  const deltas = thetas.map((th) => Float32Array.from(th, (x, i) => sync[i] - x));
  const sent = deltas.map((d, r) => ({ replica: r, ...decodeParams(encodeParams(d, 'mxint8').bytes, { length: n }, 'test') }));
  const q = outerStep({ sync, momentum, contributions: sent, outer: 'nesterov', lr, mu });
  let worst = 0;
  for (let i = 0; i < n; i++) worst = Math.max(worst, Math.abs(q.theta[i] - out.theta[i]));
  t.true(worst < 2e-5, `worst difference ${worst}`);
});

test('payloads: fp32 round-trips bit for bit, MX int8 shrinks about 4×; a foreign, truncated or wrong-length blob is refused by name', (t) => {
  const rand = mulberry32(5);
  const x = Float32Array.from({ length: 4099 }, () => (rand() - 0.5) * 1e-3);
  t.deepEqual(decodeParams(encodeParams(x, 'fp32').bytes, { length: x.length, kind: 'fp32' }, 'p').values, x);
  const small = encodeParams(x, 'mxint8');
  t.true(small.bytes.byteLength < x.byteLength / 3.5, `${small.bytes.byteLength} bytes for ${x.byteLength}`);
  t.throws(() => decodeParams(small.bytes, { length: x.length, kind: 'fp32' }, 'bridge/stage-0/outer-1/replica-1'), { message: /^bridge\/stage-0\/outer-1\/replica-1: payload is mxint8, this run sends fp32$/ });
  t.throws(() => decodeParams(small.bytes, { length: 100 }, 'p'), { message: /4099 values, the stage has 100/ });
  t.throws(() => decodeParams(small.bytes.subarray(0, 50), { length: x.length }, 'p'), { message: /^p: / });
  t.throws(() => decodeParams(new Uint8Array([1, 2, 3]), { length: 3 }, 'p'), { message: /^p: not a Bridge payload/ });
  // Top-k: the largest 1% by magnitude, dense again on the other side, zeros elsewhere.
  const sparse = decodeParams(encodeParams(x, 'topk', 0.01).bytes, { length: x.length, kind: 'topk' }, 'p').values;
  const kept = [...sparse.keys()].filter((i) => sparse[i] !== 0);
  t.is(kept.length, 41);
  const threshold = Math.min(...kept.map((i) => Math.abs(x[i])));
  t.true(kept.every((i) => sparse[i] === x[i]));
  t.is([...x].filter((v) => Math.abs(v) > threshold).length, 40, 'nothing larger was left out');
});

test('bridge settings are checked by name', (t) => {
  const base = preset('tiny');
  const withBridge = (bridge: unknown, replicas = 2) => validateRunConfig({ ...base, training: { ...base.training, replicas, bridge } });
  t.like(withBridge({ syncEvery: 5 }).training.bridge, { syncEvery: 5, outer: 'nesterov', outerLr: 0.7, outerMomentum: 0.9, payload: 'mxint8', quorum: 2 });
  t.throws(() => withBridge({ syncEvery: 0 }), { message: /training\.bridge\.syncEvery must be a positive integer/ });
  t.throws(() => withBridge({ syncEvery: 2, quorum: 3 }), { message: /training\.bridge\.quorum must be an integer in \[1, 2\]/ });
  t.throws(() => withBridge({ syncEvery: 2, outer: 'adam' }), { message: /training\.bridge\.outer must be 'nesterov' or 'average'/ });
  t.throws(() => withBridge({ syncEvery: 2, outerMomentum: 1 }), { message: /outerMomentum must be below 1/ });
  t.throws(() => withBridge({ syncEvery: 2, every: 3 }), { message: /training\.bridge\.every is not a setting/ });
  t.like(withBridge({ syncEvery: 2, startReplicas: 1 }, 3).training.bridge, { startReplicas: 1, quorum: 1 }, 'the quorum defaults to the replicas that start');
  t.throws(() => withBridge({ syncEvery: 2, startReplicas: 3 }), { message: /training\.bridge\.startReplicas must be an integer in \[1, 2\]/ });
  t.throws(() => withBridge({ syncEvery: 2, startReplicas: 1, payload: 'topk' }), { message: /needs payload 'mxint8' or 'fp32'/ });
  t.throws(() => withBridge({ syncEvery: 2, retireVacantMs: 0 }), { message: /training\.bridge\.retireVacantMs must be a positive integer \(ms\), got 0/ });
  t.is(withBridge({ syncEvery: 2, retireVacantMs: 5000 }).training.bridge!.retireVacantMs, 5000);
  t.throws(() => validateRunConfig({ ...base, training: { ...base.training, replicas: 2, synthetic: { device: 'A100', peakTflops: 312, efficiency: 0.5, timeScale: 1, frameBytes: 1024 }, bridge: { syncEvery: 2, startReplicas: 1 } } }), { message: /a synthetic run has no parameters for a replica to join from/ });
});
