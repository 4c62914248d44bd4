// One stage's outer steps, carried out: the replicas' contributions are read
// from the Object Store, combined with the parameters (and momentum) the
// previous sync left by the outer optimizer (outer-step.ts), and the result
// is stored before it is announced: the new parameters (and momentum) first,
// then the KV record, created once, that names them and the replicas used.
// Whoever finds the record there already (a restarted coordinator, a
// concurrent one) takes it as it is, so each sync is decided exactly once.
//
// Anyone may write the Object Store. A contribution whose bytes are not the
// ones its replica reported (signed) is refused: logged, named in the
// record's `refused`, and left out, as a late one would be, if the quorum
// still stands without it; otherwise the sync fails, naming the object. The
// replicas then all load the same θ either way. The record carries the
// SHA-256 of θ and the momentum, which hosts and a restarted coordinator check.
import { createComputeStage } from '../compute/compute-stage.ts';
import type { BridgeConfig, RunConfig } from '../../schemas/run-config.ts';
import type { BridgeRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import { decodeParams, encodeParams } from './bridge-payload.ts';
import { outerStep } from './outer-step.ts';
import { sha256Hex } from '../security/message-signature.ts';

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
  readonly stage: number;
  /** The SHA-256 a replica reported of its contribution to an outer step, if it reported one. */
  readonly reported: (outer: number, replica: number) => string | undefined;
}): StageCombiner {
  const { store, config, bridge, stage } = o;
  let initialTheta: Float32Array | undefined;
  // The parameters and momentum after the last sync this process knows.
  let latest: SyncState | undefined;

  const initial = (): SyncState => {
    // The same initialisation every replica starts from: it depends on the seed and the tensor names alone (a
    // synthetic stage's: its stand-in parameters).
    initialTheta ??= createComputeStage(config, { kind: 'cpu' }, stage).stage.params().slice();
    return { outer: 0, theta: initialTheta, momentum: new Float32Array(initialTheta.length) };
  };
  const stateAt = async (outer: number): Promise<SyncState> => {
    if (latest?.outer === outer) return latest;
    if (outer === 0) return initial();
    const record = await store.readRecord(stage, outer);
    if (!record) throw new Error(`stage ${stage}: outer step ${outer} has no record, but ${outer + 1} is being combined`);
    const length = initial().theta.length;
    const get = async (name: string, sha256: string | undefined) => {
      const blob = await store.readObject(name);
      if (!blob) throw new Error(`bridge object ${name} is missing from the object store`);
      const sha = sha256Hex(blob);
      if (sha !== sha256) throw new Error(`bridge object ${name} is not the one the record of outer step ${outer} names (sha256 ${sha.slice(0, 16)}…, recorded ${sha256?.slice(0, 16) ?? 'none'}…): it was overwritten in the object store`);
      return decodeParams(blob, { length, kind: 'fp32' }, name).values;
    };
    const momentum = record.momentum ? await get(record.momentum, record.momentum_sha256) : new Float32Array(length);
    return { outer, theta: await get(record.theta, record.theta_sha256), momentum };
  };

  /** The contributions of `replicas` whose bytes are the ones they reported; the others refused, or the sync failed if too few remain. */
  const contributionsTo = async (outer: number, replicas: number[], length: number) => {
    let bytesRaw = 0, bytesWire = 0;
    const contributions = [], refused: number[] = [];
    for (const replica of replicas) {
      const { name, blob } = await store.readContribution(stage, outer, replica);
      if (!blob) throw new Error(`contribution ${name} is missing from the object store`);
      const sha = sha256Hex(blob), reported = o.reported(outer, replica);
      if (sha !== reported) {
        const left = replicas.length - refused.length - 1;
        const why = `contribution ${name} of replica ${replica} is not the one it reported (sha256 ${sha.slice(0, 16)}…, reported ${reported?.slice(0, 16) ?? 'none'}…): it was overwritten in the object store`;
        if (left < bridge.quorum) throw new Error(`${why}; without it ${left} of the quorum of ${bridge.quorum} remain`);
        o.log.warn({ stage, outer, replica, object: name, sha256: sha, reported }, 'bridge contribution refused: its bytes are not the ones reported');
        refused.push(replica);
        continue;
      }
      const { kind, values } = decodeParams(blob, { length, kind: bridge.payload }, name);
      contributions.push({ replica, kind, values });
      bytesRaw += values.byteLength;
      bytesWire += blob.byteLength;
    }
    return { contributions, refused, bytesRaw, bytesWire };
  };

  const make = async (outer: number, replicas: number[], firstMs: number): Promise<BridgeRecord> => {
    const before = await stateAt(outer - 1);
    const { contributions, refused, bytesRaw, bytesWire } = await contributionsTo(outer, replicas, before.theta.length);
    const next = outerStep({ sync: before.theta, momentum: before.momentum, contributions, outer: bridge.outer, lr: bridge.outerLr, mu: bridge.outerMomentum });
    const thetaBytes = encodeParams(next.theta, 'fp32').bytes;
    const theta = await store.writeTheta(stage, outer, thetaBytes);
    const momentumBytes = bridge.outer === 'nesterov' ? encodeParams(next.momentum, 'fp32').bytes : undefined;
    const momentum = momentumBytes && await store.writeMomentum(stage, outer, momentumBytes);
    const mine: BridgeRecord = {
      stage, outer, replicas: contributions.map((c) => c.replica), ...(refused.length ? { refused } : {}),
      theta, theta_sha256: sha256Hex(thetaBytes), momentum, momentum_sha256: momentumBytes && sha256Hex(momentumBytes),
      first_ms: firstMs, finished_ms: Date.now(), bytes_raw: bytesRaw, bytes_wire: bytesWire,
    };
    const { record, created } = await store.createRecord(mine);
    if (created) latest = { outer, theta: next.theta, momentum: next.momentum };
    o.log.info({ stage, outer, replicas: record.replicas, refused: record.refused, ms: record.finished_ms - record.first_ms }, 'bridge sync stored');
    return record;
  };

  return {
    combine: async (outer, replicas, firstMs) => (await store.readRecord(stage, outer)) ?? make(outer, replicas, firstMs),
  };
}
