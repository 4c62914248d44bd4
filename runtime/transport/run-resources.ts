// The JetStream resources of a run, created idempotently by whoever comes
// first: the edge stream and the control log (file-backed, limits retention,
// fsync'd by the server's sync_interval), a bounded dead-letter stream, the
// run-state KV bucket (with history) and the object store for checkpoints and
// final states. On a cluster all of them keep `replicas` copies (3 by default).
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import { runNames, type EdgeKind, type RunNames } from './subjects.ts';

export interface RunResources {
  readonly names: RunNames;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly kv: KV;
  readonly objects: ObjectStore;
}

const DEAD_LETTER_LIMIT = 10_000;  // a flood of bad frames cannot fill the disk
// Re-sent outputs (a replacement recomputing what its predecessor published)
// are dropped by Nats-Msg-Id within this window; later ones are still
// harmless: receivers ignore frames of steps they have committed.
const DUPLICATE_WINDOW_MS = 10 * 60_000;

async function ensureStream(jsm: JetStreamManager, config: Parameters<JetStreamManager['streams']['add']>[0]): Promise<void> {
  try {
    await jsm.streams.info(config.name!);
  } catch {
    try {
      await jsm.streams.add(config);
    } catch (err) {
      // Another process may have created it in the meantime.
      await jsm.streams.info(config.name!).catch(() => { throw err; });
    }
  }
}

/** Copies to keep: 1 on a single server; on a cluster, one per server up to 3. */
export function defaultReplicas(nc: NatsConnection): number {
  const info = nc.info;
  if (!info?.cluster) return 1;
  const servers = new Set(info.connect_urls ?? []).size;
  return Math.max(1, Math.min(3, servers));
}

export async function openRunResources(nc: NatsConnection, run: string, options: { replicas?: number } = {}): Promise<RunResources> {
  const names = runNames(run);
  const replicas = options.replicas ?? defaultReplicas(nc);
  const jsm = await jetstreamManager(nc);
  await ensureStream(jsm, {
    name: names.edgeStream,
    subjects: [`caravan.${run}.act.>`, `caravan.${run}.grad.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    num_replicas: replicas,
    duplicate_window: nanos(DUPLICATE_WINDOW_MS),
  });
  await ensureStream(jsm, {
    name: names.controlStream,
    subjects: [`caravan.${run}.step.>`, `caravan.${run}.report.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    num_replicas: replicas,
    duplicate_window: nanos(DUPLICATE_WINDOW_MS),
  });
  await ensureStream(jsm, {
    name: names.deadStream,
    subjects: [`caravan.${run}.dead.>`],
    storage: StorageType.File,
    num_replicas: replicas,
    max_msgs: DEAD_LETTER_LIMIT,
    discard: DiscardPolicy.Old,
  });
  const kv = await new Kvm(nc).create(names.kvBucket, { history: 10, replicas });
  const objects = await new Objm(nc).create(names.objectBucket, { replicas });
  return { names, js: jetstream(nc), jsm, kv, objects };
}

/**
 * The durable pull consumer of one edge into (replica, stage) for one holder
 * of the slot: it starts at `startSeq` (the first input after the holder's
 * checkpoint) or at the beginning, and the consumers of earlier holders are
 * deleted, so a replaced host can no longer read the edge.
 */
export async function openEdgeConsumer(
  res: RunResources, kind: EdgeKind, replica: number, stage: number, generation: number, startSeq?: number,
): Promise<string> {
  const name = res.names.consumer(kind, replica, stage, generation);
  const prefix = res.names.consumerPrefix(kind, replica, stage);
  for await (const c of res.jsm.consumers.list(res.names.edgeStream)) {
    if (c.name.startsWith(prefix) && c.name !== name) await res.jsm.consumers.delete(res.names.edgeStream, c.name).catch(() => {});
  }
  try {
    await res.jsm.consumers.info(res.names.edgeStream, name);
  } catch {
    await res.jsm.consumers.add(res.names.edgeStream, {
      durable_name: name,
      filter_subject: res.names.edge(kind, replica, stage),
      ack_policy: AckPolicy.Explicit,
      ...(startSeq ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq } : { deliver_policy: DeliverPolicy.All }),
      // Inputs stay unacked until their step commits; a step must not be
      // redelivered while it is still being computed. (A replacement does not
      // wait for redelivery: it reads through a consumer of its own.)
      ack_wait: nanos(10 * 60_000),
      max_ack_pending: 10_000,
    });
  }
  return name;
}
