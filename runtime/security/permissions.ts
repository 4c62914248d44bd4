// What each role may publish and subscribe to, per run, as nats-server
// permissions. Everything is scoped by the run id, so credentials for one run
// reach nothing of another: its subjects `caravan.<run>.…`, its streams'
// JetStream API subjects, its KV bucket and object store; and a host or
// observer reads only its own inboxes `_INBOX.<run>.<its key>.…` (connect.ts
// sets the prefix), so nobody reads another peer's replies.
//
//   coordinator  everything of its run (it creates the streams, writes run
//                state and step control); the Bridges run in its process.
//   host         publishes frames and heartbeats under its own key only (the
//                subject's last token: a flood fills its own subjects, and it
//                cannot beat for another host), reports, registration and
//                dead letters; reads through consumers of the input streams and
//                the control log; reads run state; writes objects
//                (checkpoints, final states, Bridge contributions), which are
//                checked by SHA-256 against signed reports. It cannot write
//                run state or step control, nor create or delete streams, nor
//                announce the run's failure (`ctl.failed`, which it hears): a
//                holder that cannot go on says so in a signed 'failed' report.
//   observer     reads run state, objects and dead letters (`caravan status`, `caravan export`),
//                and the control log's step control (`caravan dashboard`).
//
// Object Store reads and KV watches and key listings go through the client's
// ordered push consumers, which use flow control: the server pauses delivery
// until the reader answers on `$JS.FC.<stream>.…`. Hosts and observers may
// answer for the KV and object streams, the only ones they read that way (input
// streams and the control log are read by pull consumers, dead letters by
// message get, neither of which has flow control). The coordinator answers
// through allow_responses.
import { jetStreamApi, runNames } from '../transport/subjects.ts';

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
  return { inputs, control: n.controlStream, dead: n.deadStream, kv: n.kvStream, objects: n.objectStream };
}

/** What `role` may do in `run`; a host's publishing is bound to its own public key `key`. */
export function permissionsFor(role: Role, run: string, shape: RunShape, key = ''): Permissions {
  const n = runNames(run);
  const st = streamsOf(run, shape);
  const { reads, consumes, flowControlReplies } = jetStreamApi;
  const all = [...st.inputs, st.control, st.dead, st.kv, st.objects];
  if (role === 'coordinator') {
    return {
      publish: { allow: [n.all, n.inboxes, jetStreamApi.info, ...all.flatMap((s) => [...jetStreamApi.streamAdmin(s), ...jetStreamApi.directGet(s), ...consumes(s)]), n.kvSubjects, n.objectSubjects] },
      subscribe: { allow: [n.all, n.inboxes] },
      allow_responses: true,
    };
  }
  if (!/^U[A-Z2-7]{55}$/.test(key)) throw new Error(`a ${role}'s permissions name its public nkey (U…, 56 characters), got ${JSON.stringify(key)}`);
  if (role === 'host') {
    return {
      publish: {
        allow: [
          n.edgesFrom('act', key), n.edgesFrom('grad', key), n.deadLettersFrom(key), n.reports, n.heartbeatsFrom(key), n.register, n.ready, n.chaosReached,
          jetStreamApi.info, ...all.map(jetStreamApi.streamInfo),
          ...st.inputs.flatMap(consumes), ...consumes(st.control),
          ...reads(st.kv), ...consumes(st.kv), flowControlReplies(st.kv),
          ...reads(st.objects), ...consumes(st.objects), flowControlReplies(st.objects), n.objectSubjects,
          // Re-uploading an object under the same name (a replacement's Bridge contribution) purges its old chunks.
          jetStreamApi.streamPurge(st.objects),
        ],
      },
      subscribe: { allow: [n.inboxesOf(key), n.failed, n.chaosRequests] },
    };
  }
  return {
    publish: {
      allow: [
        jetStreamApi.info, ...all.map(jetStreamApi.streamInfo),
        ...reads(st.kv), ...consumes(st.kv), flowControlReplies(st.kv),
        ...reads(st.objects), ...consumes(st.objects), flowControlReplies(st.objects),
        ...reads(st.dead),
        // `caravan dashboard` reads the step control (each commit's loss) through an ordered consumer of its own:
        // created only with that filter, and never a durable or another's consumer deleted.
        ...jetStreamApi.orderedReads(st.control, n.stepControls),
      ],
    },
    subscribe: { allow: [n.inboxesOf(key)] },
  };
}
