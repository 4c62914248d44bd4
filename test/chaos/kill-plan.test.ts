// The chaos kill plan is a pure function of its input: the same input gives the
// same plan and another seed another one; each round of the plan strikes every
// kind that applies to the run once, in a seeded order, before any kind comes
// again; kinds that cannot apply (publish with one stage, checkpoint without
// checkpoints, a NATS server without a majority left, the coordinator
// mid-audit without audits, a host mid-sync without the Bridge) are left out, and asking
// for one, or for a kind that does not exist, is an error naming it; kills are
// spread over the run in step order, each with a step after it, on slots that
// exist. No processes: planKills only.
import test from 'ava';
import { KILL_KINDS, planKills, type KillKind, type KillPlanInput, type PlannedKill } from '../../runtime/chaos/kill-plan.ts';

const base: KillPlanInput = { kills: 20, seed: 7, steps: 40, stages: 3, replicas: 2, checkpointEvery: 3, natsServers: 3, audits: true, bridge: true };
const STAGE_POINTS = ['forward', 'backward', 'publish', 'checkpoint', 'bridge-sync', 'anytime', 'stall', 'partition'] as const;

const kindOf = (k: PlannedKill): KillKind => (k.target.kind === 'stage' ? k.target.point : k.target.kind === 'pause' ? `pause-${k.target.process}` : k.target.kind);
/** The kinds as a sorted list, for comparing as sets (ava compares Sets in insertion order). */
const sorted = (kinds: Iterable<KillKind>) => [...kinds].sort();
const seeds = Array.from({ length: 50 }, (_, i) => i * 7919 + 1);

/** Checks that `plan` is whole rounds of `kinds` (the last one possibly cut short), each kind once per round. */
function assertRounds(t: import('ava').ExecutionContext, plan: readonly PlannedKill[], kinds: readonly KillKind[], what: string) {
  const got = plan.map(kindOf);
  for (let from = 0; from < got.length; from += kinds.length) {
    const round = got.slice(from, from + kinds.length);
    t.is(new Set(round).size, round.length, `${what}: no kind twice in round ${from / kinds.length}: ${round.join(', ')}`);
    for (const k of round) t.true(kinds.includes(k), `${what}: '${k}' is one of ${kinds.join(', ')}`);
  }
}

test('KILL_KINDS are the eight stage points, the coordinator and a NATS server, a server cut off from the others, pauses of either, a server killed at a checkpoint, and the coordinator mid-audit', (t) => {
  t.deepEqual([...KILL_KINDS], [...STAGE_POINTS, 'coordinator', 'nats', 'nats-partition', 'pause-coordinator', 'pause-nats', 'nats-checkpoint', 'coordinator-audit']);
});

test('the same input gives the same plan', (t) => {
  for (const seed of seeds) {
    const input = { ...base, seed };
    t.deepEqual(planKills(input), planKills({ ...input }));
  }
});

test('a different seed gives a different plan', (t) => {
  const plans = seeds.map((seed) => JSON.stringify(planKills({ ...base, seed })));
  t.is(new Set(plans).size, seeds.length, 'no two of the seeds share a plan');
  t.notDeepEqual(planKills({ ...base, seed: 7 }), planKills({ ...base, seed: 8 }));
  // The order of kinds alone differs too, not just the slots hit.
  const orders = seeds.map((seed) => planKills({ ...base, seed, kills: 8 }).map(kindOf).join(','));
  t.true(new Set(orders).size > seeds.length / 2, `${new Set(orders).size} distinct orders of the 8 kinds over ${seeds.length} seeds`);
});

test('the first round strikes every kind once before any repeats, and so does every later round', (t) => {
  for (const seed of seeds) {
    const plan = planKills({ ...base, seed, kills: 3 * KILL_KINDS.length + 3 });
    t.deepEqual(sorted(plan.slice(0, KILL_KINDS.length).map(kindOf)), sorted(KILL_KINDS), `seed ${seed}: first round`);
    assertRounds(t, plan, KILL_KINDS, `seed ${seed}`);
  }
});

test('stage points become stage targets with that point; coordinator and nats are bare targets; a pause names its process', (t) => {
  const plan = planKills({ ...base, kills: KILL_KINDS.length });
  for (const k of plan) {
    if (k.target.kind === 'stage') {
      t.true((STAGE_POINTS as readonly string[]).includes(k.target.point), k.target.point);
      t.deepEqual(Object.keys(k.target).sort(), ['kind', 'point', 'replica', 'stage']);
    } else if (k.target.kind === 'nats-checkpoint') {
      t.deepEqual(Object.keys(k.target).sort(), ['kind', 'replica', 'stage'], 'the slot whose checkpoint the server dies under');
    } else if (k.target.kind === 'pause') {
      t.true(k.target.process === 'coordinator' || k.target.process === 'nats', k.target.process);
      t.deepEqual(Object.keys(k.target).sort(), ['kind', 'process'], 'a pause carries no slot');
    } else {
      t.deepEqual(k.target, { kind: k.target.kind }, `${k.target.kind} carries no slot`);
    }
  }
  t.is(plan.filter((k) => k.target.kind === 'stage').length, STAGE_POINTS.length);
});

test("'publish' is left out with one stage, 'checkpoint' without checkpoints, 'nats' with fewer than 3 servers, 'coordinator-audit' without audits, 'bridge-sync' without the Bridge", (t) => {
  const cases: Array<{ over: Partial<KillPlanInput>; missing: KillKind[] }> = [
    { over: {}, missing: [] },
    { over: { stages: 1 }, missing: ['publish'] },
    { over: { checkpointEvery: 0 }, missing: ['checkpoint', 'nats-checkpoint'] },
    { over: { natsServers: 1 }, missing: ['nats', 'nats-partition', 'nats-checkpoint'] },
    { over: { natsServers: 2 }, missing: ['nats', 'nats-partition', 'nats-checkpoint'] },
    { over: { natsServers: 5 }, missing: [] },
    { over: { audits: false }, missing: ['coordinator-audit'] },
    { over: { audits: undefined }, missing: ['coordinator-audit'] },
    { over: { bridge: false }, missing: ['bridge-sync'] },
    { over: { replicas: 1 }, missing: ['bridge-sync'] },
    { over: { stages: 1, checkpointEvery: 0, natsServers: 1, audits: false, bridge: undefined }, missing: ['publish', 'checkpoint', 'nats', 'nats-partition', 'nats-checkpoint', 'coordinator-audit', 'bridge-sync'] },
  ];
  for (const { over, missing } of cases) {
    const kinds = KILL_KINDS.filter((k) => !missing.includes(k));
    for (const seed of seeds.slice(0, 10)) {
      const plan = planKills({ ...base, ...over, seed, kills: 2 * kinds.length + 1 });
      const what = `${JSON.stringify(over)} seed ${seed}`;
      t.deepEqual(sorted(plan.slice(0, kinds.length).map(kindOf)), sorted(kinds), `${what}: first round is ${kinds.join(', ')}`);
      assertRounds(t, plan, kinds, what);
    }
  }
});

test('targets restrict the plan to those kinds, in rounds', (t) => {
  for (const targets of [['coordinator'], ['stall', 'coordinator'], ['forward', 'backward', 'nats']] as KillKind[][]) {
    for (const seed of seeds.slice(0, 10)) {
      const plan = planKills({ ...base, seed, kills: 7, targets });
      t.is(plan.length, 7);
      t.deepEqual(sorted(plan.slice(0, targets.length).map(kindOf)), sorted(targets));
      assertRounds(t, plan, targets, `targets ${targets.join(',')} seed ${seed}`);
    }
  }
  t.deepEqual(planKills({ ...base, targets: [] }), planKills(base), 'an empty list means all that apply');
});

test('a target that does not apply to the run, or does not exist, is an error naming it', (t) => {
  t.throws(() => planKills({ ...base, stages: 1, targets: ['forward', 'publish'] }), { message: /'publish'.*2 or more stages/ });
  t.throws(() => planKills({ ...base, checkpointEvery: 0, targets: ['checkpoint'] }), { message: /'checkpoint'.*checkpoints/ });
  t.throws(() => planKills({ ...base, natsServers: 2, targets: ['coordinator', 'nats'] }), { message: /'nats'.*3 NATS servers/ });
  t.throws(() => planKills({ ...base, audits: false, targets: ['coordinator-audit'] }), { message: /'coordinator-audit'.*audits \(--audit-rate\)/ });
  t.throws(() => planKills({ ...base, replicas: 1, targets: ['bridge-sync'] }), { message: /'bridge-sync'.*the Bridge \(training.bridge\) and 2 or more replicas/ });
  t.throws(() => planKills({ ...base, targets: ['forward', 'gpu' as KillKind] }), { message: /unknown kill target 'gpu'.*forward, backward/ });
  t.throws(() => planKills({ ...base, kills: 0, targets: ['gpu' as KillKind] }), { message: /'gpu'/ }, 'even when nothing would be killed');
});

test('afterStep is non-decreasing, at least 1 and leaves a step after it', (t) => {
  let plans = 0;
  for (const steps of [3, 4, 5, 10, 24, 97]) {
    for (const kills of [1, 2, 3, 7, 8, 9, 30, 200]) {
      for (const seed of seeds.slice(0, 5)) {
        const plan = planKills({ ...base, steps, kills, seed });
        plans++;
        t.is(plan.length, kills);
        const what = `steps ${steps} kills ${kills} seed ${seed}: ${plan.map((k) => k.afterStep).join(' ')}`;
        for (let i = 0; i < plan.length; i++) {
          t.true(Number.isInteger(plan[i].afterStep), what);
          t.true(plan[i].afterStep >= 1, what);
          t.true(plan[i].afterStep < steps, what);
          // The comment's promise: within the first three quarters of [1, steps − 2] (at least step 1), so later
          // steps show the recovery and leave room for a strike that lands late.
          t.true(plan[i].afterStep <= Math.max(1, Math.floor(((steps - 2) * 3) / 4)), what);
          if (i > 0) t.true(plan[i].afterStep >= plan[i - 1].afterStep, what);
        }
      }
    }
  }
  t.log(`${plans} plans checked`);
});

test('kills are spread over the run: fewer kills than steps strike at distinct steps starting at step 1', (t) => {
  const plan = planKills({ ...base, steps: 40, kills: 8 });
  const at = plan.map((k) => k.afterStep);
  t.is(at[0], 1);
  t.is(new Set(at).size, at.length, at.join(' '));
  t.true(at[at.length - 1] > 40 / 2, `the last kill falls in the second half: ${at.join(' ')}`);
});

test('stage targets name a replica and a stage that exist, and reach every slot over a long plan', (t) => {
  for (const [stages, replicas] of [[1, 1], [2, 1], [3, 2], [4, 3]]) {
    const hit = new Set<string>();
    for (const seed of seeds) {
      for (const k of planKills({ ...base, stages, replicas, seed, kills: 24 })) {
        if (k.target.kind !== 'stage') continue;
        const { replica, stage } = k.target;
        t.true(Number.isInteger(replica) && replica >= 0 && replica < replicas, `replica ${replica} of ${replicas}`);
        t.true(Number.isInteger(stage) && stage >= 0 && stage < stages, `stage ${stage} of ${stages}`);
        hit.add(`${replica}.${stage}`);
      }
    }
    t.is(hit.size, stages * replicas, `${stages}×${replicas}: every slot is hit by some seed`);
  }
});

test('a run too short to recover in is refused', (t) => {
  for (const steps of [1, 2]) t.throws(() => planKills({ ...base, steps, kills: 1 }), { message: /at least 3 steps.*got \d/ });
  t.deepEqual(planKills({ ...base, steps: 1, kills: 0 }), [], 'nothing to kill: nothing to refuse');
});

test('a target named twice counts once per round', (t) => {
  const plan = planKills({ ...base, kills: 4, targets: ['forward', 'forward', 'coordinator'] });
  const kinds = plan.map((k) => (k.target.kind === 'stage' ? k.target.point : k.target.kind));
  t.deepEqual([...kinds.slice(0, 2)].sort(), ['coordinator', 'forward']);
  t.deepEqual([...kinds.slice(2, 4)].sort(), ['coordinator', 'forward']);
});

test('kills 0 gives an empty plan', (t) => {
  t.deepEqual(planKills({ ...base, kills: 0 }), []);
  t.deepEqual(planKills({ ...base, kills: 0, targets: ['coordinator'] }), []);
});

test('a negative, fractional or non-numeric kills is an error naming the value', (t) => {
  for (const kills of [-1, -0.5, 1.5, 2.0001, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => planKills({ ...base, kills }), { message: new RegExp(`--kills must be a non-negative integer, got ${kills}`) }, `kills ${kills}`);
  }
});
