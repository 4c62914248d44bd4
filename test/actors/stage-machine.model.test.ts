// Model-based test of the Stage machine with xstate/graph: every state the
// machine can reach from a set of events is enumerated (a shortest path to
// each), for each schedule, and the rules are checked on every transition.
//
// xstate/graph drives a machine through `logic.transition` with a mock actor
// scope, so the commands a machine emits are invisible to it. The model
// therefore wraps the machine in a small transition logic whose state is the
// machine snapshot plus what a runtime would know: the computation
// outstanding, the inputs delivered, what each attempt of each step has
// computed, and the ledger of updates in the weights (with the undo of a
// provisional one). That is also what lets the event set answer only the
// computation actually issued, as the runtime does.
import test from 'ava';
import { createActor, fromTransition, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { getShortestPaths } from 'xstate/graph';
import { pipelineSchedule, stashLimit, type ScheduleName } from '../../actors/pipeline-schedule.ts';
import { optimisticScale, stageMachine, type StageCommand, type StageEvent, type StageMachineInput } from '../../actors/stage-machine.ts';

type StageSnapshot = SnapshotFrom<typeof stageMachine>;
type RunOp = Extract<StageCommand, { type: 'RUN_OP' }>;

interface ModelState {
  readonly snap: StageSnapshot;
  readonly running: RunOp | null;
  readonly delivered: readonly string[];             // `${kind}/${step}/${attempt}/${mb}`, sorted
  readonly progress: Readonly<Record<string, number>>;  // `${step}.${attempt}` → ops issued
  readonly done: readonly string[];                  // `${kind}${mb}@${step}.${attempt}` computed, sorted
  readonly ledger: readonly string[];                // updates in the weights: `${step}:${scale}`
  readonly undo: boolean;                            // a provisional update awaits its commit
  readonly violation: string | null;
}

function emittedBy(actions: ReadonlyArray<{ type: string; params?: unknown }>): StageCommand[] {
  return actions.filter((a) => a.type === 'xstate.emit').map((a) => (a.params as { event: StageCommand }).event);
}

const sorted = (xs: Iterable<string>) => [...new Set(xs)].sort();

function stageModel(input: StageMachineInput, schedule: ScheduleName) {
  const { stage: s, stages: S, microbatches: M, ops } = input;
  const limit = stashLimit(schedule, { stages: S, microbatches: M }, s);
  const step = (state: ModelState, event: StageEvent): ModelState => {
    const [snap, actions] = transition(stageMachine, state.snap, event);
    let { running, delivered, progress, done, ledger, undo, violation } = state;
    const broken = (why: string) => { violation ??= `${why} on ${JSON.stringify(event)}`; };
    if (event.type === 'OP_DONE') running = null;
    if (event.type === 'ACT_ARRIVED' || event.type === 'GRAD_ARRIVED') {
      delivered = sorted([...delivered, `${event.type === 'ACT_ARRIVED' ? 'act' : 'grad'}/${event.step}/${event.attempt}/${event.mb}`]);
    }
    for (const cmd of emittedBy(actions)) {
      switch (cmd.type) {
        case 'RUN_OP': {
          const { step: k, attempt: a, op } = cmd;
          const at = `${k}.${a}`;
          const has = (kind: string, mb = op.mb) => done.includes(`${kind}${mb}@${at}`);
          if (running) broken(`${op.kind}${op.mb} issued while ${running.op.kind}${running.op.mb} runs`);
          running = cmd;
          const i = progress[at] ?? 0;
          if (ops[i]?.kind !== op.kind || ops[i]?.mb !== op.mb) broken(`${op.kind}${op.mb} issued as op ${i}, the list says ${JSON.stringify(ops[i])}`);
          progress = { ...progress, [at]: i + 1 };
          if (k > 0 && !ledger.some((u) => u.startsWith(`${k - 1}:`))) broken(`step ${k} computed before step ${k - 1}'s update is in the weights`);
          if (op.kind === 'F' && s > 0 && !delivered.includes(`act/${k}/${a}/${op.mb}`)) broken(`F${op.mb} of ${at} before its activation arrived`);
          if ((op.kind === 'B' || op.kind === 'BW') && s < S - 1 && !delivered.includes(`grad/${k}/${a}/${op.mb}`)) broken(`${op.kind}${op.mb} of ${at} before its gradient arrived`);
          if ((op.kind === 'B' || op.kind === 'BW') && !has('F')) broken(`${op.kind}${op.mb} of ${at} before its forward`);
          if (op.kind === 'W' && !has('B')) broken(`W${op.mb} of ${at} before its B`);
          done = sorted([...done, `${op.kind}${op.mb}@${at}`]);
          const stashed = new Set(done.filter((d) => d.startsWith('F')).map((d) => d.slice(1)));
          for (const d of done) if (d.startsWith('W') || d.startsWith('BW')) stashed.delete(d.slice(d.startsWith('W') ? 1 : 2));
          if (stashed.size > limit) broken(`${stashed.size} microbatches stashed, the schedule's bound is ${limit}`);
          break;
        }
        case 'STEP_READY': {
          const at = `${cmd.step}.${progress[`${cmd.step}.1`] ? 1 : 0}`;  // attempt 1 exists only where attempt 0 was voided
          if ((progress[at] ?? 0) !== ops.length) broken(`step ${cmd.step} reported after ${progress[at] ?? 0}/${ops.length} ops`);
          if (undo) broken(`step ${cmd.step} reported while step ${cmd.step - 1} is provisional`);
          break;
        }
        case 'APPLY_STEP':
          if (undo) broken('a final update over a provisional one');
          ledger = [...ledger, `${cmd.step}:${cmd.skip ? 'skip' : cmd.gradScale}`];
          break;
        case 'APPLY_PROVISIONAL':
          if (undo) broken('two provisional updates');
          undo = true;
          ledger = [...ledger, `${cmd.step}:${cmd.gradScale}`];
          break;
        case 'CONFIRM_STEP':
          if (!undo) broken('CONFIRM without a provisional update');
          undo = false;
          break;
        case 'ROLLBACK_STEP': {
          if (!undo) broken('ROLLBACK without a provisional update');
          undo = false;
          ledger = [...ledger.slice(0, -1), `${cmd.step}:${cmd.skip ? 'skip' : cmd.gradScale}`];
          // What ran ahead is void: its computations are forgotten with its stash.
          done = done.filter((d) => !d.endsWith(`@${cmd.step + 1}.0`));
          break;
        }
        default:
          break;
      }
    }
    return { snap, running, delivered, progress, done, ledger, undo, violation };
  };
  const [initial] = initialTransition(stageMachine, input);
  return fromTransition(step, { snap: initial, running: null, delivered: [], progress: {}, done: [], ledger: [], undo: false, violation: null } as ModelState);
}

type Model = ReturnType<typeof stageModel>;
type ModelSnapshot = SnapshotFrom<Model>;

/** The machine's part of a state with what the model knows; the input never changes and is left out. */
const serialize = (s: ModelSnapshot) => {
  const { snap, ...rest } = s.context;
  const { ops: _o, stage: _s, stages: _S, microbatches: _M, postValidate: _p, arrived, taken, opens, commits, ...ctx } = snap.context;
  // The order inputs and step control arrived in does not change what the stage does next: one state whatever it was.
  const set = (xs: readonly unknown[]) => xs.map((x) => JSON.stringify(x)).sort();
  return JSON.stringify([ctx, set(arrived), set(taken), set(opens), set(commits), rest]);
};

/**
 * Events a correct runtime may deliver: any input (new, early, late or
 * repeated; step 1 in either attempt), the answer to the one computation
 * issued, and step control: opens, and step 0's commit with the optimistic
 * factor or clipped (step 1's with the optimistic one).
 */
function sampleEvents(input: StageMachineInput) {
  return (s: ModelSnapshot): StageEvent[] => {
    const M = input.microbatches;
    const events: StageEvent[] = [
      { type: 'STEP_OPEN', step: 0 }, { type: 'STEP_OPEN', step: 1 },
      { type: 'STEP_COMMIT', step: 0, gradScale: optimisticScale(M) }, { type: 'STEP_COMMIT', step: 0, gradScale: 0.25 / M },
      { type: 'STEP_COMMIT', step: 1, gradScale: optimisticScale(M) },
    ];
    for (const [step, attempt] of [[0, 0], [1, 0], [1, 1]]) {
      for (let mb = 0; mb < (attempt === 1 ? 1 : M); mb++) {
        if (input.stage > 0) events.push({ type: 'ACT_ARRIVED', step, mb, attempt });
        if (input.stage < input.stages - 1) events.push({ type: 'GRAD_ARRIVED', step, mb, attempt });
      }
    }
    const run = s.context.running;
    if (run) events.push({ type: 'OP_DONE', step: run.step, attempt: run.attempt });
    return events;
  };
}

const explored = new Map<string, ReturnType<typeof getShortestPaths<Model>>>();
function explore(input: StageMachineInput, schedule: ScheduleName) {
  const key = JSON.stringify([input.stage, schedule]);
  if (!explored.has(key)) {
    explored.set(key, getShortestPaths(stageModel(input, schedule), {
      events: sampleEvents(input),
      serializeState: serialize,
      limit: 200_000,  // the walk is finite (two steps); more than this means it grew without bound (throws)
    }));
  }
  return explored.get(key)!;
}

for (const schedule of ['1f1b', 'zb-h1', 'zb-h2'] as const) {
  for (const stage of [1, 0]) {
    const ops = pipelineSchedule(schedule, { stages: 2, microbatches: 2 })[stage];
    const input: StageMachineInput = { stage, stages: 2, microbatches: 2, ops, postValidate: schedule !== '1f1b' };

    test(`${schedule} S=2 stage ${stage} M=2: on every reachable state the dependencies and the stash bound hold`, (t) => {
      const paths = explore(input, schedule);
      t.true(paths.length > 100, `only ${paths.length} states`);
      for (const path of paths) {
        if (path.state.context.violation) t.fail(`${path.state.context.violation}\n  after: ${path.steps.map((st) => JSON.stringify(st.event)).join('\n         ')}`);
      }
      // The walk went the whole way: both steps final, and (post-validated) a roll-back that redid step 1 as attempt 1.
      const states = paths.map((p) => p.state.context);
      t.true(states.some((c) => c.snap.context.committed === 1 && c.ledger.length === 2));
      if (schedule !== '1f1b') {
        t.true(states.some((c) => c.undo && c.snap.context.step === 1), 'step 1 never ran ahead of a provisional step 0');
        t.true(states.some((c) => c.snap.context.step === 1 && c.snap.context.attempt === 1 && (c.progress['1.1'] ?? 0) > 0), 'no roll-back was redone');
      }
    });

    test(`${schedule} S=2 stage ${stage} M=2: the live actor agrees with the model on every path`, (t) => {
      const paths = explore(input, schedule);
      // Replay a sample of paths (every 7th; the longest ones included) on a real actor: its commands and context must match the model's.
      for (const path of paths.filter((_, i) => i % 7 === 0)) {
        const actor = createActor(stageMachine, { input });
        const live: StageCommand[] = [];
        actor.on('*', (cmd) => { live.push(cmd); });
        actor.start();
        let snap = path.steps[0]?.state.context.snap ?? path.state.context.snap;
        const expected: StageCommand[] = [];
        for (const { event } of path.steps.slice(1)) {
          const [next, actions] = transition(stageMachine, snap, event);
          expected.push(...emittedBy(actions));
          snap = next;
          actor.send(event);
        }
        t.deepEqual(live, expected);
        t.deepEqual(actor.getSnapshot().context, path.state.context.snap.context);
        actor.stop();
      }
    });
  }
}
