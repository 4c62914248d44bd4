// `caravan coordinator`: one per run. Writes the run config to KV, admits
// hosts (request/reply on ctl.register, heartbeats on core NATS), runs the
// Coordinator actor for membership and one Replica actor per replica for the
// steps. Everything it needs to go on lives in NATS: membership and slots in
// KV, the steps in the control log (opens and commits it wrote, the stages'
// reports). Killed and started again, it rebuilds the replicas by replaying
// that log, re-deciding each commit exactly as before, and only writes what
// is not there yet. At the end every stage has uploaded its final state, and
// the coordinator publishes the summary with a hash of the final parameters
// that does not depend on the split.
//
// It binds each slot to the key its host registered with, counts only reports
// signed by the slot's holder, and is the only writer of run state: the
// checkpoints holders report are recorded here, and the inputs they make
// unnecessary purged here.
import { randomBytes } from 'node:crypto';
import { createActor, type Actor } from 'xstate';
import { coordinatorMachine, type CoordinatorCommand, type CoordinatorMachineInput } from '../../actors/coordinator-machine.ts';
import { replicaMachine, type ReplicaCommand } from '../../actors/replica-machine.ts';
import { decodeSafeTensors, hashParams, splitLayers } from '../../native/index.ts';
import { decodeRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { decodeHostAnnouncement, decodeRegistration, decodeRunFailure, decodeStageReport, decodeStepControl, type CheckpointPointer, type StageCounters, type StageReport, type StepControl, type WireCount } from '../../schemas/control-messages.ts';
import { decodeHostEntry, decodeRunState, decodeRunSummary, type BridgeRecord, type HostEntry, type RecoveryCounts, type RunState, type RunSummary, type SentUntil, type SlotRecord } from '../../schemas/run-records.ts';
import { liveMetrics, mfuPercent, NO_RECOVERIES, pipelineUse } from './live-metrics.ts';
import { initRunMetrics } from '../telemetry/metrics.ts';
import { readBridgeRecord, startBridges } from '../bridge/bridge-runtime.ts';
import { bridgeStore } from '../transport/bridge-store.ts';
import type { Logger } from '../log.ts';
import type { NatsConnection } from '@nats-io/transport-node';
import { connectToRun } from '../transport/connect.ts';
import { publishDurable, retryTransient } from '../transport/durable-publish.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import { ensureInputStream, openReaderConsumer, openRunResources, PULL_EXPIRES_MS, type RunResources } from '../transport/run-resources.ts';
import { assignSlot, readSlot, recordReportedCheckpoint } from '../transport/slots.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import { checkRegistration } from '../security/registration.ts';
import { SIGNATURE_HEADER, sha256Hex } from '../security/message-signature.ts';
import { SlotSigners } from '../security/slot-signers.ts';
import type { MsgHdrs } from '@nats-io/transport-node';

export interface CoordinatorOptions {
  readonly nats: string;
  readonly run: string;
  readonly config: RunConfig;
  readonly log: Logger;
  readonly heartbeatTimeoutMs?: number;
  readonly streamReplicas?: number;
  /** An nkey seed file to authenticate to NATS with (the coordinator role of `caravan creds`). */
  readonly nkey?: string;
}

/** sha256 over the parameter tensors of stage states, in order (optimizer moments excluded). */
export function hashStageStates(states: readonly Uint8Array[]): string {
  return hashParams(states.flatMap((bytes, i) =>
    [...decodeSafeTensors(bytes, `stage state ${i}`).tensors].filter(([name]) => !name.startsWith('optimizer.')).map(([, t]) => t.data)));
}

async function readJson<T>(res: RunResources, key: string, decode: (bytes: Uint8Array, what: string) => T): Promise<T | undefined> {
  const e = await res.kv.get(key);
  return e && e.operation === 'PUT' && e.value.length ? decode(e.value, `KV ${key}`) : undefined;
}

/** Hosts and slots as the KV bucket has them: what a restarted coordinator starts from. */
async function readMembership(res: RunResources, config: RunConfig): Promise<NonNullable<CoordinatorMachineInput['restore']>> {
  const slots: SlotRecord[] = [];
  for (let r = 0; r < config.training.replicas; r++) {
    for (let s = 0; s < config.training.stages; s++) {
      const e = await readSlot(res.kv, r, s);
      if (e) slots.push(e.record);
    }
  }
  const entries: HostEntry[] = [];
  for await (const key of await res.kv.keys('hosts.>')) {
    const h = await readJson(res, key, decodeHostEntry);
    if (h) entries.push(h);
  }
  entries.sort((a, b) => a.joined.localeCompare(b.joined));
  const slotOf = (host: string) => {
    const s = slots.find((x) => x.host === host);
    return s ? { replica: s.replica, stage: s.stage } : null;
  };
  // Slot holders count whatever their host record says: a holder lost just before the restart is timed out again.
  const hosts = entries
    .map((h) => ({ id: h.host, datacenter: h.datacenter, slot: slotOf(h.host), lost: h.status === 'lost' }))
    .filter((h) => !h.lost || h.slot)
    .map(({ lost: _lost, ...h }) => h);
  for (const s of slots) {
    if (!hosts.some((h) => h.id === s.host)) hosts.push({ id: s.host, datacenter: 'unknown', slot: { replica: s.replica, stage: s.stage } });
  }
  return { running: slots.length > 0, hosts };
}

export async function runCoordinator(o: CoordinatorOptions): Promise<RunSummary> {
  const { config } = o;
  const t = config.training;
  const log = o.log.child({ run: o.run });
  const nc = await connectToRun(o.nats, `caravan-coordinator-${o.run}`, o.run, o.nkey);
  const res = await openRunResources(nc, o.run, { replicas: o.streamReplicas, limits: edgeLimits(config) });
  try {
    const prior = await readJson(res, 'state', decodeRunState);
    if (prior?.status === 'finished') {
      const summary = await readJson(res, 'summary', decodeRunSummary);
      if (summary) { log.info('the run had already finished'); return summary; }
    }
    if (prior?.status === 'failed') throw new Error(`run ${o.run} failed earlier: ${prior.reason ?? 'no reason recorded'}`);
    const kept = await readJson(res, 'config', decodeRunConfig);
    if (kept && JSON.stringify(kept) !== JSON.stringify(config)) {
      throw new Error(`run ${o.run} already exists with a different config: restart its coordinator with the same config, or use a new run id`);
    }
    if (!kept) await res.kv.put('config', encodeJson(config));
    const restore = prior ? await readMembership(res, config) : undefined;
    if (restore) log.info({ hosts: restore.hosts.length, running: restore.running, step: prior!.step }, 'coordinator restarted: resuming from KV and the control log');
    return await coordinate(o, nc, res, prior, restore, log);
  } finally {
    await nc.drain().catch(() => nc.close());
  }
}

async function coordinate(
  o: CoordinatorOptions, nc: NatsConnection, res: RunResources, prior: RunState | undefined, restore: CoordinatorMachineInput['restore'], log: Logger,
): Promise<RunSummary> {
  const { config } = o;
  const t = config.training;
  const state: RunState = prior ?? { status: 'gathering', step: 0, loss: null, tokens_per_s: null, started_at: null, updated: '' };
  const recoveries: RecoveryCounts = (state.recoveries = { ...NO_RECOVERIES, ...state.recoveries });
  if (restore) recoveries.coordinator_restarts++;
  const saveState = () => res.kv.put('state', encodeJson({ ...state, updated: new Date().toISOString() })).catch((err: Error) => log.warn({ err: err.message }, 'state not saved'));
  await saveState();

  let settle!: (v: RunSummary | Error) => void;
  const outcome = new Promise<RunSummary | Error>((r) => { settle = r; });
  // KV and control-log writes go out one at a time, in the order they were decided.
  let writes = Promise.resolve();
  const write = (what: string, f: () => Promise<unknown>) => {
    writes = writes.then(f).then(() => undefined, (err: Error) => settle(new Error(`${what}: ${err.message}`)));
  };
  // A host's record keeps its join time (restarts order standbys by it) and takes the latest status.
  const putHost = (host: string, status: HostEntry['status'], fields: Record<string, unknown> = {}) => write(`host record ${host}`, () => retryTransient(`host record ${host}`, async () => {
    const before = await readJson(res, res.names.hostKey(host), decodeHostEntry);
    await res.kv.put(res.names.hostKey(host), encodeJson({ ...before, ...fields, host, status, joined: before?.joined ?? new Date().toISOString() }));
  }));

  const coordinator = createActor(coordinatorMachine, {
    input: { stages: t.stages, replicas: t.replicas, heartbeatTimeoutMs: o.heartbeatTimeoutMs ?? 15_000, tickMs: Math.min(1000, Math.max(50, Math.floor((o.heartbeatTimeoutMs ?? 15_000) / 10))), restore },
  });
  const replicas: Array<Actor<typeof replicaMachine>> = [];
  const tokensPerStep = t.microbatches * t.batchSize * t.seqLen;
  const losses: number[][] = Array.from({ length: t.replicas }, () => []);
  const published = new Set<string>();   // step control already in the log
  const counters = new Map<string, StageCounters>();  // the latest of every slot's holder, `${replica}.${stage}`
  const skipped = new Set<string>();  // `${replica}.${step}` committed as skipped
  const finals = new Map<string, string>();  // `${replica}.${stage}` whose final state is uploaded (its counters are the last) → its sha256
  const registered = new Map<string, { key: string; datacenter: string }>();  // host → the public key it registered and its datacenter (also in its KV record, for restarts)
  const registeredHost = async (host: string) => registered.get(host) ?? (await readJson(res, res.names.hostKey(host), decodeHostEntry));
  const signers = new SlotSigners(res.kv);
  const bridges = t.bridge ? startBridges({ store: bridgeStore(res), config, bridge: t.bridge, log, onError: (err) => settle(err) }) : undefined;
  // The run's metrics over OpenTelemetry (off unless OTEL_EXPORTER_OTLP_* names an endpoint): the live state, read when exported.
  const metrics = initRunMetrics({ service: 'caravan-coordinator', run: o.run }, () => state);
  let replicasDone = false;
  let finishing = false;

  const subs = [
    nc.subscribe(res.names.register, {
      callback: (_e, m) => void (async () => {
        let msg;
        try {
          msg = decodeRegistration(m.data);
        } catch (err) {
          m.respond(encodeJson({ ok: false, reason: (err as Error).message }));
          return;
        }
        const refused = checkRegistration(o.run, msg);
        if (refused) {
          log.warn({ reason: refused }, 'registration refused');
          m.respond(encodeJson({ ok: false, reason: refused }));
          return;
        }
        // A host id is bound to the first key it registered with (kept in its KV record across coordinator restarts):
        // another key under the same id is someone else.
        const known = (await registeredHost(msg.host).catch(() => undefined))?.key;
        if (known && known !== msg.key) {
          m.respond(encodeJson({ ok: false, reason: `host id ${msg.host} is registered with another key` }));
          return;
        }
        registered.set(msg.host, { key: msg.key, datacenter: msg.datacenter ?? 'default' });
        m.respond(encodeJson({ ok: true, run: o.run }));
        log.info({ host: msg.host, datacenter: msg.datacenter, key: msg.key }, 'host joined');
        putHost(msg.host, 'joined', { datacenter: msg.datacenter ?? 'default', key: msg.key });
        coordinator.send({ type: 'HOST_JOINED', host: msg.host, datacenter: msg.datacenter ?? 'default' });
      })(),
    }),
    nc.subscribe(res.names.heartbeats, {
      callback: (_e, m) => coordinator.send({ type: 'HEARTBEAT', host: decodeHostAnnouncement(m.data, 'heartbeat').host }),
    }),
    nc.subscribe(res.names.ready, {
      callback: (_e, m) => coordinator.send({ type: 'HOST_READY', host: decodeHostAnnouncement(m.data, 'ready').host }),
    }),
    nc.subscribe(res.names.failed, {
      callback: (_e, m) => settle(new Error(decodeRunFailure(m.data).reason)),
    }),
  ];

  let runStarted = false;
  coordinator.on('*', (cmd: CoordinatorCommand) => {
    switch (cmd.type) {
      case 'ASSIGN': {
        const [begin, end] = splitLayers(config.model.nLayers, t.stages)[cmd.stage];
        write(`slot ${cmd.replica}.${cmd.stage}`, async () => {
          const holder = await registeredHost(cmd.host);
          if (!holder?.key) throw new Error(`host ${cmd.host} has no registered key`);
          // Before the slot record: its holder reads the stream, and no one sends to it before the run starts.
          const placedIn = await retryTransient(`input stream of slot ${cmd.replica}.${cmd.stage}`, () => ensureInputStream(res, cmd.replica, cmd.stage, holder.datacenter));
          // The previous holder's frames stored up to now are good; any later ones come from a host that was replaced.
          const until = await sentUntil(cmd.replica, cmd.stage);
          const { record } = await retryTransient(`slot ${cmd.replica}.${cmd.stage}`, () => assignSlot(res.kv, cmd.replica, cmd.stage, cmd.host, { key: holder.key!, until }));
          signers.update(record);
          const fields = { host: cmd.host, replica: cmd.replica, stage: cmd.stage, generation: record.generation, from: record.checkpoint?.step ?? null };
          if (cmd.replacing) {
            recoveries.slots_reassigned++;
            log.warn({ ...fields, replacing: cmd.replacing }, 'slot handed to a standby');
          }
          else log.info({ ...fields, layers: [begin, end], datacenter: holder.datacenter, ...(placedIn ? { input_stream_in: placedIn } : {}) }, 'slot assigned');
        });
        putHost(cmd.host, 'assigned', { replica: cmd.replica, stage: cmd.stage, layers: [begin, end] });
        return;
      }
      case 'STANDBY':
        putHost(cmd.host, 'standby', { replica: undefined, stage: undefined });
        return;
      case 'START_RUN':
        if (runStarted) return;
        runStarted = true;
        if (state.started_at === null) state.started_at = Date.now();
        state.status = 'running';
        void saveState();
        log.info({ stages: t.stages, replicas: t.replicas, steps: t.steps }, 'run started');
        followControlLog().catch((err: Error) => settle(new Error(`control log: ${err.message}`)));
        return;
      case 'HOST_LOST':
        log.warn({ host: cmd.host, slot: cmd.slot }, 'host lost (no heartbeat)');
        // Counted once: a restarted coordinator times out again a holder whose record already says lost.
        write(`host record ${cmd.host}`, async () => {
          if ((await readJson(res, res.names.hostKey(cmd.host), decodeHostEntry))?.status !== 'lost') recoveries.hosts_lost++;
        });
        putHost(cmd.host, 'lost', { slot: cmd.slot });
        return;
      case 'SLOT_VACANT':
        log.warn({ replica: cmd.replica, stage: cmd.stage, lost: cmd.lost }, 'slot vacant: no standby; waiting for a host to join');
        return;
      case 'RUN_FINISHED':
        replicasDone = true;
        maybeFinish();
        return;
    }
  });

  const elapsedSeconds = () => (Date.now() - (state.started_at ?? Date.now())) / 1000;

  function startReplica(replica: number): Actor<typeof replicaMachine> {
    const actor = createActor(replicaMachine, {
      input: { replica, stages: t.stages, microbatches: t.microbatches, steps: t.steps, maxGradNorm: t.maxGradNorm, nonFinite: t.nonFinite },
    });
    const control = (id: string, body: StepControl) => {
      if (published.has(id)) return false;  // already in the log: decided before a restart
      published.add(id);
      write(id, () => publishDurable(res.js, res.names.stepControl(replica), encodeJson(body), { msgID: id }));
      return true;
    };
    actor.on('*', (cmd: ReplicaCommand) => {
      switch (cmd.type) {
        case 'OPEN_STEP':
          control(`open-${replica}-${cmd.step}`, { type: 'open', step: cmd.step });
          return;
        case 'COMMIT_STEP': {
          losses[replica][cmd.step] = cmd.loss;
          if (cmd.skip) skipped.add(`${replica}.${cmd.step}`);
          const fresh = control(`commit-${replica}-${cmd.step}`, { type: 'commit', step: cmd.step, gradScale: cmd.gradScale, gradNorm: cmd.gradNorm, loss: cmd.loss, ...(cmd.skip ? { skip: true as const } : {}) });
          if (!fresh) return;
          if (cmd.skip) log.warn({ replica, step: cmd.step, grad_norm: cmd.gradNorm, loss: cmd.loss }, 'step skipped: its gradients or loss were not finite (training.nonFinite = skip-step)');
          const stepsDone = losses.reduce((n, l) => n + l.length, 0);  // commits come in step order: no holes
          const tokensPerSecond = (stepsDone * tokensPerStep) / Math.max(elapsedSeconds(), 1e-3);
          nc.publish(res.names.progress, encodeJson({ replica, step: cmd.step, loss: cmd.loss, gradNorm: cmd.gradNorm, tokensPerSecond, steps: t.steps }));
          if (replica === 0) {
            const live = liveMetrics({ counters, stages: t.stages, microbatches: t.microbatches, model: config.model, seqLen: t.seqLen, step: cmd.step, tokensPerS: tokensPerSecond, recoveries });
            Object.assign(state, { step: cmd.step + 1, loss: cmd.loss, tokens_per_s: tokensPerSecond }, live ? { metrics: live } : {});
            void saveState();
          }
          return;
        }
        case 'NOT_FINITE':
          settle(new Error(`replica ${replica} step ${cmd.step}: the gradient norm is ${cmd.gradNorm} and the loss ${cmd.loss}, not finite` +
            `${cmd.stages.length ? ` (in the gradients of stage${cmd.stages.length > 1 ? 's' : ''} ${cmd.stages.join(', ')})` : ''}: stopping before any weight is updated (training.nonFinite = stop)`));
          return;
        case 'FINISHED':
          coordinator.send({ type: 'REPLICA_FINISHED', replica });
          return;
      }
    });
    actor.start();
    return actor;
  }

  async function dispatch(subject: string, data: Uint8Array, seq: number, headers: MsgHdrs | undefined): Promise<void> {
    if (!subject.startsWith(`caravan.${o.run}.report.`)) return;
    let msg: StageReport;
    try {
      msg = decodeStageReport(data, `stage report (control log seq ${seq})`);
    } catch (err) {
      log.warn({ seq, err: (err as Error).message }, 'unreadable report skipped');
      return;
    }
    const replica = replicas[msg.replica];
    if (!replica) return;
    // A report counts only if the holder of the slot its subject names signed it, under the generation it claims.
    const [sr, ss] = subject.split('.').slice(-2).map(Number);
    const signed = await signers.check({ kind: 'report', subject, body: data, header: headers?.get(SIGNATURE_HEADER), replica: sr, stage: ss });
    if (!signed.ok || msg.replica !== sr || msg.stage !== ss || msg.generation !== signed.generation) {
      log.warn({ seq, subject, reason: signed.ok ? `the report names replica ${msg.replica} stage ${msg.stage} generation ${msg.generation}` : signed.reason }, 'report refused');
      return;
    }
    if (msg.type === 'checkpoint') { recordCheckpointOf(msg.replica, msg.stage, msg.generation, msg.checkpoint); return; }
    if (msg.type === 'done' || msg.type === 'final') counters.set(`${msg.replica}.${msg.stage}`, msg.counters);
    if (msg.type === 'done') replica.send({ type: 'STAGE_DONE', stage: msg.stage, step: msg.step, sumSquares: msg.sumSquares, loss: msg.loss ?? undefined });
    else if (msg.type === 'stepped') replica.send({ type: 'STAGE_STEPPED', stage: msg.stage, step: msg.step });
    else if (msg.type === 'contribution') bridges?.contributed(msg);
    else if (msg.type === 'final') { finals.set(`${msg.replica}.${msg.stage}`, msg.sha256); maybeFinish(); }
  }

  /** The last sequences of the input streams a holder of (replica, stage) sends to: its activations', its gradients'. */
  async function sentUntil(replica: number, stage: number): Promise<SentUntil> {
    const lastSeq = (s: number) => retryTransient(`input stream of slot ${replica}.${s}`, () =>
      res.jsm.streams.info(res.names.inputStream(replica, s)).then((i) => i.state.last_seq, (err: Error) => { if (/not found/i.test(err.message)) return 0; throw err; }));
    return {
      ...(stage + 1 < t.stages ? { act: await lastSeq(stage + 1) } : {}),
      ...(stage > 0 ? { grad: await lastSeq(stage - 1) } : {}),
    };
  }

  /** Records a checkpoint a holder reported, then drops what it makes unnecessary: the previous state and the inputs before it. */
  function recordCheckpointOf(replica: number, stage: number, generation: number, pointer: CheckpointPointer): void {
    write(`checkpoint of slot ${replica}.${stage}`, async () => {
      const done = await recordReportedCheckpoint(res.kv, replica, stage, generation, pointer);
      if (!done.recorded) { log.debug({ replica, stage, step: pointer.step, why: done.why }, 'checkpoint not recorded'); return; }
      log.debug({ replica, stage, step: pointer.step, object: pointer.object }, 'checkpoint recorded');
      if (done.previous && done.previous.object !== pointer.object) await res.objects.delete(done.previous.object).catch(() => {});
      for (const kind of ['act', 'grad'] as const) {
        const seq = pointer.resume[kind];
        if (seq) await res.jsm.streams.purge(res.names.inputStream(replica, stage), { filter: res.names.edge(kind, replica, stage), seq }).catch(() => {});
      }
    });
  }

  // The control log from its start: what is there already is the history to
  // rebuild (its opens and commits are not written again); after that, live.
  async function followControlLog(): Promise<void> {
    const last = (await retryTransient('control log info', () => res.jsm.streams.info(res.names.controlStream))).state.last_seq;
    const backlog: Array<{ subject: string; data: Uint8Array; seq: number; headers: MsgHdrs | undefined }> = [];
    const name = await openReaderConsumer(res, {
      stream: res.names.controlStream,
      name: res.names.coordinatorConsumer(randomBytes(4).toString('hex')),
      prefix: res.names.coordinatorConsumerPrefix,
      filter: `caravan.${o.run}.>`,
    });
    const consumer = await res.js.consumers.get(res.names.controlStream, name);
    const messages = await consumer.consume({ expires: PULL_EXPIRES_MS });
    const goLive = async () => {
      for (const m of backlog) {
        if (!m.subject.startsWith(`caravan.${o.run}.step.`)) continue;
        try {
          const c = decodeStepControl(m.data);
          published.add(`${c.type}-${m.subject.split('.').pop()}-${c.step}`);
        } catch { /* unreadable: the replica writes it again */ }
      }
      for (let r = 0; r < t.replicas; r++) replicas.push(startReplica(r));
      for (const r of replicas) r.send({ type: 'START' });
      for (const m of backlog) await dispatch(m.subject, m.data, m.seq, m.headers);
      if (backlog.length) log.info({ replayed: backlog.length, steps: losses.map((l) => l.length) }, 'control log replayed');
    };
    if (last === 0) await goLive();
    let live = last === 0;
    stopLog = () => void messages.close().catch(() => {});
    for await (const m of messages) {
      m.ack();
      if (!live) {
        backlog.push({ subject: m.subject, data: m.data, seq: m.seq, headers: m.headers });
        if (m.seq >= last) { live = true; await goLive(); }
        continue;
      }
      await dispatch(m.subject, m.data, m.seq, m.headers);
    }
  }
  let stopLog = () => {};

  function maybeFinish(): void {
    if (finishing || !replicasDone || finals.size < t.stages * t.replicas) return;
    finishing = true;
    void finishRun().then(settle, (err: Error) => settle(err));
  }

  async function finishRun(): Promise<RunSummary> {
    const wall = elapsedSeconds();
    state.status = 'finishing';
    await saveState();
    const ranges = splitLayers(config.model.nLayers, t.stages);
    const hashes: string[] = [];
    for (let r = 0; r < t.replicas; r++) {
      const blobs: Uint8Array[] = [];
      for (const [begin, end] of ranges) {
        const blob = await res.objects.getBlob(res.names.finalState(r, begin, end));
        if (!blob) throw new Error(`final state of replica ${r} layers [${begin}, ${end}) is missing from the object store`);
        const reported = finals.get(`${r}.${blobs.length}`);
        if (sha256Hex(blob) !== reported) {
          throw new Error(`final state of replica ${r} layers [${begin}, ${end}) is not the one its holder reported: it was overwritten in the object store`);
        }
        blobs.push(blob);
      }
      hashes.push(hashStageStates(blobs));
    }
    const dead = (await res.jsm.streams.info(res.names.deadStream)).state.messages;
    // maybeFinish waited for every slot's final report: the counters are the final ones.
    const wire = { frames: 0, f32_bytes: 0, wire_bytes: 0 };
    for (const c of counters.values()) {
      for (const sent of [c.sent_by_kind.act, c.sent_by_kind.grad]) {
        wire.frames += sent.frames;
        wire.f32_bytes += sent.f32_bytes;
        wire.wire_bytes += sent.wire_bytes;
      }
    }
    const tokensPerS = (t.steps * t.replicas * tokensPerStep) / wall;
    const stagesOf0 = Array.from({ length: t.stages }, (_, s) => counters.get(`0.${s}`)!.compute);
    return {
      run: o.run,
      steps: t.steps,
      stages: t.stages,
      replicas: t.replicas,
      losses: losses[0],
      final_loss: losses[0][losses[0].length - 1],
      tokens_per_s: tokensPerS,
      params_sha256: hashes[0],
      params_sha256_by_replica: hashes,
      losses_by_replica: losses,
      wall_seconds: wall,
      dead_letters: dead,
      wire: { ...wire, ratio_vs_f32: wire.wire_bytes > 0 ? wire.f32_bytes / wire.wire_bytes : 0 },
      ...pipelineUse(stagesOf0, t.microbatches),
      devices_by_stage: stagesOf0.map((c) => c.device),
      mfu_pct: mfuPercent(tokensPerS, config.model, t.seqLen, [...counters.values()].map((c) => c.compute.peak_gflops)),
      recoveries: { ...recoveries },
      skipped_steps: [...skipped].map((k) => { const [replica, step] = k.split('.').map(Number); return { replica, step }; }).sort((a, b) => a.replica - b.replica || a.step - b.step),
      ...(t.bridge ? await bridgeSummary() : {}),
    };
  }

  /** Every stored sync, from KV (a restarted coordinator did not see them all), and the outer steps all stages completed. */
  async function bridgeSummary(): Promise<{ outer_steps: number; bridge_syncs: BridgeRecord[] }> {
    const syncs: BridgeRecord[] = [];
    const outers = Math.floor(t.steps / t.bridge!.syncEvery);
    for (let stage = 0; stage < t.stages; stage++) {
      for (let outer = 1; outer <= outers; outer++) {
        const r = await readBridgeRecord(res.kv, res.names.bridgeKey(stage, outer));
        if (r) syncs.push(r);
      }
    }
    const done = Array.from({ length: t.stages }, (_, stage) => syncs.filter((r) => r.stage === stage).length);
    return { outer_steps: Math.min(...done), bridge_syncs: syncs };
  }

  coordinator.start();
  log.info({ slots: t.stages * t.replicas }, restore ? 'coordinator resumed' : 'coordinator waiting for hosts');
  const result = await outcome;
  coordinator.stop();
  bridges?.stop();
  for (const r of replicas) r.stop();
  for (const s of subs) s.unsubscribe();
  stopLog();
  await writes;
  if (result instanceof Error) {
    log.debug({ stack: result.stack }, 'run failed');
    Object.assign(state, { status: 'failed', reason: result.message });
    await saveState();
    await metrics.shutdown();  // the last values go out before the process ends
    nc.publish(res.names.failed, encodeJson({ reason: result.message }));
    throw result;
  }
  await res.kv.put('summary', encodeJson(result));
  state.status = 'finished';
  await saveState();
  await metrics.shutdown();
  nc.publish(res.names.finished, encodeJson(result));
  return result;
}
