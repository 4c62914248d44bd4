// The Stage machine driven as a whole pipeline: S stage actors wired together
// in memory with a model of what the runtime does to the weights (a ledger of
// the updates applied, the microbatches whose weight gradients are in the
// gradients, the undo of a provisional update) and a tiny replica that
// commits each step once every stage has reported it, sometimes with the
// optimistic factor, sometimes clipped, sometimes skipped. Deliveries happen
// in a seeded random order, some twice, so each seed is one reproducible
// interleaving. A monitor checks every command as it is emitted; at the end
// every stage's ledger must be exactly the commits, in step order, with the
// gradients of exactly the microbatches 0..M−1 of the step's valid attempt
// behind each one: what makes the weights the same bits as a flush.
import test from 'ava';
import { createActor, type Actor } from 'xstate';
import { pipelineSchedule, scheduleNames, stashLimit, type ScheduleName, type ScheduleSpec } from '../../actors/pipeline-schedule.ts';
import { optimisticScale, stageMachine, type StageCommand, type StageEvent } from '../../actors/stage-machine.ts';
import { splitLayers } from '../../native/index.ts';
import { SIMULATE_PRESETS } from '../../runtime/synthetic/simulate-presets.ts';
import { opCostsFromFlops } from '../../schemas/model-flops.ts';
import { mulberry32 } from '../support/random-weights.ts';

interface PipelineOptions {
  readonly schedule: ScheduleName;
  readonly stages: number;
  readonly microbatches: number;
  readonly steps: number;
  readonly seed: number;
  /** Chance that an activation or gradient is delivered a second time (JetStream redelivery). */
  readonly duplicateRate: number;
  /** Chance that a step's commit is clipped (another factor than the optimistic one), and that it is skipped. */
  readonly clipRate: number;
  readonly skipRate: number;
  /** Every n-th step ends in a barrier (a Bridge sync). */
  readonly barrierEvery?: number;
  /** Per-stage op costs the lists are made with (default equal). */
  readonly costs?: ScheduleSpec['costs'];
}

interface PipelineResult {
  readonly duplicates: number;
  readonly rollBacks: number;
  readonly provisional: number;
}

interface Update { readonly step: number; readonly scale: number; readonly skip: boolean; readonly grads: string }
type Delivery = { at: number; stage: number; event: StageEvent };

/** What the runtime holds for one stage, as far as the weights are concerned. */
interface StageModel {
  ledger: Update[];                 // updates in the weights, in order
  grads: string[];                  // `${step}.${attempt}.${mb}` whose weight gradients are in the gradients
  undo: { ledger: Update[]; grads: string[] } | null;
  stash: Set<string>;               // forwarded, weight gradients not yet taken
  halves: Set<string>;              // input gradient done, weight gradients not yet
  forwarded: Set<string>;
  inputs: Set<string>;              // `${kind}/${step}/${attempt}/${mb}` delivered
  running: StageCommand | null;
}

function runPipeline(o: PipelineOptions): PipelineResult {
  const { stages: S, microbatches: M, steps } = o;
  const postValidate = o.schedule !== '1f1b';
  const rand = mulberry32(o.seed);
  const spec: ScheduleSpec = { stages: S, microbatches: M, costs: o.costs };
  const lists = pipelineSchedule(o.schedule, spec);
  const where = (s: number, step?: number) => `${o.schedule} S=${S} M=${M} seed=${o.seed}: stage ${s}${step === undefined ? '' : ` step ${step}`}`;
  const fail = (msg: string): never => { throw new Error(msg); };

  let now = 0;
  const pending: Delivery[] = [];
  const deliver = (stage: number, event: StageEvent, maxDelay = 8) => pending.push({ at: now + Math.floor(rand() * maxDelay), stage, event });
  const sendOutput = (to: number, event: StageEvent) => {
    deliver(to, event);
    if (rand() < o.duplicateRate) deliver(to, event, rand() < 0.5 ? 8 : 80);
  };

  // The replica's decisions, fixed per step up front from the seed.
  const commits = Array.from({ length: steps }, () => {
    const r = rand();
    if (r < o.skipRate) return { scale: 0, skip: true };
    if (r < o.skipRate + o.clipRate) return { scale: 0.5 / M, skip: false };
    return { scale: optimisticScale(M), skip: false };
  });
  const models: StageModel[] = Array.from({ length: S }, () => ({
    ledger: [], grads: [], undo: null, stash: new Set(), halves: new Set(), forwarded: new Set(), inputs: new Set(), running: null,
  }));
  const readyFrom = Array.from({ length: steps }, () => new Set<number>());
  const reports = Array.from({ length: steps }, () => new Map<number, string>());
  let duplicates = 0, rollBacks = 0, provisional = 0;

  const actors: Array<Actor<typeof stageMachine>> = [];
  const emitted: StageCommand[][] = Array.from({ length: S }, () => []);
  for (let s = 0; s < S; s++) {
    const actor = createActor(stageMachine, { input: { stage: s, stages: S, microbatches: M, ops: lists[s], postValidate, barrierEvery: o.barrierEvery } });
    actor.on('*', (cmd) => { emitted[s].push(cmd); });
    actor.start();
    actors.push(actor);
  }

  const runOp = (s: number, cmd: Extract<StageCommand, { type: 'RUN_OP' }>) => {
    const m = models[s];
    const { step, attempt, op } = cmd;
    const id = `${step}.${attempt}.${op.mb}`;
    if (m.running) fail(`${where(s, step)}: ${op.kind}${op.mb} issued while ${JSON.stringify(m.running)} runs`);
    const barrier = o.barrierEvery && step > 0 && step % o.barrierEvery === 0;
    if (barrier && (m.ledger.length < step || m.undo)) fail(`${where(s, step)}: ${op.kind}${op.mb} ran ahead of the barrier after step ${step - 1}`);
    m.running = cmd;
    switch (op.kind) {
      case 'F':
        if (s > 0 && !m.inputs.has(`act/${step}/${attempt}/${op.mb}`)) fail(`${where(s, step)}: F${op.mb} (attempt ${attempt}) before its activation arrived`);
        m.forwarded.add(id);
        m.stash.add(id);
        if (m.stash.size > stashLimit(o.schedule, spec, s)) fail(`${where(s, step)}: ${m.stash.size} microbatches stashed, limit ${stashLimit(o.schedule, spec, s)}`);
        if (s < S - 1) sendOutput(s + 1, { type: 'ACT_ARRIVED', step, mb: op.mb, attempt });
        break;
      case 'B': case 'BW':
        if (!m.forwarded.has(id)) fail(`${where(s, step)}: ${op.kind}${op.mb} before its forward`);
        if (s < S - 1 && !m.inputs.has(`grad/${step}/${attempt}/${op.mb}`)) fail(`${where(s, step)}: ${op.kind}${op.mb} (attempt ${attempt}) before its gradient arrived`);
        if (op.kind === 'B') m.halves.add(id);
        else { m.stash.delete(id); m.grads.push(id); }
        if (s > 0) sendOutput(s - 1, { type: 'GRAD_ARRIVED', step, mb: op.mb, attempt });
        break;
      case 'W':
        if (!m.halves.delete(id)) fail(`${where(s, step)}: W${op.mb} before its B`);
        m.stash.delete(id);
        m.grads.push(id);
        break;
    }
    deliver(s, { type: 'OP_DONE', step, attempt });
  };

  const expectedGrads = (step: number, attempt: number) => Array.from({ length: M }, (_, i) => `${step}.${attempt}.${i}`).join(',');
  const attemptOf = (step: number) => (step === 0 || !postValidate ? 0 : commits[step - 1].skip || commits[step - 1].scale !== optimisticScale(M) ? 1 : 0);

  const onCommand = (s: number, cmd: StageCommand) => {
    const m = models[s];
    switch (cmd.type) {
      case 'RUN_OP': return runOp(s, cmd);
      case 'DUPLICATE': duplicates++; return;
      case 'STEP_READY': {
        const grads = m.grads.join(',');
        if (grads !== expectedGrads(cmd.step, attemptOf(cmd.step))) fail(`${where(s, cmd.step)}: reported with gradients of [${grads}]`);
        if (reports[cmd.step].has(s)) fail(`${where(s, cmd.step)}: STEP_READY twice`);
        reports[cmd.step].set(s, grads);
        readyFrom[cmd.step].add(s);
        if (readyFrom[cmd.step].size === S) {
          const c = commits[cmd.step];
          for (let r = 0; r < S; r++) deliver(r, { type: 'STEP_COMMIT', step: cmd.step, gradScale: c.scale, skip: c.skip });
          const open = cmd.step + 1 + (postValidate ? 1 : 0);
          if (open < steps) for (let r = 0; r < S; r++) deliver(r, { type: 'STEP_OPEN', step: open });
        }
        return;
      }
      case 'APPLY_STEP':
        m.ledger.push({ step: cmd.step, scale: cmd.skip ? 0 : cmd.gradScale, skip: cmd.skip, grads: m.grads.join(',') });
        m.grads = [];
        return;
      case 'APPLY_PROVISIONAL':
        if (m.undo) fail(`${where(s, cmd.step)}: a second provisional update`);
        provisional++;
        m.undo = { ledger: [...m.ledger], grads: [...m.grads] };
        m.ledger.push({ step: cmd.step, scale: cmd.gradScale, skip: false, grads: m.grads.join(',') });
        m.grads = [];
        return;
      case 'CONFIRM_STEP':
        if (!m.undo) fail(`${where(s, cmd.step)}: CONFIRM without a provisional update`);
        m.undo = null;
        return;
      case 'ROLLBACK_STEP': {
        if (!m.undo) fail(`${where(s, cmd.step)}: ROLLBACK without a provisional update`);
        rollBacks++;
        m.ledger = [...m.undo!.ledger, { step: cmd.step, scale: cmd.skip ? 0 : cmd.gradScale, skip: cmd.skip, grads: m.undo!.grads.join(',') }];
        m.grads = [];
        m.undo = null;
        for (const set of [m.stash, m.halves]) for (const id of set) if (id.startsWith(`${cmd.step + 1}.`)) set.delete(id);
        return;
      }
      case 'ACK_STEP': case 'STEPPED': return;
    }
  };

  for (let s = 0; s < S; s++) {
    deliver(s, { type: 'STEP_OPEN', step: 0 });
    if (postValidate && steps > 1) deliver(s, { type: 'STEP_OPEN', step: 1 });
  }
  while (pending.length > 0) {
    let i = 0;
    if (o.seed % 2 === 1) i = Math.floor(rand() * pending.length);
    else for (let j = 1; j < pending.length; j++) if (pending[j].at < pending[i].at) i = j;
    const { at, stage: s, event } = pending.splice(i, 1)[0];
    now = Math.max(now, at);
    if (event.type === 'ACT_ARRIVED' || event.type === 'GRAD_ARRIVED') models[s].inputs.add(`${event.type === 'ACT_ARRIVED' ? 'act' : 'grad'}/${event.step}/${event.attempt}/${event.mb}`);
    if (event.type === 'OP_DONE') models[s].running = null;
    emitted[s] = [];
    actors[s].send(event);
    for (const cmd of emitted[s]) onCommand(s, cmd);
  }

  // Every stage ran every step, and its weights are exactly the commits, each on the gradients of its valid attempt.
  for (let s = 0; s < S; s++) {
    const m = models[s];
    if (m.undo) fail(`${where(s)}: ended with a provisional update`);
    if (m.ledger.length !== steps) fail(`${where(s)}: ${m.ledger.length} updates of ${steps} (stalled at ${JSON.stringify(actors[s].getSnapshot().context.step)})`);
    m.ledger.forEach((u, step) => {
      const c = commits[step];
      if (u.step !== step || u.skip !== c.skip || (!c.skip && u.scale !== c.scale)) fail(`${where(s, step)}: update ${JSON.stringify(u)}, committed ${JSON.stringify(c)}`);
      if (u.grads !== expectedGrads(step, attemptOf(step))) fail(`${where(s, step)}: update on gradients [${u.grads}]`);
    });
    actors[s].stop();
  }
  return { duplicates, rollBacks, provisional };
}

// Seeds per configuration; raise it (PIPELINE_SEEDS=2000) for a longer soak.
const SEEDS = Number(process.env.PIPELINE_SEEDS ?? 12);

for (const schedule of scheduleNames) {
  for (const [S, M] of [[1, 3], [2, 1], [2, 4], [4, 2], [4, 8]] as const) {
    test(`${schedule} S=${S} M=${M}: every delivery order ends in the committed updates, also when steps are clipped or skipped`, (t) => {
      let rollBacks = 0, provisional = 0;
      for (let seed = 0; seed < SEEDS; seed++) {
        const r = runPipeline({ schedule, stages: S, microbatches: M, steps: 4, seed, duplicateRate: 0.2, clipRate: 0.3, skipRate: 0.15 });
        rollBacks += r.rollBacks;
        provisional += r.provisional;
      }
      if (schedule === '1f1b') t.is(provisional, 0, '1F1B never applies an update before its commit');
      else {
        t.true(provisional > 0, 'no provisional update was ever applied');
        t.true(rollBacks > 0, 'no provisional update was ever rolled back');
      }
    });
  }

  test(`${schedule}: redelivered inputs are only acked`, (t) => {
    let duplicates = 0;
    for (let seed = 0; seed < SEEDS; seed++) {
      duplicates += runPipeline({ schedule, stages: 3, microbatches: 3, steps: 3, seed: 1000 + seed, duplicateRate: 0.4, clipRate: 0, skipRate: 0 }).duplicates;
    }
    t.true(duplicates > 0);
  });

  test(`${schedule}: a barrier step (a Bridge sync) is never run ahead of`, (t) => {
    let provisional = 0;
    for (let seed = 0; seed < SEEDS; seed++) {
      // The monitor throws at a computation of the step after a barrier run before that barrier's update is final.
      t.notThrows(() => { provisional += runPipeline({ schedule, stages: 3, microbatches: 4, steps: 4, seed: 2000 + seed, duplicateRate: 0, clipRate: 0.3, skipRate: 0, barrierEvery: 2 }).provisional; }, `seed ${2000 + seed}`);
    }
    // The steps between barriers still run ahead where the schedule allows it.
    if (schedule === '1f1b') t.is(provisional, 0);
    else t.true(provisional > 0, 'no step between barriers ran ahead');
  });
}

test('orion-100b\'s shape (S=16, M=32) with its FLOP costs: every schedule runs to the end', (t) => {
  const preset = SIMULATE_PRESETS['orion-100b'].config;
  const costs = opCostsFromFlops(preset.model, preset.training.seqLen, splitLayers(preset.model.nLayers, 16));
  for (const schedule of scheduleNames) {
    for (let seed = 0; seed < 2; seed++) {
      const run = () => runPipeline({ schedule, stages: 16, microbatches: 32, steps: 3, seed: 3000 + seed, duplicateRate: 0.05, clipRate: 0.2, skipRate: 0, costs });
      let r: PipelineResult | undefined;
      t.notThrows(() => { r = run(); }, `${schedule} seed ${3000 + seed}: every stage's updates are the commits`);
      if (schedule !== '1f1b') t.true(r!.provisional > 0, `${schedule}: stages ran ahead of their commits`);
    }
  }
});

// One stage, events one at a time: the rules a pipeline run may not happen to reach.
function single(input: { stage: number; stages: number; microbatches: number; schedule: ScheduleName; committed?: number; nextAttempt?: number; opened?: number[] }) {
  const ops = pipelineSchedule(input.schedule, { stages: input.stages, microbatches: input.microbatches })[input.stage];
  const actor = createActor(stageMachine, { input: { ...input, ops, postValidate: input.schedule !== '1f1b' } });
  let out: StageCommand[] = [];
  actor.on('*', (cmd) => { out.push(cmd); });
  actor.start();
  return {
    actor,
    send(event: StageEvent): StageCommand[] {
      out = [];
      actor.send(event);
      return out;
    },
  };
}

test('a frame of a voided attempt is acked, and the redone attempt takes its own', (t) => {
  // Last stage of 2, M = 1, zb-h1: F0, B0, W0 each step.
  const st = single({ stage: 1, stages: 2, microbatches: 1, schedule: 'zb-h1' });
  st.send({ type: 'STEP_OPEN', step: 0 });
  st.send({ type: 'STEP_OPEN', step: 1 });
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 0, mb: 0, attempt: 0 }).map((c) => c.type), ['RUN_OP']);
  t.deepEqual(st.send({ type: 'OP_DONE', step: 0, attempt: 0 }).map((c) => c.type), ['RUN_OP']);  // B0
  t.deepEqual(st.send({ type: 'OP_DONE', step: 0, attempt: 0 }).map((c) => c.type), ['RUN_OP']);  // W0
  t.deepEqual(st.send({ type: 'OP_DONE', step: 0, attempt: 0 }).map((c) => c.type), ['STEP_READY', 'APPLY_PROVISIONAL']);
  // Step 1 runs ahead on attempt 0; an attempt-1 frame waits until the commit says which is valid.
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 1, mb: 0, attempt: 1 }), []);
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 1, mb: 0, attempt: 0 }), [{ type: 'RUN_OP', step: 1, attempt: 0, op: { kind: 'F', mb: 0 } }]);
  // The commit is clipped: roll back, ack, and redo step 1 as attempt 1 once the running forward is done.
  t.deepEqual(st.send({ type: 'STEP_COMMIT', step: 0, gradScale: 0.25 }).map((c) => c.type), ['ROLLBACK_STEP', 'ACK_STEP', 'STEPPED']);
  t.deepEqual(st.send({ type: 'OP_DONE', step: 1, attempt: 0 }), [{ type: 'RUN_OP', step: 1, attempt: 1, op: { kind: 'F', mb: 0 } }]);
  // The voided attempt's frame, redelivered, is only acked.
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 1, mb: 0, attempt: 0 }), [{ type: 'DUPLICATE', kind: 'act', step: 1, mb: 0, attempt: 0 }]);
  st.actor.stop();
});

test('a stage restored from a checkpoint starts the next step at the attempt the checkpoint recorded', (t) => {
  const st = single({ stage: 1, stages: 2, microbatches: 1, schedule: 'zb-h2', committed: 4, nextAttempt: 1 });
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 5, mb: 0, attempt: 0 }), []);
  // Opening step 5 drops the voided attempt's frame and waits for attempt 1's.
  t.deepEqual(st.send({ type: 'STEP_OPEN', step: 5 }), [{ type: 'DUPLICATE', kind: 'act', step: 5, mb: 0, attempt: 0 }]);
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 5, mb: 0, attempt: 1 }), [{ type: 'RUN_OP', step: 5, attempt: 1, op: { kind: 'F', mb: 0 } }]);
  st.actor.stop();
});

test('a post-validated stage restored after step k runs step k+1, whose open came before the log point it resumes from', (t) => {
  const st = single({ stage: 1, stages: 2, microbatches: 1, schedule: 'zb-h2', committed: 4, opened: [5] });
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 5, mb: 0, attempt: 0 }), [{ type: 'RUN_OP', step: 5, attempt: 0, op: { kind: 'F', mb: 0 } }]);
  t.deepEqual(st.send({ type: 'STEP_OPEN', step: 5 }), [], 'the open replayed again changes nothing');
  st.actor.stop();
});

test('a replayed step whose commit is already known applies the final update, never a provisional one', (t) => {
  const st = single({ stage: 0, stages: 1, microbatches: 1, schedule: 'zb-h2' });
  st.send({ type: 'STEP_COMMIT', step: 0, gradScale: 1 });
  const ops: StageCommand[] = [...st.send({ type: 'STEP_OPEN', step: 0 })];
  for (let i = 0; i < 3; i++) ops.push(...st.send({ type: 'OP_DONE', step: 0, attempt: 0 }));
  t.deepEqual(ops.map((c) => c.type), ['RUN_OP', 'RUN_OP', 'RUN_OP', 'STEP_READY', 'APPLY_STEP', 'ACK_STEP', 'STEPPED']);
  st.actor.stop();
});

test('step control and inputs before the checkpoint are ignored or acked', (t) => {
  const st = single({ stage: 1, stages: 2, microbatches: 2, schedule: '1f1b', committed: 2 });
  t.deepEqual(st.send({ type: 'STEP_OPEN', step: 2 }), []);
  t.deepEqual(st.send({ type: 'STEP_COMMIT', step: 1, gradScale: 1 }), []);
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 2, mb: 1, attempt: 0 }), [{ type: 'DUPLICATE', kind: 'act', step: 2, mb: 1, attempt: 0 }]);
  t.deepEqual(st.send({ type: 'ACT_ARRIVED', step: 3, mb: 5, attempt: 0 }), [{ type: 'DUPLICATE', kind: 'act', step: 3, mb: 5, attempt: 0 }]);
  st.actor.stop();
});
