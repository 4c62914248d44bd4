// Every NATS name a run uses, in one place. One subject per pipeline edge and
// direction: activations into stage s of replica r travel on `act.r.s`,
// gradients into it on `grad.r.s`; both are kept in that slot's input stream,
// one stream per slot so that each can live next to the host that reads it
// (run-resources.ts places it in the holder's datacenter). Step control (`step.r`) and stage reports
// (`report.r.s`) are JetStream too: together they are the run's control log,
// which a restarted coordinator and a replacement stage replay.
//
// Nothing else under runtime/ writes a subject, wildcard, stream name or KV
// key as a string: it asks these builders (test/architecture/nats-seam.test.ts).

const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;

export function validateRunId(run: string): string {
  if (!RUN_ID.test(run)) throw new Error(`invalid run id '${run}': use 1-64 letters, digits, '-' or '_'`);
  return run;
}

export type EdgeKind = 'act' | 'grad';

/**
 * Where a run's peers get their replies (JetStream acks, KV reads, pulled frames): `_INBOX.<run>.<nuid>`, and under
 * credentials `_INBOX.<run>.<public key>.<nuid>`, so a peer may read its own replies and no one else's.
 */
export function runInboxPrefix(run: string, key?: string): string {
  return key ? `_INBOX.${validateRunId(run)}.${key}` : `_INBOX.${validateRunId(run)}`;
}

/**
 * Keys of a run's KV bucket. The bucket is the run's own, so its keys carry no
 * run id: `config`, `state`, `summary`, `coordinator` and `control-snapshot` (one record each), `hosts.<id>`,
 * `slot.<r>.<s>`, `signer.<r>.<s>.<generation>` (signers the slot record no longer lists), and the Bridge's `bridge.<s>.<outer>` and `bridge-outer.<s>`.
 */
export const runStateKeys = {
  config: 'config',
  state: 'state',
  summary: 'summary',
  /** The public keys the run's coordinators sign step control with. */
  coordinator: 'coordinator',
  hosts: 'hosts.>',
  slots: 'slot.>',
  bridgeOuters: 'bridge-outer.>',
  host: (host: string) => `hosts.${host}`,
  slot: (replica: number, stage: number) => `slot.${replica}.${stage}`,
  bridge: (stage: number, outer: number) => `bridge.${stage}.${outer}`,
  bridgeOuter: (stage: number) => `bridge-outer.${stage}`,
  /** A slot's signer of `generation` once it left the slot record's list (slots.ts): a replay of old reports still checks them. */
  retiredSigner: (replica: number, stage: number, generation: number) => `signer.${replica}.${stage}.${generation}`,
  /** Where the control log's latest snapshot is (schemas/control-snapshot.ts). */
  controlSnapshot: 'control-snapshot',
  /** The stage a `bridge-outer.<stage>` key names. */
  bridgeOuterStage: (key: string) => Number(key.slice('bridge-outer.'.length)),
  /** What record a key of the bucket holds (a watch of the whole bucket tells them apart by it). */
  kindOf: (key: string): 'config' | 'state' | 'summary' | 'coordinator' | 'host' | 'slot' | 'bridge' | 'bridge-outer' | undefined => {
    if (key === 'config' || key === 'state' || key === 'summary' || key === 'coordinator') return key;
    if (key.startsWith('hosts.')) return 'host';
    if (key.startsWith('slot.')) return 'slot';
    if (/^bridge\.\d+\.\d+$/.test(key)) return 'bridge';
    if (key.startsWith('bridge-outer.')) return 'bridge-outer';
    return undefined;
  },
};

/** What a watch of the whole run-state bucket starts from: every revision it still keeps (@nats-io/kv's include). */
export const KV_WATCH_ALL_HISTORY = 'history';

/**
 * JetStream's API subjects for one stream (a run's input streams, control log,
 * dead letters, and the streams behind its bucket and store), as nats-server
 * permissions name them.
 */
export const jetStreamApi = {
  /** The account's JetStream info: every client asks for it first. */
  info: '$JS.API.INFO',
  streamInfo: (stream: string) => `$JS.API.STREAM.INFO.${stream}`,
  streamPurge: (stream: string) => `$JS.API.STREAM.PURGE.${stream}`,
  /** Every operation on the stream and its messages: create, update, delete, purge, message get and delete. */
  streamAdmin: (stream: string) => [`$JS.API.STREAM.*.${stream}`, `$JS.API.STREAM.*.*.${stream}`],
  directGet: (stream: string) => [`$JS.API.DIRECT.GET.${stream}`, `$JS.API.DIRECT.GET.${stream}.>`],
  /** Reading the stream's messages by sequence or subject. */
  reads: (stream: string) => [`$JS.API.STREAM.INFO.${stream}`, `$JS.API.STREAM.MSG.GET.${stream}`, ...jetStreamApi.directGet(stream)],
  /**
   * Answers to the server's flow control of push consumers on the stream: `$JS.FC.<stream>.<consumer>.<token>`, the
   * subjects nats-server listens on (and names in a stalled consumer's heartbeat). The client's ordered push
   * consumers, behind Object Store reads and KV watches and key listings, set flow control; the server stops
   * delivering once a few MiB are unanswered (2 MiB with nats-server 2.10.27), so a reader that may not answer
   * never gets the rest of an object, and a long-lived watch stops seeing updates.
   */
  flowControlReplies: (stream: string) => `$JS.FC.${stream}.*.*`,
  /**
   * Reading the stream through ordered consumers of one filter subject only (the filter is in the create subject,
   * so a permission can check it): creating them, their info, pulling. Not deleting: a reader so allowed can
   * delete no one's consumer.
   */
  orderedReads: (stream: string, filter: string) => [`$JS.API.CONSUMER.CREATE.${stream}.*.${filter}`, `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`, `$JS.API.CONSUMER.INFO.${stream}.*`],
  /** Reading through consumers of the stream: creating, finding and deleting them, pulling and acking. */
  consumes: (stream: string) => [
    `$JS.API.CONSUMER.CREATE.${stream}`, `$JS.API.CONSUMER.CREATE.${stream}.>`, `$JS.API.CONSUMER.DURABLE.CREATE.${stream}.*`,
    `$JS.API.CONSUMER.INFO.${stream}.*`, `$JS.API.CONSUMER.DELETE.${stream}.*`, `$JS.API.CONSUMER.LIST.${stream}`, `$JS.API.CONSUMER.NAMES.${stream}`,
    `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`, `$JS.ACK.${stream}.>`,
  ],
};

/** What the cluster kits (runtime/nats/) create and delete to learn that a placement works: no run's. */
export const placementProbe = { stream: 'CARAVAN_CLUSTER_PROBE', subject: 'caravan.placement-probe' };

export function runNames(run: string) {
  validateRunId(run);
  const p = `caravan.${run}`;
  const kvBucket = `caravan_${run}`;
  const objectBucket = `caravan_${run}_obj`;
  return {
    run,
    /**
     * The edge of `kind` into (replica, stage) as one sender publishes it: the sender's public key ends the subject,
     * and a host's credentials let it publish under its own key only (permissions.ts). So the edge's per-subject cap
     * counts each sender's frames alone: a flood fills the flooder's subject, never the real sender's.
     */
    edge: (kind: EdgeKind, replica: number, stage: number, sender: string) => `${p}.${kind}.${replica}.${stage}.${sender}`,
    /** Every sender's subject of the edge: what the slot's input stream holds and its holder reads. */
    edgeIn: (kind: EdgeKind, replica: number, stage: number) => `${p}.${kind}.${replica}.${stage}.*`,
    /** A dead letter of slot (replica, stage)'s holder, under the key of the host that writes it (its credentials allow no other). */
    dead: (replica: number, stage: number, writer: string) => `${p}.dead.${replica}.${stage}.${writer}`,
    deadLettersFrom: (writer: string) => `${p}.dead.*.*.${writer}`,
    /** The key a dead letter's subject names as its writer. */
    deadLetterWriter: (subject: string) => subject.slice(`${p}.dead.`.length).split('.')[2],
    stepControl: (replica: number) => `${p}.step.${replica}`,                  // coordinator → a replica's stages (open, commit)
    report: (replica: number, stage: number) => `${p}.report.${replica}.${stage}`,  // stages → coordinator (done, stepped, final)
    /** A host's heartbeat, under its id and its key; the coordinator counts it only if the key is the one the id registered with. */
    heartbeat: (host: string, key: string) => `${p}.hb.${host}.${key}`,
    heartbeats: `${p}.hb.*.*`,
    /** `hb.<host>.<key>`: whose heartbeat, and under which key. */
    heartbeatOf: (subject: string) => { const [host, key] = subject.slice(`${p}.hb.`.length).split('.'); return { host, key }; },
    /** Every subject a host of this key may publish frames on, and its heartbeats. */
    edgesFrom: (kind: EdgeKind, key: string) => `${p}.${kind}.*.*.${key}`,
    heartbeatsFrom: (key: string) => `${p}.hb.*.${key}`,
    register: `${p}.ctl.register`,
    ready: `${p}.ctl.ready`,
    progress: `${p}.ctl.progress`,
    finished: `${p}.ctl.finished`,                           // coordinator → clients: the summary
    failed: `${p}.ctl.failed`,
    leave: `${p}.ctl.leave`,                                 // operator → coordinator: a replica leaves (coordinator credentials)
    resplit: `${p}.ctl.resplit`,                             // operator → coordinator: re-split the running run (coordinator credentials)
    chaos: (host: string) => `${p}.chaos.${host}`,           // fault injection, only where CARAVAN_CHAOS=1
    chaosReached: `${p}.chaos-reached`,
    chaosRequests: `${p}.chaos.*`,
    /** Every reply subject of the run's peers (connect.ts sets the prefix). */
    inboxes: `${runInboxPrefix(run)}.>`,
    /** The reply subjects of the peer with this public key alone (connect.ts sets its prefix under credentials). */
    inboxesOf: (key: string) => `${runInboxPrefix(run, key)}.>`,
    /** The input stream of slot (replica, stage): its `act` and `grad` edges. */
    inputStream: (replica: number, stage: number) => `CARAVAN_${run}_IN_${replica}_${stage}`,
    inputStreamPrefix: `CARAVAN_${run}_IN_`,
    controlStream: `CARAVAN_${run}_CTL`,
    deadStream: `CARAVAN_${run}_DEAD`,
    /** Each holder of a slot reads through its own consumer, so a replaced one cannot take or ack its inputs. */
    consumer: (kind: EdgeKind, replica: number, stage: number, generation: number) => `${kind}-${replica}-${stage}-g${generation}`,
    consumerPrefix: (kind: EdgeKind, replica: number, stage: number) => `${kind}-${replica}-${stage}-g`,
    controlConsumer: (replica: number, stage: number, generation: number) => `step-${replica}-${stage}-g${generation}`,
    controlConsumerPrefix: (replica: number, stage: number) => `step-${replica}-${stage}-g`,
    coordinatorConsumer: (nonce: string) => `coordinator-${nonce}`,
    coordinatorConsumerPrefix: 'coordinator-',
    /** Everything of the run, and the subjects its streams hold. */
    all: `${p}.>`,
    stepControls: `${p}.step.>`,
    reports: `${p}.report.>`,
    deadLetters: `${p}.dead.>`,
    isStepControl: (subject: string) => subject.startsWith(`${p}.step.`),
    isReport: (subject: string) => subject.startsWith(`${p}.report.`),
    /** The slot a report's subject names: `report.<replica>.<stage>`. */
    reportSlot: (subject: string) => { const [replica, stage] = subject.slice(`${p}.report.`.length).split('.').map(Number); return { replica, stage }; },
    /** The replica a step-control subject names: `step.<replica>`. */
    stepControlReplica: (subject: string) => Number(subject.slice(`${p}.step.`.length)),
    kvBucket,
    /** The stream behind the KV bucket, and the subjects its keys are written on. */
    kvStream: `KV_${kvBucket}`,
    kvSubjects: `$KV.${kvBucket}.>`,
    /** KV keys of run state, written by the coordinator alone. */
    configKey: runStateKeys.config,
    stateKey: runStateKeys.state,
    summaryKey: runStateKeys.summary,
    coordinatorKey: runStateKeys.coordinator,
    hostKeys: runStateKeys.hosts,
    slotKeys: runStateKeys.slots,
    bridgeOuterKeys: runStateKeys.bridgeOuters,
    slotKey: runStateKeys.slot,
    hostKey: runStateKeys.host,
    objectBucket,
    /** The stream behind the object store, and the subjects its chunks and metadata are written on. */
    objectStream: `OBJ_${objectBucket}`,
    objectSubjects: `$O.${objectBucket}.>`,
    checkpoint: (replica: number, begin: number, end: number, step: number, generation: number) =>
      `ckpt/replica-${replica}/stage-${begin}-${end}/step-${step}-g${generation}.safetensors`,
    finalState: (replica: number, begin: number, end: number) => `final/replica-${replica}/stage-${begin}-${end}.safetensors`,
    /** The Bridge: a replica's contribution to outer step o of stage s, the result, and its KV record (created once). */
    bridgeContribution: (stage: number, outer: number, replica: number) => `bridge/stage-${stage}/outer-${outer}/replica-${replica}`,
    bridgeTheta: (stage: number, outer: number) => `bridge/stage-${stage}/outer-${outer}/theta`,
    /** A replica's error-feedback residual after outer step o (top-k payloads): what a replacement restores. */
    bridgeResidual: (stage: number, outer: number, replica: number) => `bridge/stage-${stage}/outer-${outer}/residual-${replica}`,
    bridgeMomentum: (stage: number, outer: number) => `bridge/stage-${stage}/outer-${outer}/momentum`,
    bridgeKey: runStateKeys.bridge,
    controlSnapshotKey: runStateKeys.controlSnapshot,
    /** The body of the control log's snapshot as of log sequence `seq`. */
    controlSnapshot: (seq: number) => `control/snapshot-${seq}.json`,
    /** A distributed variable, advanced by compare-and-set: the last outer step of stage s the Bridge completed. */
    bridgeOuterKey: runStateKeys.bridgeOuter,
  };
}

export type RunNames = ReturnType<typeof runNames>;
