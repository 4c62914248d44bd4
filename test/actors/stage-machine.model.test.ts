// Model-based test of the Stage machine with xstate/graph: every state the
// machine can reach from a small set of events is enumerated (shortest path to
// each), and the scheduling invariants are checked on all of them.
//
// xstate/graph drives a machine through `logic.transition` with a mock actor
// scope, so the commands a machine emits are invisible to it, and the Stage
// context does not record which command is outstanding (only `busy`). The
// model therefore wraps the machine in a small transition logic whose state is
// the machine snapshot plus the outstanding command, taken from the emitted
// actions that xstate's pure `transition()` returns. That is also what lets the
// event set answer only the command actually issued (FORWARD_DONE for a
// forward, BACKWARD_DONE for a backward), as the runtime does.
import test from 'ava';
import { createActor, fromTransition, initialTransition, transition, type SnapshotFrom } from 'xstate';
import { getShortestPaths } from 'xstate/graph';
import { nextCommand, stageMachine, type StageCommand, type StageEvent, type StageMachineInput } from '../../actors/stage-machine.ts';

type StageSnapshot = SnapshotFrom<typeof stageMachine>;
type RunCommand = Extract<StageCommand, { type: 'RUN_FORWARD' | 'RUN_BACKWARD' }>;

interface ModelState {
  readonly snap: StageSnapshot;
  readonly outstanding: RunCommand | null;  // issued and not yet answered
  readonly issued: { step: number; forwards: number; backwards: number };  // counted here, not by the machine
  readonly violation: string | null;        // the first broken rule seen on the way here
}

function emittedBy(actions: ReadonlyArray<{ type: string; params?: unknown }>): StageCommand[] {
  return actions.filter((a) => a.type === 'xstate.emit').map((a) => (a.params as { event: StageCommand }).event);
}

function stageModel(input: StageMachineInput) {
  const step = (state: ModelState, event: StageEvent): ModelState => {
    const before = state.snap.context;
    const [snap, actions] = transition(stageMachine, state.snap, event);
    const cmds = emittedBy(actions);
    const runs = cmds.filter((c): c is RunCommand => c.type === 'RUN_FORWARD' || c.type === 'RUN_BACKWARD');
    let outstanding = state.outstanding;
    let issued = state.issued;
    let violation = state.violation;
    const broken = (why: string) => { violation ??= `${why} on ${JSON.stringify(event)}`; };

    if ((event.type === 'FORWARD_DONE' || event.type === 'BACKWARD_DONE') && outstanding) outstanding = null;
    if (runs.length > 1) broken(`${runs.length} commands issued at once`);
    for (const run of runs) {
      if (outstanding) broken(`${run.type} mb ${run.mb} issued while ${outstanding.type} mb ${outstanding.mb} runs`);
      outstanding = run;
      // Forwards and backwards each go once per microbatch, in order, a backward only after its forward finished.
      if (run.step !== snap.context.step) broken(`${run.type} for step ${run.step} while step ${snap.context.step} is open`);
      if (run.step !== issued.step) issued = { step: run.step, forwards: 0, backwards: 0 };
      if (run.type === 'RUN_FORWARD') {
        if (run.mb !== issued.forwards) broken(`forward of mb ${run.mb}, expected ${issued.forwards}`);
        issued = { ...issued, forwards: issued.forwards + 1 };
      } else {
        if (run.mb !== issued.backwards) broken(`backward of mb ${run.mb}, expected ${issued.backwards}`);
        if (run.mb >= snap.context.nextForward) broken(`backward of mb ${run.mb} before its forward finished`);
        issued = { ...issued, backwards: issued.backwards + 1 };
      }
    }
    // A duplicate is only acked: it never comes with other work.
    const dups = cmds.filter((c) => c.type === 'DUPLICATE');
    if (dups.length > 0 && cmds.length !== 1) broken(`DUPLICATE with [${cmds.map((c) => c.type)}]`);
    if (dups.length > 0 && JSON.stringify(before) !== JSON.stringify(snap.context)) broken('a duplicate changed the context');
    // The step's end is three commands, in order, once: on its commit, or on
    // the last backward when the commit came first (replayed control).
    const tail = cmds.filter((c) => c.type === 'APPLY_STEP' || c.type === 'ACK_STEP' || c.type === 'STEPPED').map((c) => c.type);
    const ends = event.type === 'STEP_COMMIT' || (event.type === 'BACKWARD_DONE' && cmds.some((c) => c.type === 'STEP_READY'));
    if (tail.length > 0 && (!ends || tail.join() !== 'APPLY_STEP,ACK_STEP,STEPPED')) broken(`step end [${tail}]`);
    if (tail.length > 0 && snap.context.committed !== before.step) broken(`step ${before.step} ended but ${snap.context.committed} is committed`);
    return { snap, outstanding, issued, violation };
  };
  const [initial] = initialTransition(stageMachine, input);
  return fromTransition(step, { snap: initial, outstanding: null, issued: { step: -1, forwards: 0, backwards: 0 }, violation: null } as ModelState);
}

type Model = ReturnType<typeof stageModel>;
type ModelSnapshot = SnapshotFrom<Model>;

/** The machine's part of a state; the input never changes and is left out. */
const serialize = (s: ModelSnapshot) => {
  const { snap, outstanding, issued, violation } = s.context;
  const { stage: _s, stages: _S, microbatches: _M, ...ctx } = snap.context;
  return JSON.stringify([snap.value, ctx, outstanding, issued, violation]);
};

/** Events a correct runtime may deliver in this state: any input (new, early, late or repeated), the answer to the one command issued, and the replica's step control. */
function sampleEvents(input: StageMachineInput, steps: number) {
  return (s: ModelSnapshot): StageEvent[] => {
    const events: StageEvent[] = [];
    for (let step = 0; step < steps; step++) {
      events.push({ type: 'STEP_OPEN', step }, { type: 'STEP_COMMIT', step, gradScale: 0.5 });
      for (let mb = 0; mb < input.microbatches; mb++) {
        if (input.stage > 0) events.push({ type: 'ACT_ARRIVED', step, mb });
        if (input.stage < input.stages - 1) events.push({ type: 'GRAD_ARRIVED', step, mb });
      }
    }
    const run = s.context.outstanding;
    if (run) events.push({ type: run.type === 'RUN_FORWARD' ? 'FORWARD_DONE' : 'BACKWARD_DONE', step: run.step, mb: run.mb });
    return events;
  };
}

/** What must hold in every reachable state. */
function invariantBroken(s: ModelSnapshot): string | null {
  const { snap, outstanding, violation } = s.context;
  const c = snap.context;
  if (violation) return violation;
  const inFlight = c.nextForward - c.nextBackward;
  const limit = c.stages - c.stage;  // 1F1B: stage s holds at most S−s activations
  if (inFlight < 0 || inFlight > limit) return `${inFlight} in flight, limit ${limit}`;
  if (c.busy !== (outstanding !== null)) return `busy=${c.busy} with outstanding ${JSON.stringify(outstanding)}`;
  if (!snap.matches('running') && c.busy) return `busy in ${JSON.stringify(snap.value)}`;
  if (snap.matches('reporting') && (c.nextForward !== c.microbatches || c.nextBackward !== c.microbatches)) return 'reporting before every backward';
  if (c.acts.some((m) => m < c.nextForward) || c.grads.some((m) => m < c.nextBackward)) return 'a consumed input is still queued';
  if (new Set(c.acts).size !== c.acts.length || new Set(c.grads).size !== c.grads.length) return 'an input queued twice';
  if (c.future.some((f) => f.step <= c.step)) return 'an input of an open or past step left in `future`';
  // Work-conserving: idle while running means nothing can be issued (in particular no waiting backward).
  if (snap.matches('running') && !c.busy && nextCommand(c)) return `idle with ${JSON.stringify(nextCommand(c))} possible`;
  return null;
}

const explored = new Map<string, ReturnType<typeof getShortestPaths<Model>>>();
/** One shortest path to every reachable state (computed once per input, shared by the tests). */
function explore(input: StageMachineInput, steps: number) {
  const key = JSON.stringify([input, steps]);
  if (!explored.has(key)) {
    explored.set(key, getShortestPaths(stageModel(input), {
      events: sampleEvents(input, steps),
      serializeState: serialize,
      limit: 50_000,  // a few thousand visits suffice; more means the state space grew without bound (throws)
    }));
  }
  return explored.get(key)!;
}

for (const stage of [1, 0]) {
  const input: StageMachineInput = { stage, stages: 2, microbatches: 2 };
  const steps = 2;

  test(`S=2 stage ${stage} M=2: every reachable state keeps the 1F1B invariants`, (t) => {
    const paths = explore(input, steps);
    t.true(paths.length > 50, `only ${paths.length} states`);
    for (const path of paths) {
      const broken = invariantBroken(path.state);
      if (broken) t.fail(`${broken}\n  after: ${path.steps.map((st) => JSON.stringify(st.event)).join('\n         ')}`);
    }
    // The walk went the whole way: both steps reported and committed, and step 1 ran on inputs kept from before it opened.
    const states = paths.map((p) => p.state.context.snap);
    t.true(states.some((s) => s.matches('reporting') && s.context.step === 1));
    t.true(states.some((s) => s.matches('waiting') && s.context.committed === 1));
    t.true(states.some((s) => s.context.future.length > 0));
    if (stage === 1) t.true(states.some((s) => s.matches('running') && s.context.step === 1 && s.context.busy && s.context.nextForward === 0));
  });

  test(`S=2 stage ${stage} M=2: the live actor agrees with the model on every path`, (t) => {
    const paths = explore(input, steps);
    // Replay each path's events on a real actor; its emitted commands and final context must match the model's.
    for (const path of paths) {
      const actor = createActor(stageMachine, { input });
      const live: StageCommand[] = [];
      actor.on('*', (cmd) => { live.push(cmd); });
      actor.start();
      let model: ModelState = path.steps[0]?.state.context ?? path.state.context;
      const expected: StageCommand[] = [];
      for (const { event } of path.steps.slice(1)) {
        const [next, actions] = transition(stageMachine, model.snap, event);
        expected.push(...emittedBy(actions));
        model = { ...model, snap: next };
        actor.send(event);
      }
      t.deepEqual(live, expected);
      t.deepEqual(actor.getSnapshot().context, path.state.context.snap.context);
      actor.stop();
    }
  });
}
