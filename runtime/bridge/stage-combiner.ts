// One stage's outer steps, carried out: the replicas' contributions are read
// from the Object Store, combined with the parameters (and momentum) the
// previous sync left by the outer optimizer (outer-step.ts), and the result
// is stored before it is announced: the new parameters (and momentum) first,
// then the KV record, created once, that names them and the replicas used.
// Whoever finds the record there already (a restarted coordinator, a
// concurrent one) takes it as it is, so each sync is decided exactly once.
import { EngineStage } from '../../native/index.ts';
import type { BridgeConfig, RunConfig } from '../../schemas/run-config.ts';
import type { BridgeRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import { decodeParams, encodeParams } from './bridge-payload.ts';
import { outerStep } from './outer-step.ts';

/** What a stage's parameters were after an outer step (0: as every replica started). */
interface SyncState {
  readonly outer: number;
  readonly theta: Float32Array;
  readonly momentum: Float32Array;
}

export interface StageCombiner {
  /** The record of outer step `outer`: found, or made from `replicas`' contributions. `firstMs`: epoch ms of the first. */
  combine(outer: number, replicas: number[], firstMs: number): Promise<BridgeRecord>;
}

export function stageCombiner(o: {
  readonly store: BridgeStore; readonly config: RunConfig; readonly bridge: BridgeConfig; readonly log: Logger;
  readonly stage: number; readonly layers: readonly [number, number];
}): StageCombiner {
  const { store, config, bridge, stage } = o;
  let initialTheta: Float32Array | undefined;
  // The parameters and momentum after the last sync this process knows.
  let latest: SyncState | undefined;

  const initial = (): SyncState => {
    // The same initialisation every replica starts from: it depends on the seed and the tensor names alone.
    initialTheta ??= new EngineStage({ model: config.model, optim: config.optim, layerBegin: o.layers[0], layerEnd: o.layers[1], seed: config.training.seed, threads: 1 }).params().slice();
    return { outer: 0, theta: initialTheta, momentum: new Float32Array(initialTheta.length) };
  };
  const stateAt = async (outer: number): Promise<SyncState> => {
    if (latest?.outer === outer) return latest;
    if (outer === 0) return initial();
    const record = await store.readRecord(stage, outer);
    if (!record) throw new Error(`stage ${stage}: outer step ${outer} has no record, but ${outer + 1} is being combined`);
    const length = initial().theta.length;
    const get = async (name: string) => {
      const blob = await store.readObject(name);
      if (!blob) throw new Error(`bridge object ${name} is missing from the object store`);
      return decodeParams(blob, { length, kind: 'fp32' }, name).values;
    };
    return { outer, theta: await get(record.theta), momentum: record.momentum ? await get(record.momentum) : new Float32Array(length) };
  };

  const make = async (outer: number, replicas: number[], firstMs: number): Promise<BridgeRecord> => {
    const before = await stateAt(outer - 1);
    let bytesRaw = 0, bytesWire = 0;
    const contributions = [];
    for (const replica of replicas) {
      const { name, blob } = await store.readContribution(stage, outer, replica);
      if (!blob) throw new Error(`contribution ${name} is missing from the object store`);
      const { kind, values } = decodeParams(blob, { length: before.theta.length, kind: bridge.payload }, name);
      contributions.push({ replica, kind, values });
      bytesRaw += values.byteLength;
      bytesWire += blob.byteLength;
    }
    const next = outerStep({ sync: before.theta, momentum: before.momentum, contributions, outer: bridge.outer, lr: bridge.outerLr, mu: bridge.outerMomentum });
    const theta = await store.writeTheta(stage, outer, encodeParams(next.theta, 'fp32').bytes);
    const momentum = bridge.outer === 'nesterov' ? await store.writeMomentum(stage, outer, encodeParams(next.momentum, 'fp32').bytes) : undefined;
    const mine: BridgeRecord = {
      stage, outer, replicas, theta, momentum, first_ms: firstMs, finished_ms: Date.now(), bytes_raw: bytesRaw, bytes_wire: bytesWire,
    };
    const { record, created } = await store.createRecord(mine);
    if (created) latest = { outer, theta: next.theta, momentum: next.momentum };
    o.log.info({ stage, outer, replicas: record.replicas, ms: record.finished_ms - record.first_ms }, 'bridge sync stored');
    return record;
  };

  return {
    combine: async (outer, replicas, firstMs) => (await store.readRecord(stage, outer)) ?? make(outer, replicas, firstMs),
  };
}
