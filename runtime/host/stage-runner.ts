// One (replica, stage) slot on a host: the engine, the Stage actor, and the
// I/O that carries out its commands. Inputs come from the slot's own durable
// consumers on the edge stream, step control from the control log; outputs
// and reports are JetStream publishes with a Nats-Msg-Id, so whatever a
// replacement recomputes is stored once.
//
// A slot holder starts from its slot's last checkpoint (or from the seed),
// reads its inputs and the control log from where that checkpoint left off,
// and replays the steps since exactly as they ran the first time: the
// engine is deterministic and the commits carry the clip factor that was
// decided, so the weights come out bit for bit the same. Every K steps it
// uploads its state to the Object Store and reports it; the coordinator
// records it in the slot (only while this holder's generation holds it) and
// then drops the inputs the checkpoint makes unnecessary.
//
// Everything it publishes is signed with the host's key; every frame it
// receives is checked against the slot table's key for the sender's slot
// before its tensor is decoded (security/), and dead-lettered if it fails.
import type { ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { headers, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import { createActor } from 'xstate';
import { stageMachine, type StageCommand, type StageEvent } from '../../actors/stage-machine.ts';
import { EngineStage, sgemmGflops, splitLayers, type CudaDeviceInfo } from '../../native/index.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { decodeFrame, encodeFrameWithCodecs, FrameError, frameMsgId, type FrameKind } from '../../schemas/tensor-frame.ts';
import { boundaryCodecs, FRAME_CODECS } from '../codecs/index.ts';
import { loadTokens, TokenDataset } from '../data/index.ts';
import type { Logger } from '../log.ts';
import { publishDurable, retryTransient } from '../transport/durable-publish.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeStepControl, type CheckpointPointer, type ContributionReport, type StageCounters, type StageReport, type WireCount } from '../../schemas/control-messages.ts';
import { openEdgeConsumer, openReaderConsumer, PULL_EXPIRES_MS, ReaderReplacedError, type RunResources } from '../transport/run-resources.ts';
import { readSlot, SlotLostError, type SlotEntry } from '../transport/slots.ts';
import type { HostKey } from '../security/host-key.ts';
import { SIGNATURE_HEADER, sha256Hex, signatureHeader } from '../security/message-signature.ts';
import type { SlotSigners } from '../security/slot-signers.ts';
import type { Tracing } from '../telemetry/tracing.ts';
import type { FaultPoints } from './fault-points.ts';
import { MicrobatchTraces, traceIds } from './microbatch-traces.ts';
import { StageSync } from './bridge-sync.ts';
import { SyntheticStage } from '../compute/synthetic-stage.ts';
import type { Span } from '@opentelemetry/api';

const CONSUME_MAX_BYTES = 32 * 1024 * 1024;  // bounded by bytes, not messages: see DEPENDENCIES.md
const NO_TOKENS = new Int32Array(0);
// Frames published and not yet acknowledged, per stage (each up to max_payload, 8 MiB).
const MAX_FRAMES_IN_FLIGHT = 8;
const turnOfTheEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** What a slot computes with: the native engine, or the synthetic stage of a simulation. */
type ComputeStage = Pick<EngineStage, 'isFirst' | 'isLast' | 'inWidth' | 'outWidth' | 'needsTokens' | 'cuda' | 'paramCount' | 'backward' | 'gradSumSquares' | 'step' | 'zeroGrad' | 'state' | 'loadState' | 'params' | 'setParams'> & {
  forwardTrain(mb: number, input: Int32Array | Float32Array, B: number, T: number, targets?: Int32Array, tokens?: Int32Array): Float32Array | number;
};

export interface StageRunner {
  /** Settles when the run ends (after `stop()`), or rejects when the stage fails or loses its slot. */
  readonly done: Promise<void>;
  /** Ends the stage: cleanly with no argument, as a failure with one. */
  stop(err?: Error): void;
}

/** Where this host computes: the CPU, or one GPU it has already opened. */
export type HostDevice = { readonly kind: 'cpu' } | { readonly kind: 'cuda'; readonly gpu: CudaDeviceInfo };

export interface StageRunnerOptions {
  readonly device: HostDevice;
  readonly nc: NatsConnection;
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
  /** Checks what it receives. */
  readonly signers: SlotSigners;
}

export async function startStage(o: StageRunnerOptions): Promise<StageRunner> {
  const { nc, res, config, host, log, faults } = o;
  const { model, optim, training: t } = config;
  const { replica, stage: s, generation } = o.slot.record;
  const held = o.slot;
  const S = t.stages, M = t.microbatches, B = t.batchSize, T = t.seqLen;
  const K = t.checkpointEvery;
  const [layerBegin, layerEnd] = splitLayers(model.nLayers, S)[s];
  const onGpu = o.device.kind === 'cuda' ? { device: 'cuda' as const, gpu: o.device.gpu.index } : {};
  // A synthetic run (`caravan simulate`) computes nothing and takes the simulated device's time; everything else is the same.
  const synthetic = t.synthetic ? new SyntheticStage({ model, layerBegin, layerEnd, batchSize: B, seqLen: T, synthetic: t.synthetic }) : undefined;
  const engine: ComputeStage = synthetic ?? new EngineStage({ model, optim, layerBegin, layerEnd, seed: t.seed, threads: t.cpuThreads, ...onGpu });
  const restored = held.record.checkpoint;
  let settled = false;
  // A signed publish; its Nats-Msg-Id ends with a piece of the signature, which no other host can produce, so nobody can
  // take an id first and have this holder's message dropped as its duplicate (this holder's own re-sends still are).
  const publishSigned = (kind: 'frame' | 'report', subject: string, bytes: Uint8Array, msgID: string, h: MsgHdrs = headers()) => {
    const sig = signatureHeader(o.key, generation, kind, subject, bytes);
    h.set(SIGNATURE_HEADER, sig);
    return publishDurable(res.js, subject, bytes, { msgID: `${msgID}/${sig.slice(sig.indexOf('.') + 1, sig.indexOf('.') + 17)}`, headers: h });
  };
  const report = async (r: Record<string, unknown> & { type: StageReport['type']; step?: number }) => {
    const body = { ...r, replica, stage: s, generation, host };
    await publishSigned('report', res.names.report(replica, s), encodeJson(body), `${r.type}-${replica}-${s}-${r.step ?? 'end'}-g${generation}`);
  };
  // Made before a checkpoint is loaded: it keeps the initial weights where pseudo-gradients need them.
  const bridge = t.bridge ? new StageSync({ res, bridge: t.bridge, replica, stage: s, engine, log, stopped: () => settled, report }) : undefined;
  if (restored) {
    const blob = await retryTransient(`checkpoint download ${restored.object}`, () => res.objects.getBlob(restored.object));
    if (!blob) throw new Error(`checkpoint ${restored.object} of replica ${replica} stage ${s} is missing from the object store`);
    const sha = sha256Hex(blob);
    if (restored.sha256 && sha !== restored.sha256) {
      throw new Error(`checkpoint ${restored.object} of replica ${replica} stage ${s} is not the one its holder recorded (sha256 ${sha.slice(0, 16)}…, recorded ${restored.sha256.slice(0, 16)}…): it was overwritten in the object store`);
    }
    engine.loadState(blob, `checkpoint ${restored.object}`);
    await bridge?.restored(restored.step);
    log.info({ step: restored.step, object: restored.object }, 'restored from checkpoint');
  }
  const dataset = !synthetic && (engine.isFirst || engine.isLast || engine.needsTokens) ? new TokenDataset(await loadTokens(config)) : undefined;
  const batch = (step: number, mb: number) =>
    dataset!.batchAt({ seed: t.seed, replica, shards: t.replicas, step, microbatch: mb, batchSize: B, seqLen: T, split: 'train' });
  const maxPayload = nc.info?.max_payload ?? 1024 * 1024;

  // Inputs that arrived, by `${kind}/${step}/${mb}`, and their messages by step, acked at commit.
  const inputs = new Map<string, Float32Array>();
  const seen = new Set<string>();
  const unacked = new Map<number, Array<{ key: string; msg: JsMsg }>>();
  const lastSeq = new Map<FrameKind, number>();      // the last edge-stream sequence delivered, per input kind
  const commitSeq = new Map<number, number>();       // control-log sequence of each step's commit
  const lossSums = new Map<number, number>();
  const skipped = new Set<number>();                 // steps committed as skipped: their gradients are dropped, not applied
  let accumulated: number[] = [];                    // microbatches backwarded into the gradients since the last update
  let applied: number[] = [];
  const key = (kind: FrameKind, step: number, mb: number) => `${kind}/${step}/${mb}`;

  // Activations go out across the boundary at layerEnd, gradients across the one at layerBegin.
  const wire = {
    act: { width: engine.outWidth, codecs: boundaryCodecs(model, layerEnd, t.lz4) },
    grad: { width: engine.inWidth, codecs: boundaryCodecs(model, layerBegin, t.lz4) },
  };
  const sentByKind: Record<FrameKind, WireCount> = { act: { frames: 0, f32_bytes: 0, wire_bytes: 0 }, grad: { frames: 0, f32_bytes: 0, wire_bytes: 0 } };
  // Messages left in each edge stream for this consumer, as of the last delivery.
  const streamPending = new Map<FrameKind, number>();
  // The peak MFU is taken against: a GPU's dense bf16 peak from the engine's
  // table, or the CPU's practical fp32 peak (a plain sgemm of a few hundred ms at most).
  const peakGflops = synthetic ? synthetic.peakGflops : engine.cuda ? engine.cuda.peakBf16Tflops * 1000 : sgemmGflops(512, 512, 512, 8);
  let busyMs = 0, firstCompute = 0, lastCompute = 0;
  const timed = <R>(f: () => R): R => {
    const t0 = performance.now();
    try {
      return f();
    } finally {
      const t1 = performance.now();
      busyMs += t1 - t0;
      if (!firstCompute) firstCompute = Date.now() - (t1 - t0);
      lastCompute = Date.now();
    }
  };
  const traces = new MicrobatchTraces(o.tracing, { run: res.names.run, replica, stage: s, isFirst: engine.isFirst, isLast: engine.isLast });
  const publishFrame = async (kind: FrameKind, to: number, step: number, mb: number, data: Float32Array, parent: Span) => {
    const { width, codecs } = wire[kind];
    if (faults.poisons(kind, replica, s, step, mb)) (data = data.slice())[0] = NaN;
    await traces.send(parent, step, mb, () => {
      const encoded = encodeFrameWithCodecs({ run: res.names.run, replica, stage: to, step, microbatch: mb, kind, shape: [B, T, width], data }, codecs);
      return { ...encoded, f32Bytes: data.byteLength };
    }, (bytes, headers) => {
      const count = sentByKind[kind];
      count.frames++;
      count.f32_bytes += data.byteLength;
      count.wire_bytes += bytes.byteLength;
      if (bytes.length > maxPayload) {
        throw new Error(`a ${kind} frame of ${bytes.length} bytes exceeds the server's max_payload of ${maxPayload} bytes: raise max_payload (up to 8MB) in the nats-server config, shrink B·T·d, or put a bottleneck at the boundary (--bottleneck K)`);
      }
      return publishSigned('frame', res.names.edge(kind, replica, to), bytes, frameMsgId(res.names.run, replica, step, mb, kind, to), headers);
    });
    await faults.reach('publish');
  };
  // Frames go out without holding up the next computation: waiting for each
  // acknowledgement put a round trip to the stream's server (across a WAN,
  // tens of ms) after every forward and backward. The chain waits for them
  // before the step's report instead, so a commit still means every frame of
  // the step is stored (a checkpoint after it relies on that), and when too
  // many are in flight. A frame is encoded before sendFrame returns: the
  // engine may reuse the output's memory.
  const sending = new Set<Promise<void>>();
  const sendFrame = async (kind: FrameKind, to: number, step: number, mb: number, data: Float32Array, parent: Span) => {
    while (sending.size >= MAX_FRAMES_IN_FLIGHT) await Promise.race(sending);
    const sent: Promise<void> = publishFrame(kind, to, step, mb, data, parent)
      .catch((err: Error) => stop(err))
      .finally(() => sending.delete(sent));
    sending.add(sent);
  };
  const allSent = async () => { while (sending.size) await Promise.all([...sending]); };
  const counters = (): StageCounters => ({
    compute: { busy_ms: busyMs, first_ms: firstCompute, last_ms: lastCompute, peak_gflops: peakGflops, device: engine.cuda?.name ?? 'cpu' },
    sent_by_kind: { act: { ...sentByKind.act }, grad: { ...sentByKind.grad } },
    queued: inputs.size + [...streamPending.values()].reduce((a, b) => a + b, 0),
  });
  // Where this holder's inputs start after `step`: the first input of a later
  // step that arrived, or else the next one to come.
  const resumeAfter = (kind: FrameKind, step: number): number => {
    let min = (lastSeq.get(kind) ?? (restored?.resume[kind] ?? 1) - 1) + 1;
    let found = false;
    for (const [st, list] of unacked) {
      if (st <= step) continue;
      for (const u of list) if (u.key.startsWith(`${kind}/`) && (!found || u.msg.seq < min)) { min = u.msg.seq; found = true; }
    }
    return min;
  };

  const checkpoint = async (step: number) => {
    const control = commitSeq.get(step);
    if (control === undefined) throw new Error(`no commit recorded for step ${step}`);
    const resume = {
      ...(engine.isFirst ? {} : { act: resumeAfter('act', step) }),
      ...(engine.isLast ? {} : { grad: resumeAfter('grad', step) }),
      control: control + 1,
    };
    const name = res.names.checkpoint(replica, layerBegin, layerEnd, step, generation);
    const started = performance.now();
    const state = engine.state();
    await retryTransient(`checkpoint upload ${name}`, () => res.objects.putBlob({ name }, state));
    await faults.reach('checkpoint');
    // The coordinator records it (hosts may not write run state), then deletes the previous state and the inputs before it.
    await report({ type: 'checkpoint', step, checkpoint: { step, object: name, resume, sha256: sha256Hex(state) } });
    log.debug({ step, object: name, ms: Math.round(performance.now() - started) }, 'checkpoint reported');
  };

  const actor = createActor(stageMachine, { input: { stage: s, stages: S, microbatches: M, committed: restored?.step ?? -1, extraInFlight: t.extraInFlight ?? 0 } });
  // Commands run one at a time, off the event that issued them, so NATS I/O
  // and heartbeats go on between computations.
  let chain = Promise.resolve();
  let resolveDone!: () => void, rejectDone!: (e: Error) => void;
  const done = new Promise<void>((resolve, reject) => { resolveDone = resolve; rejectDone = reject; });
  const run = (f: () => Promise<void> | void) => {
    chain = chain.then(() => (settled ? undefined : f())).catch((err: Error) => stop(err));
  };
  // A computation holds the thread. Before the actor picks the next one, the
  // event loop takes a turn: frames that arrived meanwhile (a gradient that
  // should go first) are seen, and the frame just sent is written out. (While
  // each send waited for its acknowledgement, that wait was the turn.)
  const computed = async (event: StageEvent) => {
    await turnOfTheEventLoop();
    actor.send(event);
  };

  actor.on('*', (cmd: StageCommand) => {
    log.debug({ cmd }, 'stage command');
    switch (cmd.type) {
      case 'RUN_FORWARD':
        return run(async () => {
          const id = cmd.step * M + cmd.mb;
          const data = dataset ? batch(cmd.step, cmd.mb) : undefined;
          let input: Int32Array | Float32Array;
          if (engine.isFirst) input = data?.tokens ?? NO_TOKENS;
          else {
            input = inputs.get(key('act', cmd.step, cmd.mb))!;
            inputs.delete(key('act', cmd.step, cmd.mb));
          }
          const span = traces.compute('forward', cmd.step, cmd.mb);
          const out = timed(() => engine.forwardTrain(id, input, B, T, engine.isLast ? data?.targets : undefined, engine.needsTokens ? data?.tokens : undefined));
          traces.computed('forward', cmd.step, cmd.mb, span);
          if (log.isLevelEnabled('debug')) log.debug({ step: cmd.step, mb: cmd.mb, ...traceIds(span) }, 'forward');
          await faults.reach('forward');
          if (typeof out === 'number') lossSums.set(cmd.step, (lossSums.get(cmd.step) ?? 0) + out);
          else await sendFrame('act', s + 1, cmd.step, cmd.mb, out, span);
          await computed({ type: 'FORWARD_DONE', step: cmd.step, mb: cmd.mb });
        });
      case 'RUN_BACKWARD':
        return run(async () => {
          const gradOut = engine.isLast ? null : inputs.get(key('grad', cmd.step, cmd.mb))!;
          inputs.delete(key('grad', cmd.step, cmd.mb));
          const span = traces.compute('backward', cmd.step, cmd.mb);
          const gradIn = timed(() => engine.backward(cmd.step * M + cmd.mb, gradOut));
          traces.computed('backward', cmd.step, cmd.mb, span);
          if (log.isLevelEnabled('debug')) log.debug({ step: cmd.step, mb: cmd.mb, ...traceIds(span) }, 'backward');
          accumulated.push(cmd.mb);
          await faults.reach('backward');
          if (gradIn) await sendFrame('grad', s - 1, cmd.step, cmd.mb, gradIn, span);
          await computed({ type: 'BACKWARD_DONE', step: cmd.step, mb: cmd.mb });
        });
      case 'STEP_READY':
        return run(async () => {
          const loss = engine.isLast ? (lossSums.get(cmd.step) ?? NaN) / M : undefined;
          lossSums.delete(cmd.step);
          await allSent();
          await report({ type: 'done', step: cmd.step, sumSquares: Array.from(engine.gradSumSquares()), loss, counters: counters() });
        });
      case 'APPLY_STEP':
        return run(() => {
          if (skipped.delete(cmd.step)) {
            engine.zeroGrad();  // weights, moments and the schedule stay as they were
            log.warn({ step: cmd.step }, 'step skipped: its gradients were not finite');
          } else engine.step(cmd.gradScale);
          applied = accumulated;
          accumulated = [];
        });
      case 'ACK_STEP':
        return run(() => {
          for (const u of unacked.get(cmd.step) ?? []) u.msg.ack();
          unacked.delete(cmd.step);
          for (const k of seen) if (k.split('/')[1] === String(cmd.step)) seen.delete(k);
        });
      case 'STEPPED':
        return run(async () => {
          // The sync belongs to the step: commands run one at a time, so nothing of the next step runs before it is loaded.
          if (bridge?.syncsAfter(cmd.step)) await bridge.sync(cmd.step);
          await report({ type: 'stepped', step: cmd.step, contributions: applied });
          if (cmd.step === t.steps - 1) {
            const name = res.names.finalState(replica, layerBegin, layerEnd);
            const state = engine.state();
            await retryTransient(`final state upload ${name}`, () => res.objects.putBlob({ name }, state));
            await o.tracing.flush();  // every span of this stage is exported before the run can end
            await report({ type: 'final', name, sha256: sha256Hex(state), counters: counters() });
            log.info({ object: name }, 'final state uploaded');
          } else if (K > 0 && (cmd.step + 1) % K === 0) {
            await checkpoint(cmd.step);
          }
          commitSeq.delete(cmd.step);
        });
      case 'DUPLICATE':
        return run(() => {
          // A frame whose effect is already in the weights: it only needs its ack.
          const k = key(cmd.kind, cmd.step, cmd.mb);
          const pending = unacked.get(cmd.step) ?? [];
          for (const u of pending) if (u.key === k) u.msg.ack();
          unacked.set(cmd.step, pending.filter((u) => u.key !== k));
          inputs.delete(k);
          seen.delete(k);
        });
    }
  });
  actor.start();

  const streams: ConsumerMessages[] = [];
  const stop = (err?: Error) => {
    if (settled) return;
    settled = true;
    for (const m of streams) void m.close().catch(() => {});
    actor.stop();
    if (err) {
      log.error({ err: err.message }, 'stage stopped');
      rejectDone(err);
    } else resolveDone();
  };
  // A frame refused by signature or decoder: moved to the dead-letter stream with its reason, counted, logged.
  const deadLetter = async (m: JsMsg, fault: string, reason: string) => {
    await moveToDeadLetters(res, m, fault, reason, replica, s, host);
    o.deadLetters.count++;
    log.warn({ fault, reason, subject: m.subject, seq: m.seq }, 'frame dead-lettered');
  };
  const consumeLoop = (what: string, f: () => Promise<void>) => {
    f().catch((err: Error) => { if (!settled) stop(new Error(`${what}: ${err.message}`)); });
  };

  // Step control from the control log, from just after the checkpoint's commit.
  // A holder replaced before it got this far finds its successor's consumers: it was replaced, not broken.
  const fenced = async <T>(open: Promise<T>): Promise<T> => {
    try {
      return await open;
    } catch (err) {
      if (err instanceof ReaderReplacedError) throw new SlotLostError(replica, s, host, (await readSlot(res.kv, replica, s))?.record);
      throw err;
    }
  };
  const controlName = await fenced(openReaderConsumer(res, {
    stream: res.names.controlStream,
    name: res.names.controlConsumer(replica, s, generation),
    prefix: res.names.controlConsumerPrefix(replica, s),
    filter: res.names.stepControl(replica),
    startSeq: restored?.resume.control,
  }));
  const controlConsumer = await res.js.consumers.get(res.names.controlStream, controlName);
  const control = await controlConsumer.consume({ expires: PULL_EXPIRES_MS });
  streams.push(control);
  consumeLoop('step control', async () => {
    for await (const m of control) {
      m.ack();  // where a holder resumes is in its checkpoint, not in these acks
      const msg = decodeStepControl(m.data);
      if (msg.type === 'open') run(() => { actor.send({ type: 'STEP_OPEN', step: msg.step }); });
      else if (msg.type === 'commit') {
        commitSeq.set(msg.step, m.seq);
        if (msg.skip) skipped.add(msg.step);
        run(() => { actor.send({ type: 'STEP_COMMIT', step: msg.step, gradScale: msg.gradScale }); });
      }
    }
  });

  for (const kind of ['act', 'grad'] as const) {
    if ((kind === 'act' && engine.isFirst) || (kind === 'grad' && engine.isLast)) continue;
    const name = await fenced(openEdgeConsumer(res, kind, replica, s, generation, restored?.resume[kind]));
    const consumer = await res.js.consumers.get(res.names.inputStream(replica, s), name);
    const messages = await consumer.consume({ max_bytes: CONSUME_MAX_BYTES, expires: PULL_EXPIRES_MS });
    streams.push(messages);
    // Activations arrive across the boundary at layerBegin, gradients across the one at layerEnd.
    const width = kind === 'act' ? engine.inWidth : engine.outWidth;
    const expect = { run: res.names.run, replica, stage: s, kind, width, maxSeqLen: model.maxSeqLen, codecs: FRAME_CODECS };
    const sender = kind === 'act' ? s - 1 : s + 1;
    consumeLoop(`${kind} consumer`, async () => {
      for await (const m of messages) {
        lastSeq.set(kind, m.seq);
        streamPending.set(kind, m.info.pending);
        const received = Date.now();
        // Who sent it is settled before anything of it is decoded.
        const signed = await o.signers.check({ kind: 'frame', subject: m.subject, body: m.data, header: m.headers?.get(SIGNATURE_HEADER), replica, stage: sender, edge: kind, seq: m.seq });
        if (!signed.ok) {
          await deadLetter(m, signed.fault, signed.reason);
          continue;
        }
        let frame;
        try {
          frame = decodeFrame(m.data, expect);
          if (frame.shape[0] !== B || frame.shape[1] !== T) throw new FrameError('shape', `frame shape [${frame.shape.join(', ')}] is not this run's [${B}, ${T}, ${width}]`);
        } catch (err) {
          if (!(err instanceof FrameError)) throw err;
          await deadLetter(m, err.fault, err.message);
          continue;
        }
        const k = key(kind, frame.step, frame.microbatch);
        if (seen.has(k)) { m.ack(); continue; }  // redelivered while its step is still open
        const poison = nonFiniteIn(frame.data);
        if (poison) {
          const what = `a${kind === 'act' ? 'n' : ''} ${kind} frame from stage ${sender} (host ${signed.host}, generation ${signed.generation}) for step ${frame.step} microbatch ${frame.microbatch} holds ${poison.count} non-finite value(s), the first at index ${poison.first}`;
          // Under 'stop' it never reaches the engine; under 'skip-step' it poisons this step's gradients, and the replica skips the step.
          if (t.nonFinite === 'stop') throw new Error(`${what}: stopping the run (training.nonFinite = stop)`);
          log.warn({ step: frame.step, mb: frame.microbatch, sender, host: signed.host, count: poison.count }, `${what}: the step will be skipped`);
        }
        seen.add(k);
        traces.consumed(kind, frame.step, frame.microbatch, m.headers, received, m.data.byteLength, frame.codecs);
        inputs.set(k, frame.data);
        let pending = unacked.get(frame.step);
        if (!pending) unacked.set(frame.step, (pending = []));
        pending.push({ key: k, msg: m });
        run(() => { actor.send({ type: kind === 'act' ? 'ACT_ARRIVED' : 'GRAD_ARRIVED', step: frame.step, mb: frame.microbatch }); });
      }
    });
  }
  log.info({ layers: [layerBegin, layerEnd], generation, from: restored?.step ?? null }, 'stage ready');
  return { done, stop };
}

/** NaN and ±Inf in a tensor: how many, and where the first is; undefined when there are none. */
function nonFiniteIn(data: Float32Array): { count: number; first: number } | undefined {
  let probe = 0;
  for (let i = 0; i < data.length; i++) probe += data[i] * 0;  // stays 0 unless some value is NaN or ±Inf
  if (probe === 0) return undefined;
  let count = 0, first = -1;
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) { count++; if (first < 0) first = i; }
  return { count, first };
}

async function moveToDeadLetters(res: RunResources, m: JsMsg, fault: string, reason: string, replica: number, stage: number, host: string): Promise<void> {
  const h = headers();
  h.set('Caravan-Fault', fault);
  h.set('Caravan-Reason', reason.slice(0, 1000));
  h.set('Caravan-Subject', m.subject);
  h.set('Caravan-Host', host);
  await publishDurable(res.js, res.names.dead(replica, stage), m.data, { msgID: `dead-${m.info.stream}-${m.seq}`, headers: h });
  m.ack();  // moved, not lost: the dead-letter stream holds it
}
