// `caravan coordinator`: one per run. Writes the run config to KV, admits
// hosts (request/reply on ctl.register, heartbeats on core NATS), runs the
// Coordinator actor for membership and one Replica actor per replica for the
// steps, and keeps the run's state in KV. At the end every stage uploads its
// state to the object store, and the coordinator publishes the summary with a
// hash of the final parameters that does not depend on the split.
import { createHash } from 'node:crypto';
import { createActor, type Actor } from 'xstate';
import { coordinatorMachine, type CoordinatorCommand } from '../../actors/coordinator-machine.ts';
import { replicaMachine, type ReplicaCommand } from '../../actors/replica-machine.ts';
import { decodeSafeTensors, splitLayers } from '../../native/index.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { Logger } from '../log.ts';
import { connectNats } from '../nats/connect.ts';
import { decodeJson, encodeJson } from '../transport/json.ts';
import { openRunResources } from '../transport/run-resources.ts';

export interface CoordinatorOptions {
  readonly nats: string;
  readonly run: string;
  readonly config: RunConfig;
  readonly log: Logger;
  readonly heartbeatTimeoutMs?: number;
}

export interface RunSummary {
  readonly run: string;
  readonly steps: number;
  readonly stages: number;
  readonly replicas: number;
  readonly losses: number[];                 // replica 0
  readonly final_loss: number;
  readonly tokens_per_s: number;
  readonly params_sha256: string;            // replica 0's parameters, in model order
  readonly params_sha256_by_replica: string[];
  readonly losses_by_replica: number[][];
  readonly wall_seconds: number;
  readonly dead_letters: number;
}

export interface RunState {
  status: 'gathering' | 'running' | 'finishing' | 'finished' | 'failed';
  step: number;
  loss: number | null;
  tokens_per_s: number | null;
  reason?: string;
  updated: string;
}

/** sha256 over the parameter tensors of stage states, in order (optimizer moments excluded). */
export function hashStageStates(states: readonly Uint8Array[]): string {
  const h = createHash('sha256');
  for (const [i, bytes] of states.entries()) {
    for (const [name, t] of decodeSafeTensors(bytes, `stage state ${i}`).tensors) {
      if (!name.startsWith('optimizer.')) h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    }
  }
  return h.digest('hex');
}

export async function runCoordinator(o: CoordinatorOptions): Promise<RunSummary> {
  const { config } = o;
  const t = config.training;
  const log = o.log.child({ run: o.run });
  const nc = await connectNats(o.nats, `caravan-coordinator-${o.run}`);
  const res = await openRunResources(nc, o.run);
  await res.kv.put('config', encodeJson(config));
  const state: RunState = { status: 'gathering', step: 0, loss: null, tokens_per_s: null, updated: new Date().toISOString() };
  const saveState = () => res.kv.put('state', encodeJson({ ...state, updated: new Date().toISOString() }));
  await saveState();

  const coordinator = createActor(coordinatorMachine, {
    input: { stages: t.stages, replicas: t.replicas, heartbeatTimeoutMs: o.heartbeatTimeoutMs ?? 15_000, tickMs: 1000 },
  });
  const replicas: Array<Actor<typeof replicaMachine>> = [];
  const tokensPerStep = t.microbatches * t.batchSize * t.seqLen;
  let started = 0;
  let stepsDone = 0;
  const losses: number[][] = Array.from({ length: t.replicas }, () => []);

  let settle!: (v: RunSummary | Error) => void;
  const outcome = new Promise<RunSummary | Error>((r) => { settle = r; });

  const subs = [
    nc.subscribe(res.names.register, {
      callback: (_e, m) => {
        const msg = decodeJson<{ host: string; datacenter: string }>(m.data, 'registration');
        m.respond(encodeJson({ ok: true, run: o.run }));
        log.info({ host: msg.host, datacenter: msg.datacenter }, 'host joined');
        coordinator.send({ type: 'HOST_JOINED', host: msg.host, datacenter: msg.datacenter ?? 'default' });
        void res.kv.put(`hosts.${msg.host}`, encodeJson({ ...msg, status: 'joined', joined: new Date().toISOString() }));
      },
    }),
    nc.subscribe(res.names.heartbeats, {
      callback: (_e, m) => {
        const msg = decodeJson<{ host: string; deadLetters?: number }>(m.data, 'heartbeat');
        coordinator.send({ type: 'HEARTBEAT', host: msg.host });
      },
    }),
    nc.subscribe(res.names.ready, {
      callback: (_e, m) => coordinator.send({ type: 'HOST_READY', host: decodeJson<{ host: string }>(m.data, 'ready').host }),
    }),
    nc.subscribe(res.names.report, {
      callback: (_e, m) => {
        const msg = decodeJson<{ type: string; replica: number; stage: number; step: number; sumSquares?: number[]; loss?: number }>(m.data, 'stage report');
        const replica = replicas[msg.replica];
        if (!replica) return;
        if (msg.type === 'done') replica.send({ type: 'STAGE_DONE', stage: msg.stage, step: msg.step, sumSquares: msg.sumSquares!, loss: msg.loss ?? undefined });
        else if (msg.type === 'stepped') replica.send({ type: 'STAGE_STEPPED', stage: msg.stage, step: msg.step });
      },
    }),
    nc.subscribe(res.names.failed, {
      callback: (_e, m) => settle(new Error(decodeJson<{ reason: string }>(m.data, 'failure').reason)),
    }),
  ];

  coordinator.on('*', (cmd: CoordinatorCommand) => {
    switch (cmd.type) {
      case 'ASSIGN': {
        const [begin, end] = splitLayers(config.model.nLayers, t.stages)[cmd.stage];
        log.info({ host: cmd.host, replica: cmd.replica, stage: cmd.stage, layers: [begin, end] }, 'slot assigned');
        nc.publish(res.names.assign(cmd.host), encodeJson({ type: 'assign', replica: cmd.replica, stage: cmd.stage }));
        void res.kv.put(`hosts.${cmd.host}`, encodeJson({ host: cmd.host, status: 'assigned', replica: cmd.replica, stage: cmd.stage, layers: [begin, end] }));
        return;
      }
      case 'STANDBY':
        nc.publish(res.names.assign(cmd.host), encodeJson({ type: 'standby' }));
        void res.kv.put(`hosts.${cmd.host}`, encodeJson({ host: cmd.host, status: 'standby' }));
        return;
      case 'START_RUN':
        state.status = 'running';
        void saveState();
        started = performance.now();
        for (let r = 0; r < t.replicas; r++) replicas.push(startReplica(r));
        log.info({ stages: t.stages, replicas: t.replicas, steps: t.steps }, 'run started');
        return;
      case 'HOST_LOST':
        log.warn({ host: cmd.host, slot: cmd.slot }, 'host lost (no heartbeat)');
        void res.kv.put(`hosts.${cmd.host}`, encodeJson({ host: cmd.host, status: 'lost', slot: cmd.slot }));
        return;
      case 'RUN_FAILED':
        settle(new Error(cmd.reason));
        return;
      case 'RUN_FINISHED':
        void finishRun().then(settle, (err: Error) => settle(err));
        return;
    }
  });

  function startReplica(replica: number): Actor<typeof replicaMachine> {
    const actor = createActor(replicaMachine, {
      input: { replica, stages: t.stages, microbatches: t.microbatches, steps: t.steps, maxGradNorm: t.maxGradNorm },
    });
    actor.on('*', (cmd: ReplicaCommand) => {
      switch (cmd.type) {
        case 'OPEN_STEP':
          nc.publish(res.names.step(replica), encodeJson({ type: 'open', step: cmd.step }));
          return;
        case 'COMMIT_STEP': {
          nc.publish(res.names.step(replica), encodeJson({ type: 'commit', step: cmd.step, gradScale: cmd.gradScale }));
          losses[replica].push(cmd.loss);
          stepsDone++;
          const seconds = (performance.now() - started) / 1000;
          const tokensPerSecond = (stepsDone * tokensPerStep) / seconds;
          nc.publish(res.names.progress, encodeJson({ replica, step: cmd.step, loss: cmd.loss, gradNorm: cmd.gradNorm, tokensPerSecond, steps: t.steps }));
          if (replica === 0) {
            Object.assign(state, { step: cmd.step + 1, loss: cmd.loss, tokens_per_s: tokensPerSecond });
            void saveState();
          }
          return;
        }
        case 'FINISHED':
          coordinator.send({ type: 'REPLICA_FINISHED', replica });
          return;
      }
    });
    actor.start();
    actor.send({ type: 'START' });
    return actor;
  }

  async function finishRun(): Promise<RunSummary> {
    const wall = (performance.now() - started) / 1000;
    state.status = 'finishing';
    await saveState();
    // Every stage uploads its final state; the hash is over their parameters in model order.
    const expected = t.stages * t.replicas;
    const uploaded = new Set<string>();
    const sub = nc.subscribe(res.names.uploaded);
    nc.publish(res.names.finish, encodeJson({ type: 'finish' }));
    const timer = setTimeout(() => sub.unsubscribe(), 120_000);
    for await (const m of sub) {
      uploaded.add(decodeJson<{ name: string }>(m.data, 'upload').name);
      if (uploaded.size === expected) break;
    }
    clearTimeout(timer);
    sub.unsubscribe();
    if (uploaded.size !== expected) throw new Error(`only ${uploaded.size} of ${expected} stages uploaded their final state`);
    const ranges = splitLayers(config.model.nLayers, t.stages);
    const hashes: string[] = [];
    for (let r = 0; r < t.replicas; r++) {
      const blobs: Uint8Array[] = [];
      for (const [begin, end] of ranges) {
        const blob = await res.objects.getBlob(res.names.finalState(r, begin, end));
        if (!blob) throw new Error(`final state of replica ${r} layers [${begin}, ${end}) is missing from the object store`);
        blobs.push(blob);
      }
      hashes.push(hashStageStates(blobs));
    }
    const dead = (await res.jsm.streams.info(res.names.deadStream)).state.messages;
    const summary: RunSummary = {
      run: o.run,
      steps: t.steps,
      stages: t.stages,
      replicas: t.replicas,
      losses: losses[0],
      final_loss: losses[0][losses[0].length - 1],
      tokens_per_s: (t.steps * t.replicas * tokensPerStep) / wall,
      params_sha256: hashes[0],
      params_sha256_by_replica: hashes,
      losses_by_replica: losses,
      wall_seconds: wall,
      dead_letters: dead,
    };
    await res.kv.put('summary', encodeJson(summary));
    return summary;
  }

  coordinator.start();
  log.info({ slots: t.stages * t.replicas }, 'coordinator waiting for hosts');
  const result = await outcome;
  if (result instanceof Error) {
    Object.assign(state, { status: 'failed', reason: result.message });
    await saveState();
    nc.publish(res.names.failed, encodeJson({ reason: result.message }));
  } else {
    state.status = 'finished';
    await saveState();
    nc.publish(res.names.finished, encodeJson(result));
  }
  coordinator.stop();
  for (const r of replicas) r.stop();
  for (const s of subs) s.unsubscribe();
  await nc.drain().catch(() => nc.close());
  if (result instanceof Error) throw result;
  return result;
}

