// A host's connection to its run: as much of core NATS as a host process
// uses (publishes about now, such as heartbeats and announcements; requests,
// such as registration; subscriptions that may answer, such as fault
// requests), the server's largest message, and the run's JetStream resources.
// The NATS client stays behind it: host code never holds a NatsConnection.
import type { NatsConnection } from '@nats-io/transport-node';
import { connectNats, type NatsCredentials } from './connect.ts';
import { openExistingRun, type RunResources } from './run-resources.ts';
import { survivable, type OnRefused } from './survivable-callback.ts';

/** A message a subscriber got: its body, and the way to answer it where it was a request. */
export interface CoreMessage {
  readonly data: Uint8Array;
  respond(body: Uint8Array): void;
}

export interface CoreSubscription {
  unsubscribe(): void;
}

export interface RunConnection {
  /** Core NATS, at most once: no stream keeps it. */
  publish(subject: string, body: Uint8Array): void;
  /** `onMessage` may throw (a message that does not decode): the message goes to `refused` and the subscription reads on. */
  subscribe(subject: string, onMessage: (m: CoreMessage) => void, refused: OnRefused): CoreSubscription;
  /** The reply's body; rejects where nobody answers within `timeoutMs`. */
  request(subject: string, body: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  /** Settles once the server has everything published so far. */
  flush(): Promise<void>;
  /** The largest message the server takes, in bytes, as it says now. */
  readonly maxPayload: number;
  /** Whether the connection is gone for good (the client gave up reconnecting). */
  isClosed(): boolean;
  /** The run's streams, bucket and store, which must exist already (hosts may not create them). */
  openRun(): Promise<RunResources>;
  /** Drains the connection, or closes it where draining fails. */
  close(): Promise<void>;
}

/** Connects to the servers at `url` (comma-separated for a cluster) for `run`, as the nkey user of `credentials` when given. */
export async function connectToRunAsHost(url: string, name: string, run: string, credentials?: NatsCredentials): Promise<RunConnection> {
  const nc = await connectNats(url, name, { run, ...(credentials ? { credentials } : {}) });
  return runConnection(nc, run, url);
}

function runConnection(nc: NatsConnection, run: string, url: string): RunConnection {
  return {
    publish: (subject, body) => nc.publish(subject, body),
    subscribe: (subject, onMessage, refused) => nc.subscribe(subject, { callback: survivable(refused, (m) => onMessage({ data: m.data, respond: (body) => m.respond(body) })) }),
    request: async (subject, body, timeoutMs) => (await nc.request(subject, body, { timeout: timeoutMs })).data,
    flush: () => nc.flush(),
    get maxPayload() { return nc.info?.max_payload ?? 1024 * 1024; },
    isClosed: () => nc.isClosed(),
    openRun: () => openExistingRun(nc, run, url),
    close: async () => { await nc.drain().catch(() => nc.close()); },
  };
}
