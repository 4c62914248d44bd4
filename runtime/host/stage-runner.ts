// One (replica, stage) slot on a host: its compute stage, its Stage actor,
// and the I/O that carries out the actor's commands. Inputs come from the
// slot's own durable consumers on the edge stream (incoming-frames.ts), step
// control from the control log (step-control.ts); outputs and reports are
// JetStream publishes with a Nats-Msg-Id (outgoing-frames.ts, transport/),
// so whatever a replacement recomputes is stored once.
//
// A slot holder starts from its slot's last checkpoint (or from the seed),
// reads its inputs and the control log from where that checkpoint left off,
// and replays the steps since exactly as they ran the first time: the
// engine is deterministic and the commits carry the clip factor that was
// decided, so the weights come out bit for bit the same. Every K steps it
// uploads its state and reports it (slot-state.ts).
//
// Everything it publishes is signed with the host's key; every frame it
// receives is checked against the slot table's key for the sender's slot
// before its tensor is decoded (security/), and dead-lettered if it fails;
// step control is acted on only when the coordinator signed it for this
// slot's replica (step-control.ts).
//
// This file wires the pieces together and carries out each command of the
// actor on the slot's command chain, one at a time (command-chain.ts).
import { createActor } from 'xstate';
import { stageMachine, type StageCommand, type StageEvent, type StageMachineInput } from '../../actors/stage-machine.ts';
import type { CheckpointPointer, StageCounters } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { boundaryCodecs } from '../codecs/index.ts';
import { runSchedule, type RunSchedule } from '../config/run-schedule.ts';
import { createComputeStage, type ComputeStage, type HostDevice } from '../compute/compute-stage.ts';
import type { Logger } from '../log.ts';
import type { CoordinatorKeys } from '../security/coordinator-keys.ts';
import type { HostKey } from '../security/host-key.ts';
import type { SlotSigners } from '../security/slot-signers.ts';
import type { Tracing } from '../telemetry/tracing.ts';
import { moveToDeadLetters } from '../transport/dead-letters.ts';
import type { RunConnection } from '../transport/run-connection.ts';
import type { RunResources } from '../transport/run-resources.ts';
import { openSlotControl } from '../transport/slot-control.ts';
import { openEdgeInput } from '../transport/slot-inputs.ts';
import { SlotOutputs } from '../transport/slot-outputs.ts';
import type { SlotHolder } from '../transport/slot-reader.ts';
import { SlotRewoundError, type SlotEntry } from '../transport/slots.ts';
import { stateObjects } from '../transport/state-objects.ts';
import { StageSync } from './bridge-sync.ts';
import { CommandChain } from './command-chain.ts';
import { ComputeAccounting } from './compute-accounting.ts';
import type { FaultPoints } from './fault-points.ts';
import { IncomingFrames } from './incoming-frames.ts';
import { MicrobatchTraces } from './microbatch-traces.ts';
import { OutgoingFrames } from './outgoing-frames.ts';
import { SlotState } from './slot-state.ts';
import { slotData, StageCompute } from './stage-compute.ts';
import { StepDigests } from '../audit/output-digests.ts';
import { StepControl } from './step-control.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export interface StageRunner {
  /** Settles when the run ends (after `stop()`), or rejects when the stage fails or loses its slot. */
  readonly done: Promise<void>;
  /** Ends the stage: cleanly with no argument, as a failure with one. */
  stop(err?: Error): void;
  /** Tells the coordinator this holder cannot go on, and why (a signed 'failed' report): settles once it is stored. */
  reportFailure(reason: string): Promise<void>;
}

export interface StageRunnerOptions {
  readonly device: HostDevice;
  readonly conn: RunConnection;
  readonly res: RunResources;
  readonly config: RunConfig;
  readonly slot: SlotEntry;
  readonly host: string;
  readonly log: Logger;
  readonly faults: FaultPoints;
  readonly deadLetters: { count: number };
  readonly tracing: Tracing;
  /** Signs what this host publishes. */
  readonly key: HostKey;
  /** Checks what it receives: frames and reports against the slot table, step control against the coordinator's keys. */
  readonly signers: SlotSigners;
  readonly coordinatorKeys: CoordinatorKeys;
}

/** What carries out the actor's commands. */
interface Slot {
  readonly work: StageCompute;
  /** The digests of the frames sent, by step, for its report (audited runs only). */
  readonly digests: StepDigests | undefined;
  readonly microbatches: number;
  readonly inputs: IncomingFrames;
  readonly outgoing: OutgoingFrames;
  readonly steps: StepControl;
  readonly state: SlotState;
  readonly outputs: SlotOutputs;
  readonly bridge: StageSync | undefined;
  readonly counters: () => StageCounters;
  /** Tells the actor a computation is done. */
  readonly computed: (event: StageEvent) => void;
  readonly lastStep: number;
  readonly checkpointEvery: number;
}

export async function startStage(o: StageRunnerOptions): Promise<StageRunner> {
  const { res, config, log, faults, tracing } = o;
  const { model, training: t } = config;
  const { replica, stage: s, generation, checkpoint: restored, rewound } = o.slot.record;
  // Where inputs and step control start: after the checkpoint, or (rewound with none since) where the rewind left the streams.
  const resume = restored?.resume ?? rewound?.resume;
  const holder: SlotHolder = { replica, stage: s, generation, host: o.host };
  const layers = stageRanges(config)[s];
  const compute = createComputeStage(config, o.device, s);
  const schedule = runSchedule(config);
  const engine = compute.stage;
  const chain = new CommandChain(log);
  const outputs = new SlotOutputs(res, o.key, holder);
  const objects = stateObjects(res);
  const actor = createActor(stageMachine, { input: stageInput(config, schedule, s, restored) });
  const send = (event: StageEvent) => chain.run(() => { actor.send(event); });
  const deadLetter = async (d: Parameters<typeof moveToDeadLetters>[3], fault: string, reason: string) => {
    if (!(await moveToDeadLetters(res, holder, o.key.publicKey, d, fault, reason))) log.warn({ fault, subject: d.subject }, 'dead-letter stream full: the refused message is dropped unrecorded');
  };
  // Made before a checkpoint is loaded: it keeps the initial weights where pseudo-gradients need them.
  const bridge = t.bridge ? new StageSync({ res, objects, bridge: t.bridge, replica, stage: s, engine, log, stopped: () => chain.settled, report: (r) => outputs.report(r), reported: () => faults.reach('bridge-sync') }) : undefined;
  const steps = new StepControl({
    send, keys: o.coordinatorKeys, subject: res.names.stepControl(replica), log, deadLetters: o.deadLetters,
    postValidate: schedule.postValidated, microbatches: t.microbatches,
    moveToDeadLetters: (d, fault, reason) => deadLetter(d, fault, reason),
    rewound: (epoch) => chain.stop(new SlotRewoundError(replica, epoch)),
  });
  const traces = new MicrobatchTraces(tracing, { run: res.names.run, replica, stage: s, isFirst: engine.isFirst, isLast: engine.isLast, schedule: schedule.name });
  const inputs = new IncomingFrames({
    run: res.names.run, replica, stage: s, batchSize: t.batchSize, seqLen: t.seqLen, maxSeqLen: model.maxSeqLen,
    // Activations arrive across the boundary at layerBegin, gradients across the one at layerEnd.
    widths: { act: engine.inWidth, grad: engine.outWidth }, nonFinite: t.nonFinite, resume,
    signers: o.signers, traces, log, moveToDeadLetters: (d, fault, reason) => deadLetter(d, fault, reason), deadLetters: o.deadLetters, send,
  });
  const state = new SlotState({
    names: res.names, objects, outputs, engine, replica, stage: s, layers, generation, faults, tracing, log,
    resumeAfter: (kind, step) => inputs.resumeAfter(kind, step), commitSeqOf: (step) => steps.commitSeqOf(step), attemptAfter: (step) => steps.attemptAfter(step),
  });
  if (restored) await state.restore(restored, bridge);
  const dataset = await slotData(config, compute);
  // A SHA-256 of every frame sent, on the hot path: paid only where audits read them.
  const digests = t.audit ? new StepDigests() : undefined;
  const outgoing = new OutgoingFrames({
    run: res.names.run, replica, stage: s, generation, batchSize: t.batchSize, seqLen: t.seqLen, maxPayload: o.conn.maxPayload, outputs, traces, faults, digests, failed: chain.stop,
    // Activations go out across the boundary at layerEnd, gradients across the one at layerBegin.
    wire: { act: { width: engine.outWidth, codecs: boundaryCodecs(model, layers[1], t.lz4) }, grad: { width: engine.inWidth, codecs: boundaryCodecs(model, layers[0], t.lz4) } },
  });
  const accounting = new ComputeAccounting(compute.peakGflops(), engine.cuda?.name ?? 'cpu');
  const work = new StageCompute({ config, replica, stage: s, generation, engine, dataset, inputs, outputs: outgoing, accounting, traces, faults, log });
  const slot: Slot = {
    work, inputs, outgoing, digests, microbatches: t.microbatches, steps, state, outputs, bridge, lastStep: t.steps - 1, checkpointEvery: t.checkpointEvery,
    counters: () => accounting.counters(outgoing.sentByKind(), inputs.queued(), work.peakStashBytes),
    // Frames that arrived during a computation were read meanwhile (engine calls run off the event loop), so the
    // actor picks the next one at once; the outputs just sent are encoded after it has started (outgoing-frames.ts).
    computed: (event) => actor.send(event),
  };
  // Commands run one at a time, off the event that issued them, so NATS I/O and heartbeats go on between computations.
  actor.on('*', (cmd: StageCommand) => {
    log.debug({ cmd }, 'stage command');
    chain.run(() => carryOut(cmd, slot));
  });
  chain.onStop(() => actor.stop());
  actor.start();
  await openReaders(res, holder, resume, engine, chain, slot, log);
  log.info({ layers, generation, from: restored?.step ?? null, ...(rewound ? { epoch: rewound.epoch } : {}) }, 'stage ready');
  return { done: chain.done, stop: chain.stop, reportFailure: (reason) => outputs.report({ type: 'failed', reason }) };
}

async function carryOut(cmd: StageCommand, p: Slot): Promise<void> {
  switch (cmd.type) {
    case 'RUN_OP':
      await p.work.run(cmd.step, cmd.attempt, cmd.op);
      return p.computed({ type: 'OP_DONE', step: cmd.step, attempt: cmd.attempt });
    case 'STEP_READY': {
      const { sumSquares, loss } = p.work.takeReport(cmd.step);
      await p.outgoing.allSent();
      return p.outputs.report({ type: 'done', step: cmd.step, sumSquares, loss, ...(p.digests ? { digests: p.digests.take(cmd.step, p.microbatches) } : {}), counters: p.counters() });
    }
    case 'APPLY_STEP':
      return p.work.update(cmd.step, cmd.gradScale, cmd.skip);
    case 'APPLY_PROVISIONAL':
      return p.work.applyProvisional(cmd.step, cmd.gradScale);
    case 'CONFIRM_STEP':
      return p.work.confirm();
    case 'ROLLBACK_STEP':
      return p.work.rollBack(cmd.step, cmd.gradScale, cmd.skip);
    case 'ACK_STEP':
      return p.inputs.ackStep(cmd.step);
    case 'STEPPED':
      return stepped(cmd.step, p);
    case 'DUPLICATE':
      return p.inputs.duplicate(cmd.kind, cmd.step, cmd.mb, cmd.attempt);
  }
}

/** After the step's update: the Bridge's sync where one is due, the report, and a checkpoint or the final state. */
async function stepped(step: number, p: Slot): Promise<void> {
  // The sync belongs to the step: commands run one at a time, so nothing of the next step runs before it is loaded.
  if (p.bridge?.syncsAfter(step)) await p.bridge.sync(step);
  await p.outputs.report({ type: 'stepped', step, contributions: p.work.applied });
  if (step === p.lastStep || p.steps.isLast(step)) await p.state.final(p.counters);
  else if (p.checkpointEvery > 0 && (step + 1) % p.checkpointEvery === 0) await p.state.checkpoint(step, p.bridge);
  p.steps.forget(step);
}

/** The Stage actor of stage s: its row of the run's schedule, and where it starts. */
function stageInput(config: RunConfig, schedule: RunSchedule, s: number, restored: CheckpointPointer | undefined): StageMachineInput {
  const t = config.training;
  return {
    stage: s, stages: t.stages, microbatches: t.microbatches, ops: schedule.lists[s], committed: restored?.step ?? -1, nextAttempt: restored?.next_attempt ?? 0,
    // The replica opens step k+1 before it commits k (openAhead), so a checkpoint's log resumes past the next step's open.
    opened: schedule.postValidated && restored && restored.step + 1 < t.steps ? [restored.step + 1] : [],
    postValidate: schedule.postValidated, barrierEvery: t.bridge?.syncEvery ?? 0,
  };
}

/** Step control from just after the checkpoint's commit, then each edge into the slot from where the checkpoint resumes it. */
async function openReaders(
  res: RunResources, holder: SlotHolder, resume: CheckpointPointer['resume'] | undefined, engine: ComputeStage, chain: CommandChain, p: Slot, log: Logger,
): Promise<void> {
  // A consumer under this holder's name with another config was made or changed by someone else: replaced, and said.
  const replaced = (why: string) => log.warn({ why }, 'reader consumer replaced');
  const control = await openSlotControl(res, holder, resume?.control, replaced);
  chain.onStop(() => void control.close().catch(() => {}));
  chain.follow('step control', () => p.steps.read(control));
  for (const kind of ['act', 'grad'] as const) {
    if ((kind === 'act' && engine.isFirst) || (kind === 'grad' && engine.isLast)) continue;
    const edge = await openEdgeInput(res, holder, kind, resume?.[kind], replaced);
    chain.onStop(() => void edge.close().catch(() => {}));
    chain.follow(`${kind} consumer`, () => p.inputs.read(kind, edge));
  }
}
