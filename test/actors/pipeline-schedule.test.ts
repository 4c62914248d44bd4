// Pipeline schedules (actors/pipeline-schedule.ts) checked as data, and run
// by the evaluator (actors/schedule-simulation.ts): every op once and in
// microbatch order, each B after its F and each W after its B, the stash
// within its limit, 1f1b the very order the Stage actor issued before
// schedules became data (its rule is restated below as the reference), and no deadlock whatever the op and link
// times, for one step and for steps run back to back with no flush.
import test from 'ava';
import { pipelineSchedule, scheduleNames, stashLimit, type OpCosts, type PipelineOp, type ScheduleName, type ScheduleSpec } from '../../actors/pipeline-schedule.ts';
import { listPeakStash, simulateSchedule, steadyStateUtilization } from '../../actors/schedule-simulation.ts';
import { mulberry32 } from '../support/random-weights.ts';
import { opCostsFromFlops } from '../../schemas/model-flops.ts';
import { SIMULATE_PRESETS } from '../../runtime/synthetic/simulate-presets.ts';
import { splitLayers } from '../../native/index.ts';

const shapes: Array<[number, number]> = [];
for (const S of [1, 2, 3, 4, 5, 8, 16]) for (const M of [1, 2, 3, 5, 8, 16, 32]) shapes.push([S, M]);

function specs(S: number, M: number): ScheduleSpec[] {
  const skewed: OpCosts[] = Array.from({ length: S }, (_, s) => ({ F: 1 + (s % 3) * 0.5, B: 1.2, W: 0.7 + (s % 2) }));
  return [
    { stages: S, microbatches: M },
    { stages: S, microbatches: M, extraInFlight: 1 },
    { stages: S, microbatches: M, costs: { F: 1, B: 2, W: 1 } },
    { stages: S, microbatches: M, costs: skewed },
    { stages: S, microbatches: M, memoryLimit: 2 },
    { stages: S, microbatches: M, memoryLimit: S + 1, costs: skewed },
    { stages: S, microbatches: M, memoryLimit: 3, extraInFlight: 2 },
  ];
}

const label = (name: ScheduleName, spec: ScheduleSpec) => `${name} ${JSON.stringify(spec)}`;

test('every stage runs each F, B and W (1f1b: F and BW) once per microbatch, in microbatch order, B after F and W after B, within the stash limit', (t) => {
  let checked = 0;
  for (const [S, M] of shapes) for (const spec of specs(S, M)) for (const name of scheduleNames) {
    const lists = pipelineSchedule(name, spec);
    t.is(lists.length, S);
    lists.forEach((list, s) => {
      const where = `${label(name, spec)} stage ${s}`;
      const kinds = name === '1f1b' ? ['F', 'BW'] : ['F', 'B', 'W'];
      t.is(list.length, kinds.length * M, where);
      for (const kind of kinds) t.deepEqual(list.filter((op) => op.kind === kind).map((op) => op.mb), [...Array(M).keys()], `${where}: ${kind}`);
      const at = (kind: PipelineOp['kind'], mb: number) => list.findIndex((op) => op.kind === kind && op.mb === mb);
      for (let mb = 0; mb < M; mb++) {
        if (name === '1f1b') t.true(at('F', mb) < at('BW', mb), where);
        else t.true(at('F', mb) < at('B', mb) && at('B', mb) < at('W', mb), where);
      }
      const limit = stashLimit(name, spec, s);
      t.true(limit >= 1 && limit <= M, where);
      t.true(listPeakStash(list) <= limit, `${where}: stash ${listPeakStash(list)} > ${limit}`);
      checked++;
    });
  }
  t.log(`${checked} stage lists checked`);
});

test('the stash limits: 1f1b and zb-h1 keep S−s (+extraInFlight but on the last stage); zb-h2 2(S−s)−1 forwards in flight plus its deferred W\'s', (t) => {
  const spec = { stages: 16, microbatches: 32 };
  for (let s = 0; s < 16; s++) {
    t.is(stashLimit('1f1b', spec, s), 16 - s);
    t.is(stashLimit('1f1b', { ...spec, extraInFlight: 2 }, s), inFlightLimit(s, 16, 2));
    t.is(stashLimit('zb-h1', spec, s), 16 - s);
    // Unit costs: stage s defers Σ_{j<s}(B + F) / W = 2s W's, so 2(S−s)−1 + 2s = 2S−1 everywhere.
    t.is(stashLimit('zb-h2', spec, s), 31);
    t.is(stashLimit('zb-h2', { ...spec, memoryLimit: 8 }, s), 8);
  }
  t.is(stashLimit('zb-h2', { stages: 16, microbatches: 4 }, 15), 4, 'no more stashed than the step has');
  t.is(stashLimit('1f1b', { stages: 16, microbatches: 4 }, 0), 4);
  t.throws(() => stashLimit('zb-h1', spec, 16), { message: 'pipeline schedule: no stage 16 of 16' });
  t.throws(() => pipelineSchedule('zb-h1', { stages: 2, microbatches: 0 }), { message: 'pipeline schedule: microbatches must be a positive integer, got 0' });
  t.throws(() => pipelineSchedule('zb-h1', { stages: 2, microbatches: 2, costs: [{ F: 1, B: 1, W: 1 }] }), { message: 'pipeline schedule: 1 stage costs for 2 stages' });
  t.throws(() => pipelineSchedule('zb-h2', { stages: 2, microbatches: 2, costs: { F: 1, B: 0, W: 1 } }), { message: 'pipeline schedule: stage 0 cost B must be a positive number, got 0' });
});

/** The 1F1B rule the Stage actor followed before schedules became data: a ready backward first, else a forward while fewer than S−s (+extra) are in flight. */
interface StageContext {
  stage: number; stages: number; microbatches: number; extraInFlight: number;
  acts: number[]; grads: number[]; nextForward: number; nextBackward: number; busy: boolean;
}
const inFlightLimit = (stage: number, stages: number, extra = 0) => stages - stage + (stage < stages - 1 ? extra : 0);
function nextCommand(ctx: StageContext): { type: 'RUN_FORWARD' | 'RUN_BACKWARD'; mb: number } | undefined {
  if (ctx.busy) return undefined;
  if (ctx.grads.includes(ctx.nextBackward) && ctx.nextBackward < ctx.nextForward) return { type: 'RUN_BACKWARD', mb: ctx.nextBackward };
  if (ctx.acts.includes(ctx.nextForward) && ctx.nextForward - ctx.nextBackward < inFlightLimit(ctx.stage, ctx.stages, ctx.extraInFlight)) return { type: 'RUN_FORWARD', mb: ctx.nextForward };
  return undefined;
}

/** What the 1F1B Stage actors issued, driven by nextCommand in an event simulation with the same costs and no link latency. */
function stageMachineOrder(S: number, M: number, costs: OpCosts, extraInFlight: number): PipelineOp[][] {
  const ctx: StageContext[] = Array.from({ length: S }, (_, s) => ({
    stage: s, stages: S, microbatches: M, extraInFlight,
    acts: s === 0 ? [...Array(M).keys()] : [], grads: [], nextForward: 0, nextBackward: 0, busy: false,
  }));
  const lists: PipelineOp[][] = Array.from({ length: S }, () => []);
  const running: Array<{ end: number; stage: number; kind: 'F' | 'BW'; mb: number }> = [];
  let t = 0;
  for (;;) {
    // Results due now are delivered before anyone chooses, as the generator sees every completion ≤ t.
    for (const r of running.filter((r) => r.end <= t)) {
      running.splice(running.indexOf(r), 1);
      const c = ctx[r.stage];
      c.busy = false;
      if (r.kind === 'F') {
        c.nextForward++;
        if (r.stage === S - 1) c.grads.push(r.mb); else ctx[r.stage + 1].acts.push(r.mb);
      } else {
        c.nextBackward++;
        if (r.stage > 0) ctx[r.stage - 1].grads.push(r.mb);
      }
    }
    for (let s = 0; s < S; s++) {
      const cmd = nextCommand(ctx[s]);
      if (!cmd) continue;
      const c = ctx[s];
      c.busy = true;
      if (cmd.type === 'RUN_FORWARD') {
        c.acts = c.acts.filter((mb) => mb !== cmd.mb);
        running.push({ end: t + costs.F, stage: s, kind: 'F', mb: cmd.mb });
        lists[s].push({ kind: 'F', mb: cmd.mb });
      } else if (cmd.type === 'RUN_BACKWARD') {
        c.grads = c.grads.filter((mb) => mb !== cmd.mb);
        running.push({ end: t + costs.B + costs.W, stage: s, kind: 'BW', mb: cmd.mb });
        lists[s].push({ kind: 'BW', mb: cmd.mb });
      }
    }
    if (running.length === 0) return lists;
    t = Math.min(...running.map((r) => r.end));
  }
}

test('1f1b is exactly the order the 1F1B Stage actor issued (nextCommand), with and without extraInFlight', (t) => {
  for (const [S, M] of shapes) for (const extraInFlight of [0, 1, 3]) for (const costs of [{ F: 1, B: 1, W: 1 }, { F: 1, B: 1.5, W: 0.5 }, { F: 2, B: 1, W: 0.25 }]) {
    t.deepEqual(pipelineSchedule('1f1b', { stages: S, microbatches: M, extraInFlight, costs }), stageMachineOrder(S, M, costs, extraInFlight), `S=${S} M=${M} extra=${extraInFlight} ${JSON.stringify(costs)}`);
  }
  // The textbook shape: S−s−1 warm-up forwards… then one forward, one backward.
  t.deepEqual(pipelineSchedule('1f1b', { stages: 3, microbatches: 4 }).map((l) => l.map((op) => `${op.kind}${op.mb}`).join(' ')), [
    'F0 F1 F2 BW0 F3 BW1 BW2 BW3',
    'F0 F1 BW0 F2 BW1 F3 BW2 BW3',
    'F0 BW0 F1 BW1 F2 BW2 F3 BW3',
  ]);
});

test('run strictly in order, no schedule deadlocks whatever the op durations and link delays, for one step or many with or without a flush', (t) => {
  const random = mulberry32(21);
  let runs = 0;
  for (const [S, M] of shapes) for (const spec of specs(S, M)) for (const name of scheduleNames) {
    const lists = pipelineSchedule(name, spec);
    for (const mode of ['flush', 'no-flush'] as const) {
      const steps = 1 + Math.floor(random() * 3);
      // Durations from 0.01 to 100 units, op by op; link delays from 0 to 50 units, hop by hop.
      const opTime = () => 0.01 + random() * random() * 100;
      const linkTime = () => random() * random() * 50;
      const result = simulateSchedule({ lists, steps, mode, opTime, linkTime, roundTrip: random() * 10, update: random() });
      t.is(result.ops.flat().length, steps * lists.flat().length, `${label(name, spec)} ${mode}`);
      if (mode === 'no-flush') {
        // Stage s starts step k+1 after its own last op of step k, never before.
        for (const stageOps of result.ops) for (let i = 1; i < stageOps.length; i++) t.true(stageOps[i].start >= stageOps[i - 1].end);
      }
      runs++;
    }
  }
  t.log(`${runs} random runs`);
});

test('the evaluator does report a deadlock: a stage that waits for a forward it has to give a backward first', (t) => {
  const op = (s: string): PipelineOp => ({ kind: s.replace(/\d+/, '') as PipelineOp['kind'], mb: Number(s.match(/\d+/)![0]) });
  const lists = [
    ['F0', 'B0', 'F1', 'W0', 'B1', 'W1'].map(op),
    ['F0', 'F1', 'B0', 'W0', 'B1', 'W1'].map(op),  // F1 here needs stage 0's F1, which comes after B0 there, which needs B0 here
  ];
  t.throws(() => simulateSchedule({ lists }), { message: /^schedule deadlocks: stage 0 step 0 at B0, stage 1 step 0 at F1/ });
});

test('the evaluator: makespan, busy time and stash of a two-stage 1f1b by hand; a flush waits for the round trip', (t) => {
  const lists = pipelineSchedule('1f1b', { stages: 2, microbatches: 2 });
  t.deepEqual(lists.map((l) => l.map((op) => `${op.kind}${op.mb}`)), [['F0', 'F1', 'BW0', 'BW1'], ['F0', 'BW0', 'F1', 'BW1']]);
  // F=1, BW=2: stage 1 F0 1–2, BW0 2–4, F1 4–5 (its input came at 2), BW1 5–7; stage 0 F0 0–1, F1 1–2, BW0 4–6, BW1 7–9.
  const one = simulateSchedule({ lists });
  t.is(one.makespan, 9);
  t.deepEqual(one.busy, [6, 6]);
  t.is(one.utilization, 12 / 18);
  t.deepEqual(one.peakStash, [2, 1]);
  t.deepEqual(one.ops[1].map((op) => [op.start, op.end]), [[1, 2], [2, 4], [4, 5], [5, 7]]);
  const two = simulateSchedule({ lists, steps: 2, roundTrip: 3, latency: 0.5 });
  // Half a unit per hop: stage 1's BW1 ends at 7.5, stage 0's starts at 8 and ends at 10; the second step starts 3 after that.
  t.is(two.makespan, 10 + 3 + 10);
});

test('utilization at S=16, M=32: 1F1B+flush is M/(M+S−1); zb-h1 beats it; zb-h2 without a flush beats both and reaches the bound', (t) => {
  const spec = { stages: 16, microbatches: 32 };
  const u = (name: ScheduleName, mode: 'flush' | 'no-flush', costs?: readonly OpCosts[]) => steadyStateUtilization(pipelineSchedule(name, { ...spec, costs }), costs, mode);
  const oneF = u('1f1b', 'flush');
  t.true(Math.abs(oneF - 32 / 47) < 1e-9, `1f1b+flush ${oneF}`);
  const h1 = u('zb-h1', 'flush'), h1n = u('zb-h1', 'no-flush'), h2 = u('zb-h2', 'flush'), h2n = u('zb-h2', 'no-flush');
  t.true(h1 > oneF && h2 > h1 && h2n > h2 && h2n <= 1 + 1e-9, `${oneF} ${h1} ${h1n} ${h2} ${h2n}`);
  t.true(h1n >= h1 - 1e-9);
  t.log(`F=B=W=1: 1f1b+flush ${oneF.toFixed(3)}, zb-h1 flush ${h1.toFixed(3)} no-flush ${h1n.toFixed(3)}, zb-h2 flush ${h2.toFixed(3)} no-flush ${h2n.toFixed(3)}`);
});

test('orion-100b with its FLOP split (B ≈ 1.06 F, W ≈ 0.94 F, uneven stages): the same ordering, and no-flush zb-h2 within 2% of the stage-imbalance bound', (t) => {
  const { model: m, training } = SIMULATE_PRESETS['orion-100b'].config;
  const S = training.stages, M = training.microbatches;
  const rate = 312e12 * 0.5;  // A100 peak · efficiency, FLOP/s: costs in seconds per microbatch
  const costs = opCostsFromFlops(m, training.seqLen, splitLayers(m.nLayers, S), training.batchSize * training.seqLen).map((c) => ({ F: c.F / rate, B: c.B / rate, W: c.W / rate }));
  const u = (name: ScheduleName, mode: 'flush' | 'no-flush') => steadyStateUtilization(pipelineSchedule(name, { stages: S, microbatches: M, costs }), costs, mode);
  const oneF = u('1f1b', 'flush'), h1 = u('zb-h1', 'flush'), h1n = u('zb-h1', 'no-flush'), h2 = u('zb-h2', 'flush'), h2n = u('zb-h2', 'no-flush');
  // No schedule beats the busiest stage: Σ work / (S · the largest stage's work).
  const work = costs.map((c) => c.F + c.B + c.W);
  const bound = work.reduce((a, b) => a + b, 0) / (S * Math.max(...work));
  t.true(h1 > oneF && h2 > h1 && h2n > h2 && h2n <= bound + 1e-9 && h2n > bound - 0.02, `${oneF} ${h1} ${h1n} ${h2} ${h2n} ≤ ${bound}`);
  t.log(`orion-100b: 1f1b+flush ${oneF.toFixed(3)}, zb-h1 flush ${h1.toFixed(3)} no-flush ${h1n.toFixed(3)}, zb-h2 flush ${h2.toFixed(3)} no-flush ${h2n.toFixed(3)}; imbalance bound ${bound.toFixed(3)}`);
});
