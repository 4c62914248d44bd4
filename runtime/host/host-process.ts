// `caravan host`: one OS process per GPU node. It registers with the
// coordinator, heartbeats on core NATS, waits as a standby until it is given
// a (replica, stage) slot, then builds that stage with the engine and runs the
// Stage actor, carrying out its commands: forwards and backwards on the
// engine, frames published to the neighbouring stages, reports to the
// replica, the optimizer step, and acks of the step's inputs once it has
// committed.
import { hostname } from 'node:os';
import type { JsMsg } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { createActor } from 'xstate';
import { stageMachine, type StageCommand } from '../../actors/stage-machine.ts';
import { EngineStage, splitLayers } from '../../native/index.ts';
import { decodeFrame, encodeFrame, FrameError, frameMsgId, type FrameKind } from '../../schemas/tensor-frame.ts';
import { validateRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { TokenDataset } from '../data/index.ts';
import type { Logger } from '../log.ts';
import { connectNats } from '../nats/connect.ts';
import { loadTokens } from '../train/train-local.ts';
import { ensureEdgeConsumer, openRunResources, type RunResources } from '../transport/run-resources.ts';
import { decodeJson, encodeJson } from '../transport/json.ts';

export interface HostOptions {
  readonly nats: string;
  readonly run: string;
  readonly device: 'cpu' | 'cuda';
  readonly gpu: number;
  readonly datacenter: string;
  readonly log: Logger;
  readonly heartbeatMs?: number;
  readonly registerTimeoutMs?: number;
}

export interface Assignment {
  readonly type: 'assign';
  readonly replica: number;
  readonly stage: number;
}

const CONSUME_MAX_BYTES = 32 * 1024 * 1024;  // bounded by bytes, not messages: see DEPENDENCIES.md

export function hostId(): string {
  return `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 60);
}

export async function runHost(o: HostOptions): Promise<void> {
  if (o.device === 'cuda') {
    throw new Error('--device cuda: the Node engine has no CUDA backend yet (it runs from the standalone driver, see docs/cuda.md); use --device cpu');
  }
  const nc = await connectNats(o.nats, `caravan-host-${hostId()}`);
  try {
    const res = await openRunResources(nc, o.run);
    const id = hostId();
    const log = o.log.child({ run: o.run, host: id, datacenter: o.datacenter });
    const assignments = nc.subscribe(res.names.assign(id));
    const deadLetters = { count: 0 };
    const beat = setInterval(() => {
      nc.publish(res.names.heartbeat(id), encodeJson({ host: id, datacenter: o.datacenter, deadLetters: deadLetters.count }));
    }, o.heartbeatMs ?? 1000);
    try {
      let ended = false;
      const end = nc.subscribe(res.names.finish, { callback: () => { ended = true; assignments.unsubscribe(); } });
      await register(nc, res, id, o, log);
      let assignment: Assignment | undefined;
      for await (const m of assignments) {
        const msg = decodeJson<{ type: string; replica?: number; stage?: number }>(m.data, 'assignment');
        if (msg.type === 'standby') log.info('standby: waiting for a slot');
        if (msg.type === 'assign') { assignment = msg as Assignment; break; }
      }
      end.unsubscribe();
      if (!assignment && ended) {
        log.info('the run ended while this host was a standby');
        return;
      }
      if (!assignment) throw new Error('the coordinator closed the run before giving this host a slot');
      const config = validateRunConfig(decodeJson((await res.kv.get('config'))?.value ?? new Uint8Array(), 'run config in KV'));
      await runStage(nc, res, config, assignment, id, log.child({ replica: assignment.replica, stage: assignment.stage }), deadLetters);
    } finally {
      clearInterval(beat);
      assignments.unsubscribe();
    }
  } finally {
    await nc.drain().catch(() => nc.close());
  }
}

async function register(nc: NatsConnection, res: RunResources, id: string, o: HostOptions, log: Logger): Promise<void> {
  const deadline = Date.now() + (o.registerTimeoutMs ?? 5 * 60_000);
  for (;;) {
    try {
      await nc.request(res.names.register, encodeJson({ host: id, datacenter: o.datacenter, device: o.device }), { timeout: 2000 });
      log.info('registered with the coordinator');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`no coordinator answered on ${res.names.register}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

async function runStage(
  nc: NatsConnection, res: RunResources, config: RunConfig, slot: Assignment, id: string, log: Logger, deadLetters: { count: number },
): Promise<void> {
  const { model, optim, training: t } = config;
  const { replica, stage: s } = slot;
  const S = t.stages, M = t.microbatches, B = t.batchSize, T = t.seqLen;
  const [layerBegin, layerEnd] = splitLayers(model.nLayers, S)[s];
  const engine = new EngineStage({ model, optim, layerBegin, layerEnd, seed: t.seed, threads: t.cpuThreads });
  const dataset = engine.isFirst || engine.isLast ? new TokenDataset(await loadTokens(config)) : undefined;
  const batch = (step: number, mb: number) =>
    dataset!.batchAt({ seed: t.seed, replica, step, microbatch: mb, batchSize: B, seqLen: T, split: 'train' });
  const maxPayload = nc.info?.max_payload ?? 1024 * 1024;

  // Inputs that arrived, by `${kind}/${step}/${mb}`, and their messages by step, acked at commit.
  const inputs = new Map<string, Float32Array>();
  const seen = new Set<string>();
  const unacked = new Map<number, Array<{ key: string; msg: JsMsg }>>();
  const lossSums = new Map<number, number>();
  const key = (kind: FrameKind, step: number, mb: number) => `${kind}/${step}/${mb}`;

  const publishFrame = async (kind: FrameKind, to: number, step: number, mb: number, data: Float32Array) => {
    const bytes = encodeFrame({ run: res.names.run, replica, stage: to, step, microbatch: mb, kind, shape: [B, T, model.dModel], data });
    if (bytes.length > maxPayload) {
      throw new Error(`a ${kind} frame of ${bytes.length} bytes exceeds the server's max_payload of ${maxPayload} bytes: raise max_payload (up to 8MB) in the nats-server config, or shrink B·T·d`);
    }
    const subject = kind === 'act' ? res.names.act(replica, to) : res.names.grad(replica, to);
    await res.js.publish(subject, bytes, { msgID: frameMsgId(res.names.run, replica, step, mb, kind, to) });
  };
  const report = (msg: Record<string, unknown>) => nc.publish(res.names.report, encodeJson({ replica, stage: s, host: id, ...msg }));

  const actor = createActor(stageMachine, { input: { stage: s, stages: S, microbatches: M } });
  // Commands run one at a time, off the event that issued them, so NATS I/O
  // and heartbeats go on between computations.
  let chain = Promise.resolve();
  let failure: Error | undefined;
  const run = (f: () => Promise<void> | void) => {
    chain = chain.then(f).catch((err: Error) => {
      failure ??= err;
      log.error({ err: err.message }, 'stage failed');
      nc.publish(res.names.failed, encodeJson({ reason: `replica ${replica} stage ${s} (host ${id}): ${err.message}` }));
      finished.resolve();
    });
  };
  let resolveFinished!: () => void;
  const finished = { promise: new Promise<void>((r) => { resolveFinished = r; }), resolve: () => resolveFinished() };

  actor.on('*', (cmd: StageCommand) => {
    switch (cmd.type) {
      case 'RUN_FORWARD':
        return run(async () => {
          const id = cmd.step * M + cmd.mb;
          const data = engine.isFirst || engine.isLast ? batch(cmd.step, cmd.mb) : undefined;
          let input: Int32Array | Float32Array;
          if (engine.isFirst) input = data!.tokens;
          else {
            input = inputs.get(key('act', cmd.step, cmd.mb))!;
            inputs.delete(key('act', cmd.step, cmd.mb));
          }
          const out = engine.forwardTrain(id, input, B, T, engine.isLast ? data!.targets : undefined);
          if (typeof out === 'number') lossSums.set(cmd.step, (lossSums.get(cmd.step) ?? 0) + out);
          else await publishFrame('act', s + 1, cmd.step, cmd.mb, out);
          actor.send({ type: 'FORWARD_DONE', step: cmd.step, mb: cmd.mb });
        });
      case 'RUN_BACKWARD':
        return run(async () => {
          const gradOut = engine.isLast ? null : inputs.get(key('grad', cmd.step, cmd.mb))!;
          inputs.delete(key('grad', cmd.step, cmd.mb));
          const gradIn = engine.backward(cmd.step * M + cmd.mb, gradOut);
          if (gradIn) await publishFrame('grad', s - 1, cmd.step, cmd.mb, gradIn);
          actor.send({ type: 'BACKWARD_DONE', step: cmd.step, mb: cmd.mb });
        });
      case 'STEP_READY':
        return run(() => {
          const loss = engine.isLast ? (lossSums.get(cmd.step) ?? NaN) / M : undefined;
          lossSums.delete(cmd.step);
          report({ type: 'done', step: cmd.step, sumSquares: Array.from(engine.gradSumSquares()), loss });
        });
      case 'APPLY_STEP':
        return run(() => { engine.step(cmd.gradScale); });
      case 'ACK_STEP':
        return run(async () => {
          for (const u of unacked.get(cmd.step) ?? []) u.msg.ack();
          unacked.delete(cmd.step);
          for (const k of seen) if (k.split('/')[1] === String(cmd.step)) seen.delete(k);
        });
      case 'STEPPED':
        return run(() => report({ type: 'stepped', step: cmd.step }));
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

  // Control from the replica: open and commit steps; the end of the run.
  const control = nc.subscribe(res.names.step(replica), {
    callback: (err, m) => {
      if (err) return;
      const msg = decodeJson<{ type: string; step: number; gradScale?: number }>(m.data, 'step control');
      if (msg.type === 'open') run(() => { actor.send({ type: 'STEP_OPEN', step: msg.step }); });
      else if (msg.type === 'commit') run(() => { actor.send({ type: 'STEP_COMMIT', step: msg.step, gradScale: msg.gradScale! }); });
    },
  });
  const finish = nc.subscribe(res.names.finish, {
    callback: () => run(async () => {
      const name = res.names.finalState(replica, layerBegin, layerEnd);
      await res.objects.putBlob({ name }, engine.state());
      nc.publish(res.names.uploaded, encodeJson({ host: id, replica, stage: s, name }));
      log.info({ name }, 'final state uploaded');
      finished.resolve();
    }),
  });

  const failedRun = nc.subscribe(res.names.failed, {
    callback: (_e, m) => {
      failure ??= new Error(`the run failed: ${decodeJson<{ reason: string }>(m.data, 'failure').reason}`);
      finished.resolve();
    },
  });
  const consumers: Array<{ stop: () => void }> = [];
  for (const kind of ['act', 'grad'] as const) {
    if ((kind === 'act' && engine.isFirst) || (kind === 'grad' && engine.isLast)) continue;
    const name = await ensureEdgeConsumer(res, kind, replica, s);
    const consumer = await res.js.consumers.get(res.names.edgeStream, name);
    const messages = await consumer.consume({ max_bytes: CONSUME_MAX_BYTES });
    consumers.push({ stop: () => void messages.stop() });
    const expect = { run: res.names.run, replica, stage: s, kind, width: model.dModel, maxSeqLen: model.maxSeqLen };
    (async () => {
      for await (const m of messages) {
        let frame;
        try {
          frame = decodeFrame(m.data, expect);
          if (frame.shape[0] !== B || frame.shape[1] !== T) throw new FrameError('shape', `frame shape [${frame.shape.join(', ')}] is not this run's [${B}, ${T}, ${model.dModel}]`);
        } catch (err) {
          if (!(err instanceof FrameError)) throw err;
          await deadLetter(res, m, err, replica, s, id);
          deadLetters.count++;
          log.warn({ fault: err.fault, reason: err.message, subject: m.subject, seq: m.seq }, 'frame dead-lettered');
          continue;
        }
        const k = key(kind, frame.step, frame.microbatch);
        if (seen.has(k)) { m.ack(); continue; }  // redelivered while its step is still open
        seen.add(k);
        inputs.set(k, frame.data);
        unacked.set(frame.step, [...(unacked.get(frame.step) ?? []), { key: k, msg: m }]);
        run(() => { actor.send({ type: kind === 'act' ? 'ACT_ARRIVED' : 'GRAD_ARRIVED', step: frame.step, mb: frame.microbatch }); });
      }
    })().catch((err: Error) => run(() => { throw err; }));
  }
  nc.publish(res.names.ready, encodeJson({ host: id, replica, stage: s }));
  log.info({ layers: [layerBegin, layerEnd] }, 'stage ready');
  await finished.promise;
  await chain;
  for (const c of consumers) c.stop();
  control.unsubscribe();
  finish.unsubscribe();
  failedRun.unsubscribe();
  actor.stop();
  if (failure) throw failure;
}

async function deadLetter(res: RunResources, m: JsMsg, err: FrameError, replica: number, stage: number, host: string): Promise<void> {
  const h = headers();
  h.set('Caravan-Fault', err.fault);
  h.set('Caravan-Reason', err.message.slice(0, 1000));
  h.set('Caravan-Subject', m.subject);
  h.set('Caravan-Host', host);
  await res.js.publish(res.names.dead(replica, stage), m.data, { headers: h });
  m.ack();  // moved, not lost: the dead-letter stream holds it
}
