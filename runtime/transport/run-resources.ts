// The JetStream resources of a run, created idempotently by whoever comes
// first: the control log (file-backed, limits retention, fsync'd by the
// server's sync_interval), a bounded dead-letter stream, the run-state KV
// bucket (with history) and the object store for checkpoints and final
// states; and, as the coordinator hands out slots, one input stream per slot
// (its act and grad edges), placed on a NATS server tagged with the holder's
// datacenter where there is one. On a cluster all of them keep `replicas`
// copies (3 by default; placement limits them to the servers with the tag).
import { AckPolicy, DeliverPolicy, DiscardPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient, type JetStreamManager, type Placement, type StreamInfo } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import { retryTransient } from './durable-publish.ts';
import { runNames, type EdgeKind, type RunNames } from './subjects.ts';
import type { EdgeLimits } from './edge-limits.ts';

/** The run's KV bucket: config, state, summary, hosts, slots, Bridge records (its keys: subjects.ts, runStateKeys). */
export type RunStateBucket = KV;

export interface RunResources {
  readonly names: RunNames;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly kv: RunStateBucket;
  readonly objects: ObjectStore;
  /**
   * What input streams are created with (ensureInputStream), and the
   * datacenters no NATS server is tagged with (`dc:<name>`), whose slots'
   * streams go anywhere: learned once each.
   */
  readonly streams: { readonly replicas: number; readonly limits?: EdgeLimits; readonly untagged: Set<string> };
}

/**
 * Pull requests expire after this long and are re-issued. When a NATS server
 * dies, the pulls it held are lost with it; the client notices by missed idle
 * heartbeats (half this period) and pulls again from another server, so this
 * bounds how long a consumer stands still after a server failure (the
 * client's default of 30 s stalled the pipeline for a minute).
 */
export const PULL_EXPIRES_MS = 1000;

// A flood of bad frames cannot fill the disk; once full, new dead letters are refused and the old ones kept (a
// flooder cannot flush the evidence of what it sent), and each writer's subject holds at most its share.
const DEAD_LETTER_LIMIT = 10_000;
const DEAD_LETTERS_PER_WRITER = 1_000;
const DEAD_LETTER_BYTES = 256 * 1024 * 1024;
const CONTROL_MESSAGE_BYTES = 256 * 1024;  // step control and reports are small: anything larger is not one
// Re-sent outputs (a replacement recomputing what its predecessor published)
// are dropped by Nats-Msg-Id within this window; later ones are still
// harmless: receivers ignore frames of steps they have committed.
const DUPLICATE_WINDOW_MS = 10 * 60_000;

async function ensureStream(jsm: JetStreamManager, config: Parameters<JetStreamManager['streams']['add']>[0]): Promise<StreamInfo> {
  try {
    return await jsm.streams.info(config.name!);
  } catch {
    try {
      return await jsm.streams.add(config);
    } catch (err) {
      // Another process may have created it in the meantime.
      return await jsm.streams.info(config.name!).catch(() => { throw err; });
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

/**
 * The resources of a run that must already exist, opened without creating
 * or changing anything: for hosts (whose permissions allow no more) and
 * readers (`caravan status`, `caravan export`), where a mistyped run id is an
 * error, not a new empty run.
 */
export async function openExistingRun(nc: NatsConnection, run: string, url: string): Promise<RunResources> {
  const names = runNames(run);
  const jsm = await jetstreamManager(nc);
  await jsm.streams.info(names.controlStream).catch((err: Error) => {
    if (/permission/i.test(err.message)) throw new Error(`run '${run}' on ${url}: ${err.message} (are these credentials for this run?)`);
    throw new Error(`no run '${run}' on ${url} (its stream ${names.controlStream} does not exist)`);
  });
  const kv = await new Kvm(nc).open(names.kvBucket);
  const objects = await new Objm(nc).open(names.objectBucket);
  return { names, js: jetstream(nc), jsm, kv, objects, streams: { replicas: defaultReplicas(nc), untagged: new Set() } };
}

/**
 * Creates the run's control log, dead letters, bucket and store where they do not exist yet (the coordinator, and
 * `caravan train` before it starts anyone); opens them where they do. `limits` (edge-limits.ts) and `replicas` are
 * kept for the input streams, which ensureInputStream creates slot by slot.
 */
export async function openRunResources(nc: NatsConnection, run: string, options: { replicas?: number; limits?: EdgeLimits } = {}): Promise<RunResources> {
  const names = runNames(run);
  const replicas = options.replicas ?? defaultReplicas(nc);
  const jsm = await jetstreamManager(nc);
  // On a cluster just started (or under load) the meta leader can still count a server offline: "no suitable
  // peers for placement" passes within seconds, so each creation here is retried while it does.
  await retryTransient(`stream ${names.controlStream}`, () => ensureStream(jsm, logStream(names.controlStream, [names.stepControls, names.reports], replicas, { max_msg_size: CONTROL_MESSAGE_BYTES })));
  await retryTransient(`stream ${names.deadStream}`, () => ensureStream(jsm, {
    name: names.deadStream,
    subjects: [names.deadLetters],
    storage: StorageType.File,
    num_replicas: replicas,
    max_msgs: DEAD_LETTER_LIMIT,
    max_bytes: DEAD_LETTER_BYTES,
    max_msgs_per_subject: DEAD_LETTERS_PER_WRITER,
    discard: DiscardPolicy.New,
    discard_new_per_subject: true,
  }));
  // No direct gets: any replica answers one, a follower that is catching up
  // (just restarted, or cut off) included, and a stale slot or host record
  // read there was written back over the newer one (seen on a 3-server
  // cluster after a server kill). Reads go to the stream's leader.
  const kv = await retryTransient(`KV bucket ${names.kvBucket}`, () => new Kvm(nc).create(names.kvBucket, { history: 10, replicas, allow_direct: false }));
  const objects = await retryTransient(`object store ${names.objectBucket}`, () => new Objm(nc).create(names.objectBucket, { replicas }));
  return { names, js: jetstream(nc), jsm, kv, objects, streams: { replicas, untagged: new Set(), ...(options.limits ? { limits: options.limits } : {}) } };
}

/** A log: everything kept (until a stage's checkpoint purges its inputs), re-sends de-duplicated. */
function logStream(name: string, subjects: string[], replicas: number, more: Record<string, unknown>): Parameters<JetStreamManager['streams']['add']>[0] {
  return { name, subjects, storage: StorageType.File, retention: RetentionPolicy.Limits, num_replicas: replicas, duplicate_window: nanos(DUPLICATE_WINDOW_MS), ...more };
}

/**
 * The input stream of slot (replica, stage), created if missing — on the
 * servers tagged `dc:<datacenter>` when some are (a super-cluster with one
 * cluster per datacenter, deploy/nats/supercluster), so its holder reads
 * without crossing a datacenter and each frame crosses at most once, on its
 * way in. Without such a server it goes wherever JetStream puts it. An
 * existing stream stays where it is: a standby in another datacenter reads
 * across (the coordinator prefers one in the same datacenter).
 * Returns where it lives (the cluster's name, if clustered).
 */
export async function ensureInputStream(res: RunResources, replica: number, stage: number, datacenter?: string): Promise<string | undefined> {
  const n = res.names;
  const name = n.inputStream(replica, stage);
  const existing = await res.jsm.streams.info(name).catch(() => undefined);
  if (existing) return existing.cluster?.name;
  const l = res.streams.limits;
  const config = logStream(name, [n.edgeIn('act', replica, stage), n.edgeIn('grad', replica, stage)], res.streams.replicas,
    l ? { max_msg_size: l.maxFrameBytes, max_msgs_per_subject: l.maxFramesPerEdge, discard: DiscardPolicy.New, discard_new_per_subject: true } : {});
  const tag = datacenter && !res.streams.untagged.has(datacenter) ? `dc:${datacenter}` : undefined;
  if (tag) {
    // As many copies as the datacenter has servers, up to the run's number.
    for (let copies = res.streams.replicas; copies >= 1; copies--) {
      try {
        return (await res.jsm.streams.add({ ...config, num_replicas: copies, placement: { tags: [tag] } as Placement })).cluster?.name;
      } catch (err) {
        const now = await res.jsm.streams.info(name).catch(() => undefined);  // another attempt created it meanwhile
        if (now) return now.cluster?.name;
        const why = (err as Error).message;
        if (!/no suitable peers|insufficient resources/i.test(why)) throw err;
        // No server with the tag at all, or none with room even for one copy: this datacenter's streams go anywhere.
        if (/tags not matched/i.test(why) || copies === 1) {
          res.streams.untagged.add(datacenter!);
          break;
        }
      }
    }
  }
  return (await ensureStream(res.jsm, config)).cluster?.name;
}

export interface ReaderConsumer {
  readonly stream: string;
  readonly name: string;
  readonly prefix: string;
  readonly filter: string;
  readonly startSeq?: number;
  /** Told when a consumer under `name` had another config and was replaced (a peer made it, or changed it). */
  readonly replaced?: (why: string) => void;
}

/**
 * A durable pull consumer of one reader — a slot's holder on an edge or on
 * its step control, or the coordinator on the control log — starting at
 * `startSeq` (just after the reader's checkpoint) or at the beginning.
 * Consumers an earlier reader left under the same prefix are deleted, so a
 * replaced host can no longer read or ack; a reader that finds a later
 * generation's consumer was itself replaced and gets an error instead. Durable consumers keep as many
 * copies as their stream, so they outlive the NATS server they started on
 * (an ordered consumer, in memory on one server, stalled for half a minute
 * when that server died). A consumer found under `name` is checked against
 * what this reader would create (filter, deliver policy and start, ack
 * policy) and replaced where it differs.
 */
export function openReaderConsumer(
  res: RunResources, o: ReaderConsumer,
): Promise<string> {
  return retryTransient(`consumer ${o.name} on ${o.stream}`, () => createReaderConsumer(res, o));
}

async function createReaderConsumer(res: RunResources, o: ReaderConsumer): Promise<string> {
  const mine = generationOf(o.name);
  for await (const c of res.jsm.consumers.list(o.stream)) {
    if (!c.name.startsWith(o.prefix) || c.name === o.name) continue;
    const theirs = generationOf(c.name);
    // A later holder's consumer means this reader was replaced before it got here: it must not take the edge back.
    if (mine !== undefined && theirs !== undefined && theirs > mine) {
      throw new ReaderReplacedError(`replaced: consumer ${c.name} of a later holder exists, so ${o.name} is not opened`);
    }
    await res.jsm.consumers.delete(o.stream, c.name).catch(() => {});
  }
  const wanted = {
    durable_name: o.name,
    filter_subject: o.filter,
    ack_policy: AckPolicy.Explicit,
    ...(o.startSeq ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: o.startSeq } : { deliver_policy: DeliverPolicy.All }),
    // Inputs stay unacked until their step commits; a step must not be
    // redelivered while it is still being computed. (A replacement does not
    // wait for redelivery: it reads through a consumer of its own.)
    ack_wait: nanos(10 * 60_000),
    max_ack_pending: 10_000,
  };
  // A consumer already under this name is used only if it is the one this reader would make: a peer may create
  // consumers of these streams, and one made with a broader filter or another start would deliver what the reader
  // must not take. One that differs is replaced (its owner is this reader, whose name it has), and that is said.
  for (let attempt = 0; ; attempt++) {
    const existing = await res.jsm.consumers.info(o.stream, o.name).catch(() => undefined);
    const differs = existing && consumerMismatch(existing.config, wanted);
    if (existing && !differs) return o.name;
    if (attempt >= 3) {
      throw new Error(`consumer ${o.name} on ${o.stream} ${differs ? `keeps being re-created with another ${differs}` : 'cannot be made or read back'}: refusing to read through it`);
    }
    if (differs) {
      o.replaced?.(`consumer ${o.name} on ${o.stream} had ${differs}: deleted and made again`);
      await res.jsm.consumers.delete(o.stream, o.name).catch(() => {});
    }
    await res.jsm.consumers.add(o.stream, wanted).catch((err: Error) => {
      if (!/already (exists|in use)/i.test(err.message)) throw err;  // someone else made one meanwhile: checked on the next pass
    });
  }
}

/** The first field of a consumer's config that is not what the reader asks for, named with both values; undefined when all match. */
export function consumerMismatch(
  have: { filter_subject?: string; filter_subjects?: string[]; deliver_policy: DeliverPolicy; opt_start_seq?: number; ack_policy: AckPolicy },
  want: { filter_subject: string; deliver_policy: DeliverPolicy; opt_start_seq?: number; ack_policy: AckPolicy },
): string | undefined {
  const filters = have.filter_subjects?.length ? have.filter_subjects : have.filter_subject ? [have.filter_subject] : [];
  if (filters.length !== 1 || filters[0] !== want.filter_subject) return `filter ${JSON.stringify(filters)}, not ["${want.filter_subject}"]`;
  if (have.deliver_policy !== want.deliver_policy) return `deliver policy ${have.deliver_policy}, not ${want.deliver_policy}`;
  if ((have.opt_start_seq ?? 0) !== (want.opt_start_seq ?? 0)) return `start sequence ${have.opt_start_seq ?? 'none'}, not ${want.opt_start_seq ?? 'none'}`;
  if (have.ack_policy !== want.ack_policy) return `ack policy ${have.ack_policy}, not ${want.ack_policy}`;
  return undefined;
}

/** A reader found that a later holder of its slot already reads its inputs. */
export class ReaderReplacedError extends Error {
  override name = 'ReaderReplacedError';
}

/** The slot generation a consumer name ends with (`…-g7`), if any. */
function generationOf(name: string): number | undefined {
  const m = /-g(\d+)$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** The edge into (replica, stage), for the slot's holder of this generation. */
export function openEdgeConsumer(
  res: RunResources, kind: EdgeKind, replica: number, stage: number, generation: number, startSeq?: number, replaced?: (why: string) => void,
): Promise<string> {
  return openReaderConsumer(res, {
    stream: res.names.inputStream(replica, stage),
    name: res.names.consumer(kind, replica, stage, generation),
    prefix: res.names.consumerPrefix(kind, replica, stage),
    filter: res.names.edgeIn(kind, replica, stage),
    startSeq,
    replaced,
  });
}
