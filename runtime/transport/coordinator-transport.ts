// Everything the coordinator's process does over NATS, opened once: a
// connection for the run (its inbox prefix, its nkey user when given), the
// run's JetStream resources created where missing, and the typed handles the
// coordinator and its Bridges work through. Nothing outside runtime/transport
// sees the connection, a stream or a bucket.
import type { EdgeLimits } from './edge-limits.ts';
import { bridgeStore, type BridgeStore } from './bridge-store.ts';
import { connectToRun } from './connect.ts';
import { newHostKey, readHostKey } from '../security/host-key.ts';
import { controlLog, type ControlLog } from './control-log.ts';
import { watchLink, type LinkWatch } from './link-watch.ts';
import { addCoordinatorKey } from './coordinator-record.ts';
import { coordinatorChannel, type CoordinatorChannel } from './coordinator-channel.ts';
import { openRunResources } from './run-resources.ts';
import { runResults, type RunResults } from './run-results.ts';
import { runStateStore, type RunStateStore } from './run-state-store.ts';
import { slotEvidence, type SlotEvidence } from './slot-evidence.ts';
import { slotStore, type SlotStore } from './slot-store.ts';
import { runNames } from './subjects.ts';

export interface CoordinatorTransport {
  readonly runState: RunStateStore;
  readonly slots: SlotStore;
  /** What audits read back: a slot's stored inputs, a checkpoint's state. */
  readonly evidence: SlotEvidence;
  readonly controlLog: ControlLog;
  readonly bridges: BridgeStore;
  readonly results: RunResults;
  readonly channel: CoordinatorChannel;
  /** Pings the server; `changed` hears when the link goes silent for `silentMs` and when it answers again (link-watch.ts). */
  watchLink(o: { periodMs: number; silentMs: number; changed: (up: boolean) => void }): LinkWatch;
  /** Drains the connection: what was published goes out first. */
  close(): Promise<void>;
}

export async function openCoordinatorTransport(o: {
  readonly url: string; readonly run: string; readonly nkey?: string; readonly streamReplicas?: number; readonly limits: EdgeLimits;
  /** Runs this one goes on from (live re-splits): its progress is announced on theirs too, where `caravan train` follows. */
  readonly predecessors?: readonly string[];
}): Promise<CoordinatorTransport> {
  const nc = await connectToRun(o.url, `caravan-coordinator-${o.run}`, o.run, o.nkey);
  const res = await openRunResources(nc, o.run, { replicas: o.streamReplicas, limits: o.limits });
  // Step control is signed: with the coordinator's seed where it has one, else with a key of this process's own.
  const key = o.nkey ? await readHostKey(o.nkey) : newHostKey();
  const signer = { key, index: await addCoordinatorKey(res.kv, key.publicKey) };
  return {
    runState: runStateStore(res.kv, res.names),
    slots: slotStore(res),
    evidence: slotEvidence(res),
    controlLog: controlLog(res, signer),
    bridges: bridgeStore(res),
    results: runResults(res),
    channel: coordinatorChannel(nc, res.names, (o.predecessors ?? []).map((r) => runNames(r))),
    watchLink: (w) => watchLink(nc, w),
    close: () => nc.drain().catch(() => nc.close()),
  };
}
