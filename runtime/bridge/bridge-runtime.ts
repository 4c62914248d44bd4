// The Bridges of a run, one per stage, in the coordinator's process: each
// runs a Bridge actor (actors/bridge-machine.ts) and carries out what it
// decides. Stages are independent: each has its own chain of work, so every
// stage's sync downloads, combines and uploads at the same time as the
// others'. A combination is stored before it is announced: the new
// parameters (and momentum) go to the Object Store, then a KV record, created
// once, names them and the replicas it used. Whoever finds the record there
// (a host waiting for it, a restarted coordinator) uses it as it is, so a
// sync is decided exactly once.
import type { KV } from '@nats-io/kv';
import { createActor, type Actor } from 'xstate';
import { bridgeMachine, type BridgeCommand } from '../../actors/bridge-machine.ts';
import { EngineStage, splitLayers } from '../../native/index.ts';
import type { BridgeConfig, RunConfig } from '../../schemas/run-config.ts';
import type { Logger } from '../log.ts';
import { retryTransient } from '../transport/durable-publish.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import type { ContributionReport } from '../../schemas/control-messages.ts';
import { decodeBridgeRecord, decodeCounterRecord, type BridgeRecord } from '../../schemas/run-records.ts';
import type { RunResources } from '../transport/run-resources.ts';
import { decodeParams, encodeParams } from './bridge-payload.ts';
import { outerStep } from './outer-step.ts';

export interface Bridges {
  contributed(c: ContributionReport): void;
  /** The records this process stored or found, by stage. */
  records(): BridgeRecord[];
  stop(): void;
}

export async function readBridgeRecord(kv: KV, key: string): Promise<BridgeRecord | undefined> {
  const e = await kv.get(key);
  return e && e.operation === 'PUT' && e.value.length ? decodeBridgeRecord(e.value, `KV ${key}`) : undefined;
}

/** Advances a counter in KV by compare-and-set: it only moves forward, whoever writes it. */
async function advanceCounter(kv: KV, key: string, to: number): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const e = await kv.get(key);
    const current = e && e.operation === 'PUT' && e.value.length ? decodeCounterRecord(e.value, `KV ${key}`).value : undefined;
    if (current !== undefined && current >= to) return;
    try {
      if (e) await kv.update(key, encodeJson({ value: to }), e.revision);
      else await kv.create(key, encodeJson({ value: to }));
      return;
    } catch {
      // someone else wrote it in between: read again
    }
  }
  throw new Error(`could not advance ${key} to ${to}: too many concurrent writers`);
}

export function startBridges(o: { res: RunResources; config: RunConfig; bridge: BridgeConfig; log: Logger; onError: (err: Error) => void }): Bridges {
  const { res, config, bridge, log } = o;
  const t = config.training;
  const ranges = splitLayers(config.model.nLayers, t.stages);
  const records: BridgeRecord[] = [];
  // Each stage's parameters and momentum after its last sync this process knows.
  const latest = new Map<number, { outer: number; theta: Float32Array; momentum: Float32Array }>();
  const chains = ranges.map(() => Promise.resolve());

  const initials = new Map<number, Float32Array>();
  const initial = (stage: number) => {
    let theta = initials.get(stage);
    if (!theta) {
      const [layerBegin, layerEnd] = ranges[stage];
      // The same initialisation every replica starts from: it depends on the seed and the tensor names alone.
      theta = new EngineStage({ model: config.model, optim: config.optim, layerBegin, layerEnd, seed: t.seed, threads: 1 }).params().slice();
      initials.set(stage, theta);
    }
    return { outer: 0, theta, momentum: new Float32Array(theta.length) };
  };
  const stateAt = async (stage: number, outer: number) => {
    const known = latest.get(stage);
    if (known?.outer === outer) return known;
    if (outer === 0) return initial(stage);
    const record = await readBridgeRecord(res.kv, res.names.bridgeKey(stage, outer));
    if (!record) throw new Error(`stage ${stage}: outer step ${outer} has no record, but ${outer + 1} is being combined`);
    const length = initial(stage).theta.length;
    const get = async (name: string) => {
      const blob = await retryTransient(`bridge object ${name}`, () => res.objects.getBlob(name));
      if (!blob) throw new Error(`bridge object ${name} is missing from the object store`);
      return decodeParams(blob, { length, kind: 'fp32' }, name).values;
    };
    return { outer, theta: await get(record.theta), momentum: record.momentum ? await get(record.momentum) : new Float32Array(length) };
  };

  const combine = async (stage: number, cmd: Extract<BridgeCommand, { type: 'COMBINE' }>, actor: Actor<typeof bridgeMachine>) => {
    const key = res.names.bridgeKey(stage, cmd.outer);
    let record = await readBridgeRecord(res.kv, key);
    if (!record) {
      const before = await stateAt(stage, cmd.outer - 1);
      let bytesRaw = 0, bytesWire = 0;
      const contributions = [];
      for (const replica of cmd.replicas) {
        const name = res.names.bridgeContribution(stage, cmd.outer, replica);
        const blob = await retryTransient(`bridge contribution ${name}`, () => res.objects.getBlob(name));
        if (!blob) throw new Error(`contribution ${name} is missing from the object store`);
        const { kind, values } = decodeParams(blob, { length: before.theta.length, kind: bridge.payload }, name);
        contributions.push({ replica, kind, values });
        bytesRaw += values.byteLength;
        bytesWire += blob.byteLength;
      }
      const next = outerStep({ sync: before.theta, momentum: before.momentum, contributions, outer: bridge.outer, lr: bridge.outerLr, mu: bridge.outerMomentum });
      const theta = res.names.bridgeTheta(stage, cmd.outer);
      await retryTransient(`bridge result ${theta}`, () => res.objects.putBlob({ name: theta }, encodeParams(next.theta, 'fp32').bytes));
      let momentum: string | undefined;
      if (bridge.outer === 'nesterov') {
        momentum = res.names.bridgeMomentum(stage, cmd.outer);
        await retryTransient(`bridge momentum ${momentum}`, () => res.objects.putBlob({ name: momentum! }, encodeParams(next.momentum, 'fp32').bytes));
      }
      const mine: BridgeRecord = {
        stage, outer: cmd.outer, replicas: cmd.replicas, theta, momentum, first_ms: cmd.firstAt, finished_ms: Date.now(), bytes_raw: bytesRaw, bytes_wire: bytesWire,
      };
      try {
        await res.kv.create(key, encodeJson(mine));
        record = mine;
        latest.set(stage, { outer: cmd.outer, theta: next.theta, momentum: next.momentum });
      } catch {
        record = await readBridgeRecord(res.kv, key);  // decided by someone else first: theirs stands
        if (!record) throw new Error(`${key}: could neither create nor read the record`);
      }
      log.info({ stage, outer: cmd.outer, replicas: record.replicas, ms: record.finished_ms - record.first_ms }, 'bridge sync stored');
    }
    records.push(record);
    await advanceCounter(res.kv, res.names.bridgeOuterKey(stage), cmd.outer);
    actor.send({ type: 'COMBINED', outer: cmd.outer });
  };

  const actors = ranges.map((_, stage) => {
    const actor = createActor(bridgeMachine, { input: { stage, replicas: t.replicas, quorum: bridge.quorum, timeoutMs: bridge.timeoutMs } });
    actor.on('*', (cmd: BridgeCommand) => {
      if (cmd.type === 'LATE') {
        log.info({ stage, outer: cmd.outer, replica: cmd.replica }, 'late contribution: the replica adopts the stored sync');
        return;
      }
      chains[stage] = chains[stage].then(() => combine(stage, cmd, actor)).catch((err: Error) => o.onError(new Error(`bridge of stage ${stage}: ${err.message}`)));
    });
    actor.start();
    return actor;
  });
  const ticker = setInterval(() => { for (const a of actors) a.send({ type: 'TICK', now: Date.now() }); }, Math.min(250, Math.max(10, Math.floor(bridge.timeoutMs / 10))));

  return {
    contributed: (c) => actors[c.stage]?.send({ type: 'CONTRIBUTED', outer: c.outer, replica: c.replica, now: Date.now() }),
    records: () => [...records],
    stop: () => {
      clearInterval(ticker);
      for (const a of actors) a.stop();
    },
  };
}
