// What each role may publish and subscribe to, per run, as nats-server
// permissions. Everything is scoped by the run id, so credentials for one run
// reach nothing of another: its subjects `caravan.<run>.…`, its streams'
// JetStream API subjects, its KV bucket and object store, and its inboxes
// `_INBOX.<run>.…` (connect.ts sets the prefix), so nobody reads another run's replies.
//
//   coordinator  everything of its run (it creates the streams, writes run
//                state and step control); the Bridges run in its process.
//   host         publishes frames, reports, heartbeats, registration and its
//                dead letters; reads through consumers of the input streams and
//                the control log; reads run state; writes objects
//                (checkpoints, final states, Bridge contributions), which are
//                checked by SHA-256 against signed reports. It cannot write
//                run state or step control, nor create or delete streams.
//   observer     reads run state, objects and dead letters (`caravan status`, `caravan export`).
import { runNames, runInboxPrefix } from '../transport/subjects.ts';

export type Role = 'coordinator' | 'host' | 'observer';
export const ROLES: readonly Role[] = ['coordinator', 'host', 'observer'];

export interface Permissions {
  readonly publish: { readonly allow: readonly string[] };
  readonly subscribe: { readonly allow: readonly string[] };
  /** Replies to requests it received (the coordinator answers registrations). */
  readonly allow_responses?: boolean;
}

/** How many slots a run has: its input streams are one per slot, and each is named in the permissions. */
export interface RunShape {
  readonly stages: number;
  readonly replicas: number;
}

function streamsOf(run: string, shape: RunShape) {
  const n = runNames(run);
  const inputs = Array.from({ length: shape.replicas }, (_, r) => Array.from({ length: shape.stages }, (_, s) => n.inputStream(r, s))).flat();
  return { inputs, control: n.controlStream, dead: n.deadStream, kv: `KV_${n.kvBucket}`, objects: `OBJ_${n.objectBucket}` };
}

/** Reading a stream's messages by sequence or subject. */
const reads = (stream: string) => [`$JS.API.STREAM.INFO.${stream}`, `$JS.API.STREAM.MSG.GET.${stream}`, `$JS.API.DIRECT.GET.${stream}`, `$JS.API.DIRECT.GET.${stream}.>`];
/** Reading through consumers of a stream: creating, finding and deleting them, pulling and acking. */
const consumes = (stream: string) => [
  `$JS.API.CONSUMER.CREATE.${stream}`, `$JS.API.CONSUMER.CREATE.${stream}.>`, `$JS.API.CONSUMER.DURABLE.CREATE.${stream}.*`,
  `$JS.API.CONSUMER.INFO.${stream}.*`, `$JS.API.CONSUMER.DELETE.${stream}.*`, `$JS.API.CONSUMER.LIST.${stream}`, `$JS.API.CONSUMER.NAMES.${stream}`,
  `$JS.API.CONSUMER.MSG.NEXT.${stream}.*`, `$JS.ACK.${stream}.>`,
];

export function permissionsFor(role: Role, run: string, shape: RunShape): Permissions {
  const n = runNames(run);
  const st = streamsOf(run, shape);
  const p = `caravan.${run}`;
  const inbox = `${runInboxPrefix(run)}.>`;
  const all = [...st.inputs, st.control, st.dead, st.kv, st.objects];
  if (role === 'coordinator') {
    return {
      publish: { allow: [`${p}.>`, inbox, '$JS.API.INFO', ...all.flatMap((s) => [`$JS.API.STREAM.*.${s}`, `$JS.API.STREAM.*.*.${s}`, `$JS.API.DIRECT.GET.${s}`, `$JS.API.DIRECT.GET.${s}.>`, ...consumes(s)]), `$KV.${n.kvBucket}.>`, `$O.${n.objectBucket}.>`] },
      subscribe: { allow: [`${p}.>`, inbox] },
      allow_responses: true,
    };
  }
  if (role === 'host') {
    return {
      publish: {
        allow: [
          `${p}.act.>`, `${p}.grad.>`, `${p}.dead.>`, `${p}.report.>`, `${p}.hb.*`, `${p}.ctl.register`, `${p}.ctl.ready`, `${p}.ctl.failed`, `${p}.chaos-reached`,
          '$JS.API.INFO', ...all.map((s) => `$JS.API.STREAM.INFO.${s}`),
          ...st.inputs.flatMap(consumes), ...consumes(st.control),
          ...reads(st.kv), ...consumes(st.kv),
          ...reads(st.objects), ...consumes(st.objects), `$O.${n.objectBucket}.>`,
          // Re-uploading an object under the same name (a replacement's Bridge contribution) purges its old chunks.
          `$JS.API.STREAM.PURGE.${st.objects}`,
        ],
      },
      subscribe: { allow: [inbox, `${p}.ctl.failed`, `${p}.chaos.*`] },
    };
  }
  return {
    publish: { allow: ['$JS.API.INFO', ...all.map((s) => `$JS.API.STREAM.INFO.${s}`), ...reads(st.kv), ...consumes(st.kv), ...reads(st.objects), ...consumes(st.objects), ...reads(st.dead)] },
    subscribe: { allow: [inbox] },
  };
}
