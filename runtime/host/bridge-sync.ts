// A stage's side of the Bridge: every syncEvery steps it puts its
// contribution (its parameters, its pseudo-gradient in MX int8, or the top-k
// of its pseudo-gradient plus its error-feedback residual) in the Object
// Store, reports it, waits for the stage's outer step to be stored, and
// loads the result: the same parameters in every replica. AdamW's moments
// stay the replica's own (DiLoCo's inner optimizer). A replacement replaying
// a step whose sync is stored loads it without waiting, so its weights come
// out as the first holder's did; the residual, state outside the weights,
// is stored at every sync so that a restore finds it.
//
// Anyone may write the Object Store, so every object is vouched for by a
// SHA-256 in something only its writer could have written: the contribution
// report (signed) for the Bridge, the Bridge's KV record for θ, and the
// checkpoint pointer (signed, recorded by the coordinator) for the residual.
// A load whose bytes differ fails the stage, naming the object: a
// replacement would meet the same bytes.
import type { BridgeConfig } from '../../schemas/run-config.ts';
import { decodeParams, encodeParams, topK } from '../bridge/bridge-payload.ts';
import { readBridgeRecord } from '../bridge/bridge-runtime.ts';
import type { BridgeRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { RunResources } from '../transport/run-resources.ts';
import type { StateObjects } from '../transport/state-objects.ts';
import type { ComputeStage } from '../compute/compute-stage.ts';
import { sha256Hex } from '../security/message-signature.ts';

const POLL_MS = 50;

export class StageSync {
  // θ at the last sync, for the pseudo-gradient (not for fp32 payloads).
  private thetaSync: Float32Array | undefined;
  // What earlier top-k syncs left out of this replica's pseudo-gradients.
  private residual: Float32Array | undefined;
  // SHA-256 of the residual's object as stored at the last sync (undefined before the first).
  private residualSha: string | undefined;

  constructor(private readonly o: {
    readonly res: RunResources;
    readonly objects: StateObjects;
    readonly bridge: BridgeConfig;
    readonly replica: number;
    readonly stage: number;
    readonly engine: Pick<ComputeStage, 'params' | 'setParams' | 'paramCount'>;
    readonly log: Logger;
    readonly stopped: () => boolean;
    readonly report: (body: Record<string, unknown> & { type: 'contribution'; step: number; outer: number }) => Promise<void>;
    /** Chaos: reached once the contribution is reported and before the outer step is stored (fault-points.ts). */
    readonly reported?: () => Promise<void>;
  }) {
    // Called before a checkpoint is loaded: the engine holds the initial weights.
    if (o.bridge.payload !== 'fp32') this.thetaSync = o.engine.params().slice();
    if (o.bridge.payload === 'topk') this.residual = new Float32Array(this.thetaSync!.length);
  }

  /** Whether the Bridge syncs after `step` (0-based): after every syncEvery steps. */
  syncsAfter(step: number): boolean {
    return (step + 1) % this.o.bridge.syncEvery === 0;
  }

  /** SHA-256 of the residual as stored at the last sync, for a checkpoint's pointer (top-k payloads, after the first sync). */
  residualSha256(): string | undefined {
    return this.residualSha;
  }

  /** After a restore at `step`: θ at the last sync (and the residual, checked against the checkpoint's `residualSha256`), from the Object Store. */
  async restored(step: number, residualSha256: string | undefined): Promise<void> {
    const { res, stage, replica, bridge } = this.o;
    const outer = Math.floor((step + 1) / bridge.syncEvery);
    if (bridge.payload === 'fp32' || outer === 0) return;
    const record = await readBridgeRecord(res.kv, res.names.bridgeKey(stage, outer));
    if (!record) throw new Error(`stage ${stage}: the checkpoint at step ${step} follows outer step ${outer}, which has no record`);
    this.thetaSync = await this.download(record.theta, record.theta_sha256, `the result of outer step ${outer}`);
    if (bridge.payload === 'topk') {
      const name = res.names.bridgeResidual(stage, outer, replica);
      if (!residualSha256) throw new Error(`replica ${replica} stage ${stage}: the checkpoint at step ${step} records no digest of its residual ${name}: it cannot be trusted`);
      this.residual = await this.download(name, residualSha256, `the residual the checkpoint at step ${step} recorded`);
      this.residualSha = residualSha256;
    }
  }

  /** The sync after `step`: contribute unless it is already stored, wait for it, load it. */
  async sync(step: number): Promise<BridgeRecord> {
    const { res, stage, replica, engine, bridge } = this.o;
    const outer = (step + 1) / bridge.syncEvery;
    const key = res.names.bridgeKey(stage, outer);
    let record = await readBridgeRecord(res.kv, key);
    // What this replica sends, computed whether or not it is sent: a replacement replaying
    // a stored sync must end with the residual the first holder had.
    const theta = engine.params();
    let values = theta;
    let residual: Float32Array | undefined;
    let residualSha: string | undefined;
    if (bridge.payload !== 'fp32') {
      values = new Float32Array(theta.length);
      for (let i = 0; i < theta.length; i++) values[i] = this.thetaSync![i] - theta[i];
    }
    if (bridge.payload === 'topk') {
      for (let i = 0; i < values.length; i++) values[i] += this.residual![i];
      residual = values.slice();
      for (const i of topK(values, bridge.topkFraction).indices) residual[i] = 0;
      const name = res.names.bridgeResidual(stage, outer, replica);
      const bytes = encodeParams(residual, 'fp32').bytes;
      await this.o.objects.put(name, bytes, 'bridge residual');
      residualSha = sha256Hex(bytes);
    }
    if (!record) {
      const { bytes, rawBytes } = encodeParams(values, bridge.payload, bridge.topkFraction);
      const object = res.names.bridgeContribution(stage, outer, replica);
      await this.o.objects.put(object, bytes, 'bridge contribution');
      await this.o.report({ type: 'contribution', step, outer, object, bytes_raw: rawBytes, bytes_wire: bytes.byteLength, sha256: sha256Hex(bytes) });
      await this.o.reported?.();
      const waiting = performance.now();
      while (!(record = await readBridgeRecord(res.kv, key))) {
        if (this.o.stopped()) throw new Error(`stopped while waiting for outer step ${outer} of stage ${stage}`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
      this.o.log.debug({ outer, waited_ms: Math.round(performance.now() - waiting), replicas: record.replicas }, 'bridge sync arrived');
    }
    const next = await this.download(record.theta, record.theta_sha256, `the result of outer step ${outer}`);
    engine.setParams(next);
    if (bridge.payload !== 'fp32') this.thetaSync = next;
    if (residual) { this.residual = residual; this.residualSha = residualSha; }
    return record;
  }

  /** An fp32 blob of the stage's length from the Object Store (a sync's θ, or a residual), refused unless its SHA-256 is `sha256`. */
  private async download(name: string, sha256: string, what: string): Promise<Float32Array> {
    const { replica, stage } = this.o;
    const blob = await this.o.objects.get(name, 'bridge object');
    if (!blob) throw new Error(`bridge object ${name} is missing from the object store`);
    const sha = sha256Hex(blob);
    if (sha !== sha256) {
      throw new Error(`replica ${replica} stage ${stage}: bridge object ${name} is not ${what} (sha256 ${sha.slice(0, 16)}…, recorded ${sha256.slice(0, 16)}…): it was overwritten in the object store`);
    }
    return decodeParams(blob, { length: this.o.engine.paramCount, kind: 'fp32' }, name).values;
  }
}
