// The Replica machine: opens steps, collects every stage's report, commits
// one clip decision per step (computed over the stages in model order, not
// arrival order), opens the next step once every stage has applied it, and
// finishes with the losses. Expected scales are computed here by hand.
import test from 'ava';
import { createActor } from 'xstate';
import { replicaMachine, type ReplicaCommand, type ReplicaEvent, type ReplicaMachineInput } from '../../actors/replica-machine.ts';

function replica(input: Partial<ReplicaMachineInput> & Pick<ReplicaMachineInput, 'stages'>) {
  const actor = createActor(replicaMachine, {
    input: { replica: 2, microbatches: 2, steps: 2, maxGradNorm: 0, ...input },
  });
  let out: ReplicaCommand[] = [];
  actor.on('*', (cmd) => { out.push(cmd); });
  actor.start();
  const send = (event: ReplicaEvent): ReplicaCommand[] => {
    out = [];
    actor.send(event);
    return out;
  };
  return { actor, send };
}

const done = (stage: number, step: number, sumSquares: Array<number | null>, loss?: number): ReplicaEvent =>
  ({ type: 'STAGE_DONE', stage, step, sumSquares, ...(loss === undefined ? {} : { loss }) });
const stepped = (stage: number, step: number): ReplicaEvent => ({ type: 'STAGE_STEPPED', stage, step });
/** The commits among what the replica emitted (the next step's open comes with each). */
const commits = (out: ReplicaCommand[]) => out.filter((c) => c.type === 'COMMIT_STEP');

function permutations<T>(xs: readonly T[]): T[][] {
  if (xs.length <= 1) return [[...xs]];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((p) => [x, ...p]));
}

// Σg² per stage, three stages: total 3+1+4+8 = 16, ‖Σg‖ = 4, over M = 2 microbatches the mean gradient's norm is 2.
const SUMS = [[3, 1], [4], [8]];

test('START opens step 0', (t) => {
  const { send } = replica({ stages: 3 });
  t.deepEqual(send({ type: 'START' }), [{ type: 'OPEN_STEP', replica: 2, step: 0 }]);
});

test('the stages report in any order: one commit, scale by hand, no clipping', (t) => {
  for (const order of permutations([0, 1, 2])) {
    const { send } = replica({ stages: 3, maxGradNorm: 5 });
    send({ type: 'START' });
    const out = commits(order.flatMap((s) => send(done(s, 0, SUMS[s], s === 2 ? 3.25 : undefined))));
    // norm 2 ≤ 5: factor 1, and the accumulated sum is divided by M.
    t.deepEqual(out, [{ type: 'COMMIT_STEP', replica: 2, step: 0, gradScale: 1 / 2, gradNorm: 2, loss: 3.25 }], `order ${order}`);
  }
});

test('the stages report in any order: one commit, scale by hand, with clipping', (t) => {
  for (const order of permutations([0, 1, 2])) {
    const { send } = replica({ stages: 3, maxGradNorm: 0.5 });
    send({ type: 'START' });
    const out = commits(order.flatMap((s) => send(done(s, 0, SUMS[s], s === 2 ? 3.25 : undefined))));
    // norm 2 > 0.5: factor 0.5 / (2 + 1e-6), then / M.
    t.deepEqual(out, [{ type: 'COMMIT_STEP', replica: 2, step: 0, gradScale: 0.5 / (2 + 1e-6) / 2, gradNorm: 2, loss: 3.25 }], `order ${order}`);
  }
});

test('maxGradNorm 0 never clips', (t) => {
  const { send } = replica({ stages: 3, maxGradNorm: 0 });
  send({ type: 'START' });
  const out = commits([2, 0, 1].flatMap((s) => send(done(s, 0, SUMS[s].map((v) => v * 1e6), s === 2 ? 1 : undefined))));
  t.is(out.length, 1);
  t.like(out[0], { type: 'COMMIT_STEP', gradScale: 1 / 2, gradNorm: 2000 });
});

test('the sums are added in stage order, not arrival order', (t) => {
  // At 2^53 a double cannot hold +1: added one by one after it, sixteen 1s vanish;
  // added first, they make 16, which 2^53 + 16 keeps. So only stage order gives 2^53 + 16.
  const big = 2 ** 53;
  const ones = Array<number>(16).fill(1);
  const inStageOrder = Math.sqrt(big + 16) / 2;
  t.not(inStageOrder, Math.sqrt(big) / 2, 'the two orders must give different norms for this test to mean anything');
  for (const order of [[0, 1], [1, 0]]) {
    const { send } = replica({ stages: 2, maxGradNorm: 0 });
    send({ type: 'START' });
    const sums = [ones, [big]];
    const out = order.flatMap((s) => send(done(s, 0, sums[s], s === 1 ? 2 : undefined)));
    t.like(out[0], { type: 'COMMIT_STEP', gradNorm: inStageOrder }, `arrival order ${order}`);
  }
});

test('the loss comes from the last stage', (t) => {
  const { send } = replica({ stages: 3 });
  send({ type: 'START' });
  send(done(2, 0, [1], 7.5));
  send(done(0, 0, [1], 99));  // a loss from another stage is not the step's loss
  const out = send(done(1, 0, [1]));
  t.like(out[0], { type: 'COMMIT_STEP', loss: 7.5 });
});

test('a stage reporting twice does not stand in for a missing one', (t) => {
  const { send } = replica({ stages: 3 });
  send({ type: 'START' });
  t.deepEqual(send(done(0, 0, [1])), []);
  t.deepEqual(send(done(0, 0, [1])), []);
  t.deepEqual(send(done(2, 0, [1], 1)), []);
  t.deepEqual(send(done(2, 0, [1], 1)), []);
  t.is(commits(send(done(1, 0, [1]))).length, 1);
});

test('a commit opens the next step at once; the last step finishes with every loss once every stage stepped', (t) => {
  const { actor, send } = replica({ stages: 3, steps: 3 });
  t.deepEqual(send({ type: 'START' }), [{ type: 'OPEN_STEP', replica: 2, step: 0 }]);
  const losses = [4.5, 3.75, 3.125];
  for (let step = 0; step < 3; step++) {
    t.deepEqual(send(stepped(0, step)), [], 'STAGE_STEPPED before the commit is ignored');
    const out = [1, 2, 0].flatMap((s) => send(done(s, step, [1], s === 2 ? losses[step] : undefined)));
    t.like(out[0], { type: 'COMMIT_STEP', step, loss: losses[step] });
    if (step < 2) {
      t.deepEqual(out.slice(1), [{ type: 'OPEN_STEP', replica: 2, step: step + 1 }], 'the next step opens with the commit');
      t.deepEqual([0, 1, 2].flatMap((s) => send(stepped(s, step))), [], 'stepped reports of an earlier step change nothing');
      continue;
    }
    t.is(out.length, 1, 'after the last step nothing opens');
    t.deepEqual(send(stepped(2, step)), []);
    t.deepEqual(send(stepped(2, step)), [], 'the same stage twice');
    t.deepEqual(send(stepped(0, step)), []);
    t.deepEqual(send(stepped(1, step)), [{ type: 'FINISHED', replica: 2, losses }]);
  }
  t.is(actor.getSnapshot().status, 'done');
});

test('reports for a wrong step are ignored', (t) => {
  const { actor, send } = replica({ stages: 2, steps: 3 });
  send({ type: 'START' });
  t.deepEqual(send(done(0, 1, [100])), [], 'a future step');
  t.deepEqual(send(done(1, 1, [100], 9)), [], 'a future step, from every stage');
  t.deepEqual(send(done(0, 0, [1])), []);
  const committed = send(done(1, 0, [3], 2));
  t.like(committed[0], { type: 'COMMIT_STEP', step: 0, gradNorm: 1, loss: 2 }, 'step 1 reports left no trace');
  t.deepEqual(committed[1], { type: 'OPEN_STEP', replica: 2, step: 1 });
  t.deepEqual(send(stepped(0, 1)), []);
  t.deepEqual(send(stepped(1, 1)), [], 'STAGE_STEPPED for a step not committed');
  t.deepEqual(send(done(0, 0, [1])), [], 'a past step');
  t.deepEqual(send(done(1, 0, [1], 1)), [], 'a past step, from every stage');
  t.deepEqual(send(stepped(0, 0)), []);
  t.deepEqual(send(stepped(1, 0)), [], 'STAGE_STEPPED for a past step');
  t.is(actor.getSnapshot().context.step, 1);
  t.true(actor.getSnapshot().matches('collecting'));
});

test('a replica resumed at firstStep opens that step; one already past its steps finishes at once', (t) => {
  t.deepEqual(replica({ stages: 2, steps: 5, firstStep: 3 }).send({ type: 'START' }), [{ type: 'OPEN_STEP', replica: 2, step: 3 }]);
  t.deepEqual(replica({ stages: 2, steps: 5, firstStep: 5 }).send({ type: 'START' }), [{ type: 'FINISHED', replica: 2, losses: [] }]);
});

test('a step whose gradients are not finite: skip-step commits it as skipped; stop names the stages and commits nothing', (t) => {
  const nanSums = [[3, 1], [NaN], [Infinity]];
  const skipping = replica({ stages: 3, nonFinite: 'skip-step' });
  skipping.send({ type: 'START' });
  const out = [0, 1, 2].flatMap((s) => skipping.send(done(s, 0, nanSums[s], s === 2 ? 3.25 : undefined)));
  t.deepEqual(out, [{ type: 'COMMIT_STEP', replica: 2, step: 0, gradScale: 0, gradNorm: NaN, loss: 3.25, skip: true }, { type: 'OPEN_STEP', replica: 2, step: 1 }], 'the run goes on');

  const stopping = replica({ stages: 3 });
  stopping.send({ type: 'START' });
  t.deepEqual([0, 1, 2].flatMap((s) => stopping.send(done(s, 0, nanSums[s], s === 2 ? 3.25 : undefined))),
    [{ type: 'NOT_FINITE', replica: 2, step: 0, gradNorm: NaN, loss: 3.25, stages: [1, 2] }]);

  const lossOnly = replica({ stages: 3, nonFinite: 'skip-step' });
  lossOnly.send({ type: 'START' });
  t.like([0, 1, 2].flatMap((s) => lossOnly.send(done(s, 0, SUMS[s], s === 2 ? NaN : undefined)))[0], { type: 'COMMIT_STEP', skip: true }, 'a loss that is not finite skips the step too');
});

test('a sum that was not finite arrives as null (JSON has no NaN) and counts as not finite, not as 0', (t) => {
  const stopping = replica({ stages: 2 });
  stopping.send({ type: 'START' });
  t.deepEqual([0, 1].flatMap((s) => stopping.send(done(s, 0, s === 0 ? [3, null] : [4], s === 1 ? 3.25 : undefined))),
    [{ type: 'NOT_FINITE', replica: 2, step: 0, gradNorm: NaN, loss: 3.25, stages: [0] }]);
});

test('a replica told to leave ends at the step given, as if the run had as many; a last step already opened past, or the run\'s own, changes nothing', (t) => {
  const { send } = replica({ stages: 1, steps: 6, openAhead: 1 });
  send({ type: 'START' });  // opens 0 and 1
  t.deepEqual(send({ type: 'RETIRE', lastStep: 0 }), [], 'step 1 is open already: not its last');
  send({ type: 'RETIRE', lastStep: 3 });
  const opened: number[] = [];
  for (let step = 0; step <= 3; step++) {
    const out = send(done(0, step, [1], 2));
    opened.push(...out.flatMap((c) => (c.type === 'OPEN_STEP' ? [c.step] : [])));
    t.is(commits(out).length, 1, `step ${step} committed`);
  }
  t.deepEqual(opened, [2, 3], 'nothing past its last step is opened');
  t.like(send(stepped(0, 3)), [{ type: 'FINISHED', replica: 2 }]);

  const whole = replica({ stages: 1, steps: 2 });
  whole.send({ type: 'START' });
  whole.send({ type: 'RETIRE', lastStep: 1 });  // the run's last step: as it was
  whole.send(done(0, 0, [1], 2));
  whole.send(stepped(0, 0));
  t.is(commits(whole.send(done(0, 1, [1], 2))).length, 1);
  t.like(whole.send(stepped(0, 1)), [{ type: 'FINISHED' }]);
});
