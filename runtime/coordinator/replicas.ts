// The Replica actors, one per replica, and what their decisions become: each
// step's open and commit in the control log, written once (step control the
// log already holds was decided before a restart, and is not written again);
// for every fresh commit the loss and the run's progress; for replica 0's,
// the run's step, speed and live metrics in its state.
import { createActor, type Actor } from 'xstate';
import { attemptAfter } from '../../actors/stage-machine.ts';
import { replicaMachine, type ReplicaCommand, type ReplicaEvent } from '../../actors/replica-machine.ts';
import type { Progress, StageCounters, StepControl } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { ReplicaSnapshot } from '../../schemas/control-snapshot.ts';
import { runSchedule, scheduleBound, type RunSchedule } from '../config/run-schedule.ts';
import type { Logger } from '../log.ts';
import { stepControlId, type ControlLog } from '../transport/control-log.ts';
import { liveMetrics, tokensPerStep } from './live-metrics.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import type { LiveRunState } from './run-state.ts';

type Commit = Extract<ReplicaCommand, { type: 'COMMIT_STEP' }>;

export class Replicas {
  /** Each replica's loss at every step it committed. */
  readonly losses: number[][];
  /** `${replica}.${step}` committed as skipped. */
  readonly skipped = new Set<string>();
  /** `${replica}.${step}` whose commit rolled back the stages' provisional update (post-validated schedules). */
  readonly rolledBack = new Set<string>();
  /** By replica: none for a replica not in the run (yet). */
  private readonly actors: Array<Actor<typeof replicaMachine> | undefined> = [];
  /** The replicas in the run: those that start it (training.bridge.startReplicas), then those that joined (join()). */
  readonly active: number[];
  /** Replicas leaving the run (retire(), strand()): their last step. */
  private readonly lastSteps = new Map<number, number>();
  /** Replicas retired because a slot stayed vacant (strand()): no final weights; the run ends without them. */
  readonly stranded = new Set<number>();
  private readonly inLog = new Set<string>();  // step control already in the log, by stepControlId
  /** Each replica's epoch: how many times an audit's catch rewound it (rewinds.ts). */
  private readonly epochs: number[];
  /** Where each replica's actor starts deciding (a control-log snapshot's first_step; 0 otherwise). */
  private readonly firstSteps: number[];
  private readonly schedule: RunSchedule;
  private readonly scheduleUse: { readonly name: string; readonly bound: number };

  constructor(private readonly o: {
    readonly config: RunConfig; readonly controlLog: ControlLog; readonly writes: OrderedWrites; readonly run: LiveRunState; readonly log: Logger;
    /** The latest counters of every slot's holder, `${replica}.${stage}`. */
    readonly counters: ReadonlyMap<string, StageCounters>;
    readonly progress: (p: Progress) => void;
    readonly failed: (err: Error) => void;
    readonly finished: (replica: number) => void;
    /** Each commit, as the replica decides it (audits replay with it). */
    readonly committed?: (replica: number, step: number, gradScale: number, skip: boolean) => void;
  }) {
    this.losses = Array.from({ length: o.config.training.replicas }, () => []);
    this.epochs = Array.from({ length: o.config.training.replicas }, () => 0);
    this.firstSteps = Array.from({ length: o.config.training.replicas }, () => 0);
    this.active = Array.from({ length: o.config.training.bridge?.startReplicas ?? o.config.training.replicas }, (_, r) => r);
    // A restarted coordinator: the replicas that joined before, each from the step it joined at; those leaving, to their last.
    for (const j of o.run.state.joined ?? []) this.admit(j.replica, j.step);
    for (const l of o.run.state.left ?? []) {
      this.lastSteps.set(l.replica, l.step);
      if (l.vacant) this.stranded.add(l.replica);
    }
    // A re-split decided before a restart: every replica ends before its step.
    const resplit = o.run.state.resplit;
    if (resplit) for (const r of this.active) this.lastSteps.set(r, resplit.step - 1);
    this.schedule = runSchedule(o.config);
    this.scheduleUse = { name: this.schedule.name, bound: scheduleBound(this.schedule) };
  }

  /** Step control of `epoch` found in the log: its replica decides it again, and it is not written twice. */
  alreadyInLog(replica: number, control: StepControl, epoch: number): void {
    this.inLog.add(stepControlId(replica, control, epoch));
  }

  epoch(replica: number): number {
    return this.epochs[replica];
  }

  /** Before the actors start (a restarted coordinator replaying the log): the replica was rewound to `epoch`. */
  setEpoch(replica: number, epoch: number): void {
    this.epochs[replica] = epoch;
  }

  /**
   * Before the actors start (a restarted coordinator reading a control-log snapshot): each replica's commits before its
   * first_step as the snapshot has them; its actor starts deciding at first_step.
   */
  restore(snapshot: readonly ReplicaSnapshot[]): void {
    if (snapshot.length !== this.losses.length) throw new Error(`the control snapshot has ${snapshot.length} replicas, the run ${this.losses.length}`);
    snapshot.forEach((r, replica) => {
      if (r.losses.length !== r.first_step) throw new Error(`the control snapshot's replica ${replica} starts at step ${r.first_step} with ${r.losses.length} losses`);
      this.losses[replica] = r.losses.map((x) => x ?? NaN);
      this.firstSteps[replica] = r.first_step;
      for (const step of r.skipped) this.skipped.add(`${replica}.${step}`);
      for (const step of r.rolled_back) this.rolledBack.add(`${replica}.${step}`);
    });
  }

  /**
   * What a control-log snapshot keeps of each replica now: the commits before the step it last committed (or before
   * `needed`, if earlier), in short. From there on commits are decided again from the entries the snapshot keeps, so
   * that a replica whose final step awaits its stages' `stepped` reports still waits for them.
   */
  snapshot(needed: (replica: number) => number = () => Infinity): ReplicaSnapshot[] {
    return this.losses.map((losses, replica) => {
      // No later than what another reader of the log still needs decided again (audits.ts).
      const first = Math.max(0, Math.min(losses.length - 1, needed(replica)));
      const before = (set: ReadonlySet<string>) => [...set].flatMap((k) => {
        const [r, step] = k.split('.').map(Number);
        return r === replica && step < first ? [step] : [];
      }).sort((a, b) => a - b);
      return {
        first_step: first, losses: losses.slice(0, first).map((x) => (Number.isFinite(x) ? x : null)),
        skipped: before(this.skipped), rolled_back: before(this.rolledBack),
      };
    });
  }

  /** Starts the actor of every replica in the run, then every replica. */
  start(): void {
    const training = this.finishing();
    for (const r of training) this.actors[r] = this.startReplica(r);
    for (const r of training) this.actors[r]!.send({ type: 'START' });
  }

  /** The replicas whose stages upload final states: all in the run but those retired for a vacant slot. */
  finishing(): number[] {
    return this.active.filter((r) => !this.stranded.has(r));
  }

  /**
   * A replica with a slot that stayed vacant is retired where it stands: its actor decides nothing more, and its last
   * step is the last it committed. `contributedAll(outer)`: whether every stage's Bridge has its contribution to that
   * outer step (or combined it already). Its last outer step is the latest such at or before its last boundary, so
   * no stage waits for a contribution that died with the host. Returns both, or why it is not retired.
   */
  strand(replica: number, syncEvery: number, contributedAll: (outer: number) => boolean): { outer: number; lastStep: number } | string {
    const actor = this.actors[replica];
    if (!actor || !this.active.includes(replica) || this.stranded.has(replica)) return `replica ${replica} is not training in this run`;
    if (actor.getSnapshot().status !== 'active') return `replica ${replica} has finished`;
    if (!this.active.some((r) => r !== replica && !this.stranded.has(r))) return `replica ${replica} is the last replica in the run: it waits for a host`;
    const lastStep = this.losses[replica].length - 1;
    if (lastStep < this.firstSteps[replica]) return `replica ${replica} has committed no step yet: it waits for a host`;
    let outer = Math.floor((lastStep + 1) / syncEvery);
    while (outer > 0 && !contributedAll(outer)) outer--;
    actor.stop();
    this.stranded.add(replica);
    this.lastSteps.set(replica, lastStep);
    return { outer, lastStep };
  }

  /**
   * A replica joins the run at `firstStep` (after the run started): its actor opens that step first. Its steps before
   * were not trained (no loss). A restarted coordinator's Replicas know it from the run state.
   */
  join(replica: number, firstStep: number): void {
    this.admit(replica, firstStep);
    this.actors[replica]?.stop();
    this.actors[replica] = this.startReplica(replica);
    this.actors[replica].send({ type: 'START' });
  }

  /**
   * The replica leaves at the first outer-step boundary past every step it has opened: its step there is its last
   * (committed as such: its stages upload their final states) and its contribution to that outer step its last.
   * Returns the outer step and the last step, or why it cannot leave.
   */
  retire(replica: number, syncEvery: number): { outer: number; lastStep: number } | string {
    const actor = this.actors[replica];
    if (!actor || !this.active.includes(replica)) return `replica ${replica} is not training in this run`;
    if (this.lastSteps.has(replica)) return `replica ${replica} is leaving already, after step ${this.lastSteps.get(replica)}`;
    const snapshot = actor.getSnapshot();
    if (snapshot.status !== 'active') return `replica ${replica} has finished`;
    const staying = this.active.filter((r) => r !== replica && !this.lastSteps.has(r) && this.actors[r]?.getSnapshot().status === 'active');
    if (!staying.length) return `replica ${replica} is the last replica training: it cannot leave`;
    const outer = Math.floor(this.opened(replica) / syncEvery) + 1;
    const lastStep = outer * syncEvery - 1;
    if (lastStep + 1 >= this.o.config.training.steps) return `replica ${replica}'s next outer-step boundary is the run's end (step ${lastStep}): it finishes with the run`;
    this.lastSteps.set(replica, lastStep);
    actor.send({ type: 'RETIRE', lastStep });
    return { outer, lastStep };
  }

  /**
   * Every replica ends at the first step past every step any has opened (a live re-split: resplit.ts): that step is
   * committed as its last, and its stages upload their final states. With the Bridge, the last step is the last of an
   * outer step, so that every replica ends on the parameters its sync left. Returns the step after it, or why not.
   */
  endAll(): number | string {
    const training = this.finishing().filter((r) => this.actors[r]?.getSnapshot().status === 'active');
    if (!training.length) return 'the run has finished training';
    if (training.some((r) => this.lastSteps.has(r))) return 'a replica is ending already';
    const H = this.o.config.training.bridge?.syncEvery ?? 1;
    const lastStep = Math.ceil((Math.max(...training.map((r) => this.opened(r))) + 1) / H) * H - 1;
    if (lastStep + 1 >= this.o.config.training.steps) return `the run's last step (${this.o.config.training.steps - 1}) is under way: it finishes as it is`;
    for (const r of training) {
      this.lastSteps.set(r, lastStep);
      this.actors[r]!.send({ type: 'RETIRE', lastStep });
    }
    return lastStep + 1;
  }

  /** The furthest step the replica's actor has opened (steps are opened ahead under post-validated schedules). */
  private opened(replica: number): number {
    const c = this.actors[replica]!.getSnapshot().context;
    return c.step + (c.openAhead ?? 0);
  }

  private admit(replica: number, firstStep: number): void {
    if (!this.active.includes(replica)) this.active.push(replica);
    this.firstSteps[replica] = Math.max(this.firstSteps[replica], firstStep);
    if (this.losses[replica].length < firstStep) this.losses[replica] = Array.from({ length: firstStep }, (_, i) => this.losses[replica][i] ?? NaN);
  }

  /** Stops the replica's actor: nothing more of its epoch is decided (rewinds.ts, before the rewind is written). */
  halt(replica: number): void {
    this.actors[replica]?.stop();
  }

  /** The replica starts over from step 0 under `epoch`: its losses and step marks go, a new actor begins. */
  restart(replica: number, epoch: number): void {
    this.epochs[replica] = epoch;
    this.firstSteps[replica] = 0;
    this.losses[replica] = [];
    for (const set of [this.skipped, this.rolledBack]) for (const k of set) if (k.startsWith(`${replica}.`)) set.delete(k);
    this.actors[replica]?.stop();
    this.actors[replica] = this.startReplica(replica);
    this.actors[replica].send({ type: 'START' });
  }

  /** The replica's actor, once started. */
  actor(replica: number): { send(event: ReplicaEvent): void } | undefined {
    return this.actors[replica];
  }

  stop(): void {
    for (const r of this.actors) r?.stop();
  }

  private startReplica(replica: number): Actor<typeof replicaMachine> {
    const t = this.o.config.training;
    const actor = createActor(replicaMachine, {
      input: {
        replica, stages: t.stages, microbatches: t.microbatches, steps: Math.min(t.steps, (this.lastSteps.get(replica) ?? Infinity) + 1), maxGradNorm: t.maxGradNorm, nonFinite: t.nonFinite,
        openAhead: this.schedule.postValidated ? 1 : 0, firstStep: this.firstSteps[replica],
      },
    });
    actor.on('*', (cmd: ReplicaCommand) => {
      switch (cmd.type) {
        case 'OPEN_STEP':
          this.control(replica, { type: 'open', step: cmd.step });
          return;
        case 'COMMIT_STEP':
          this.commit(replica, cmd);
          return;
        case 'NOT_FINITE':
          this.o.failed(new Error(`replica ${replica} step ${cmd.step}: the gradient norm is ${cmd.gradNorm} and the loss ${cmd.loss}, not finite` +
            `${cmd.stages.length ? ` (in the gradients of stage${cmd.stages.length > 1 ? 's' : ''} ${cmd.stages.join(', ')})` : ''}: stopping before any weight is updated (training.nonFinite = stop)`));
          return;
        case 'FINISHED':
          this.o.finished(replica);
          return;
      }
    });
    actor.start();
    return actor;
  }

  /** Writes step control unless the log has it already; says whether it was written. */
  private control(replica: number, body: StepControl): boolean {
    const epoch = this.epochs[replica];
    const id = stepControlId(replica, body, epoch);
    if (this.inLog.has(id)) return false;  // already in the log: decided before a restart
    this.inLog.add(id);
    this.o.writes.write(id, () => this.o.controlLog.writeStepControl(replica, body, epoch));
    return true;
  }

  private commit(replica: number, cmd: Commit): void {
    const { config, run, log } = this.o;
    const t = config.training;
    this.losses[replica][cmd.step] = cmd.loss;
    this.o.committed?.(replica, cmd.step, cmd.gradScale, cmd.skip === true);
    if (cmd.skip) this.skipped.add(`${replica}.${cmd.step}`);
    if (attemptAfter({ postValidate: this.schedule.postValidated, microbatches: t.microbatches }, { step: cmd.step, gradScale: cmd.gradScale, skip: cmd.skip === true }) > 0) {
      this.rolledBack.add(`${replica}.${cmd.step}`);
    }
    const last = this.lastSteps.get(replica) === cmd.step ? { last: true as const } : {};
    const fresh = this.control(replica, { type: 'commit', step: cmd.step, gradScale: cmd.gradScale, gradNorm: cmd.gradNorm, loss: cmd.loss, ...(cmd.skip ? { skip: true as const } : {}), ...last });
    if (!fresh) return;
    if (cmd.skip) log.warn({ replica, step: cmd.step, grad_norm: cmd.gradNorm, loss: cmd.loss }, 'step skipped: its gradients or loss were not finite (training.nonFinite = skip-step)');
    // Commits come in step order: no holes. Steps before given states (--from-states) were not this run's.
    const joinedAt = (r: number) => run.state.joined?.find((j) => j.replica === r)?.step ?? run.state.from_step ?? 0;
    const stepsDone = this.active.reduce((n, r) => n + Math.max(0, this.losses[r].length - joinedAt(r)), 0);
    const tokensPerSecond = (stepsDone * tokensPerStep(t)) / Math.max(run.elapsedSeconds(), 1e-3);
    this.o.progress({ replica, step: cmd.step, loss: cmd.loss, gradNorm: cmd.gradNorm, tokensPerSecond, steps: t.steps });
    if (replica === this.finishing()[0]) {  // replica 0, unless it was retired for a vacant slot
      const live = liveMetrics({ counters: this.o.counters, stages: t.stages, schedule: this.scheduleUse, model: config.model, seqLen: t.seqLen, step: cmd.step, tokensPerS: tokensPerSecond, recoveries: run.recoveries });
      Object.assign(run.state, { step: cmd.step + 1, loss: cmd.loss, tokens_per_s: tokensPerSecond }, live ? { metrics: live } : {});
      void run.save();
    }
  }
}
