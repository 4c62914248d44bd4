// The JetStream resources of a run, created idempotently by whoever comes
// first: the edge stream (file-backed, limits retention, fsync'd by the
// server's sync_interval), a bounded dead-letter stream, the run-state KV
// bucket (with history) and the object store for stage states.
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import { runNames, type RunNames } from './subjects.ts';

export interface RunResources {
  readonly names: RunNames;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly kv: KV;
  readonly objects: ObjectStore;
}

const DEAD_LETTER_LIMIT = 10_000;  // a flood of bad frames cannot fill the disk

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

export async function openRunResources(nc: NatsConnection, run: string): Promise<RunResources> {
  const names = runNames(run);
  const jsm = await jetstreamManager(nc);
  await ensureStream(jsm, {
    name: names.edgeStream,
    subjects: [`caravan.${run}.act.>`, `caravan.${run}.grad.>`],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    duplicate_window: nanos(10 * 60_000),  // re-sent outputs after a crash are dropped by Nats-Msg-Id
  });
  await ensureStream(jsm, {
    name: names.deadStream,
    subjects: [`caravan.${run}.dead.>`],
    storage: StorageType.File,
    max_msgs: DEAD_LETTER_LIMIT,
    discard: DiscardPolicy.Old,
  });
  const kv = await new Kvm(nc).create(names.kvBucket, { history: 10 });
  const objects = await new Objm(nc).create(names.objectBucket);
  return { names, js: jetstream(nc), jsm, kv, objects };
}

/** A durable pull consumer for one edge into (replica, stage). */
export async function ensureEdgeConsumer(res: RunResources, kind: 'act' | 'grad', replica: number, stage: number): Promise<string> {
  const name = res.names.consumer(kind, replica, stage);
  try {
    await res.jsm.consumers.info(res.names.edgeStream, name);
  } catch {
    await res.jsm.consumers.add(res.names.edgeStream, {
      durable_name: name,
      filter_subject: kind === 'act' ? res.names.act(replica, stage) : res.names.grad(replica, stage),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      // Inputs stay unacked until their step commits; a step must not be
      // redelivered while it is still being computed.
      ack_wait: nanos(10 * 60_000),
      max_ack_pending: 10_000,
    });
  }
  return name;
}
