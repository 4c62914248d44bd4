// A stage's side of the Bridge: every syncEvery steps it puts its
// contribution (its parameters, or its pseudo-gradient in MX int8) in the
// Object Store, reports it, waits for the stage's outer step to be stored,
// and loads the result: the same parameters in every replica. AdamW's
// moments stay the replica's own (DiLoCo's inner optimizer). A replacement
// replaying a step whose sync is stored loads it without waiting, so its
// weights come out as the first holder's did.
import type { EngineStage } from '../../native/index.ts';
import type { BridgeConfig } from '../../schemas/run-config.ts';
import { decodeParams, encodeParams } from '../bridge/bridge-payload.ts';
import { readBridgeRecord, type BridgeRecord } from '../bridge/bridge-runtime.ts';
import type { Logger } from '../log.ts';
import { retryTransient } from '../transport/durable-publish.ts';
import type { RunResources } from '../transport/run-resources.ts';

const POLL_MS = 50;

export class StageSync {
  // θ at the last sync, for the pseudo-gradient (mxint8 payloads only).
  private thetaSync: Float32Array | undefined;

  constructor(private readonly o: {
    readonly res: RunResources;
    readonly bridge: BridgeConfig;
    readonly replica: number;
    readonly stage: number;
    readonly engine: EngineStage;
    readonly log: Logger;
    readonly stopped: () => boolean;
    readonly report: (body: Record<string, unknown> & { type: 'contribution'; step: number; outer: number }) => Promise<void>;
  }) {
    // Called before a checkpoint is loaded: the engine holds the initial weights.
    if (o.bridge.payload === 'mxint8') this.thetaSync = o.engine.params().slice();
  }

  /** Whether the Bridge syncs after `step` (0-based): after every syncEvery steps. */
  syncsAfter(step: number): boolean {
    return (step + 1) % this.o.bridge.syncEvery === 0;
  }

  /** After a restore at `step`: θ at the last sync, from the Object Store. */
  async restored(step: number): Promise<void> {
    const outer = Math.floor((step + 1) / this.o.bridge.syncEvery);
    if (this.o.bridge.payload !== 'mxint8' || outer === 0) return;
    const record = await readBridgeRecord(this.o.res.kv, this.o.res.names.bridgeKey(this.o.stage, outer));
    if (!record) throw new Error(`stage ${this.o.stage}: the checkpoint at step ${step} follows outer step ${outer}, which has no record`);
    this.thetaSync = await this.download(record);
  }

  /** The sync after `step`: contribute unless it is already stored, wait for it, load it. */
  async sync(step: number): Promise<BridgeRecord> {
    const { res, stage, replica, engine, bridge } = this.o;
    const outer = (step + 1) / bridge.syncEvery;
    const key = res.names.bridgeKey(stage, outer);
    let record = await readBridgeRecord(res.kv, key);
    if (!record) {
      const theta = engine.params();
      let values = theta;
      if (bridge.payload === 'mxint8') {
        values = new Float32Array(theta.length);
        for (let i = 0; i < theta.length; i++) values[i] = this.thetaSync![i] - theta[i];
      }
      const { bytes, rawBytes } = encodeParams(values, bridge.payload);
      const object = res.names.bridgeContribution(stage, outer, replica);
      await retryTransient(`bridge contribution ${object}`, () => res.objects.putBlob({ name: object }, bytes));
      await this.o.report({ type: 'contribution', step, outer, object, bytes_raw: rawBytes, bytes_wire: bytes.byteLength });
      const waiting = performance.now();
      while (!(record = await readBridgeRecord(res.kv, key))) {
        if (this.o.stopped()) throw new Error(`stopped while waiting for outer step ${outer} of stage ${stage}`);
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
      this.o.log.debug({ outer, waited_ms: Math.round(performance.now() - waiting), replicas: record.replicas }, 'bridge sync arrived');
    }
    const next = await this.download(record);
    engine.setParams(next);
    if (bridge.payload === 'mxint8') this.thetaSync = next;
    return record;
  }

  private async download(record: BridgeRecord): Promise<Float32Array> {
    const blob = await retryTransient(`bridge result ${record.theta}`, () => this.o.res.objects.getBlob(record.theta));
    if (!blob) throw new Error(`bridge result ${record.theta} is missing from the object store`);
    const length = this.o.engine.tensors().reduce((n, t) => Math.max(n, t.offset + t.numel), 0);
    return decodeParams(blob, { length, kind: 'fp32' }, record.theta).values;
  }
}
