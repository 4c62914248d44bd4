// Connecting to NATS with an error that names the URL, instead of a stack.
// With credentials (an nkey seed from `caravan creds`) the connection
// authenticates as that user, and its reply subjects live under the run's and
// the user's own inbox prefix, the only inboxes its permissions let it read:
// no peer sees the replies another gets (JetStream acks, pulled frames). TLS comes from the environment, so
// systemd units and pods set it once for every command: CARAVAN_TLS_CA (the
// CA that signed the servers' certificates), and CARAVAN_TLS_CERT with
// CARAVAN_TLS_KEY where servers ask for client certificates. Likewise
// CARAVAN_NATS_DISCOVERY=off keeps a connection to the URLs it was given:
// a host that reaches the servers through a proxy, a NAT or a tunnel must not
// fail over to the addresses the servers advertise, which it cannot reach (or,
// behind the chaos driver's links, could reach around a partition).
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { runInboxPrefix } from './subjects.ts';
import { readHostKey } from '../security/host-key.ts';

export type { NatsConnection };

export interface NatsCredentials {
  /** An nkey user seed ('SU…'). */
  readonly seed: Uint8Array;
  /** Its public key ('U…'): the inbox prefix's last token. */
  readonly publicKey: string;
}

/** `onlyThese`: fail over among the given servers only, never to ones the cluster advertises (as CARAVAN_NATS_DISCOVERY=off). */
export async function connectNats(url: string, name: string, o: { credentials?: NatsCredentials; run?: string; reconnectForever?: boolean; onlyThese?: boolean } = {}): Promise<NatsConnection> {
  // Settings from the environment are checked before connecting: a bad one is no unreachable server.
  const fromEnv = { ...discoveryFromEnv(), ...tlsFromEnv(), ...(o.onlyThese ? { ignoreClusterUpdates: true } : {}) };
  try {
    // A cluster is given as a comma-separated list of its servers' URLs.
    const servers = url.split(',').map((u) => u.trim()).filter(Boolean);
    return await connect({
      // A watcher (`caravan dashboard`) outlives any one server restart; everyone else gives up and says so.
      servers, name, maxReconnectAttempts: o.reconnectForever ? -1 : 10, reconnectTimeWait: 500, timeout: 5000,
      ...(o.credentials ? { authenticator: nkeyAuthenticator(o.credentials.seed) } : {}),
      ...(o.run ? { inboxPrefix: runInboxPrefix(o.run, o.credentials?.publicKey) } : {}),
      ...fromEnv,
    });
  } catch (err) {
    throw new Error(`cannot reach NATS at ${url}: ${(err as Error).message}`);
  }
}

/** A connection for one run: its inbox prefix, and the user of an nkey seed file when one is given. */
export async function connectToRun(url: string, name: string, run: string, nkeyFile?: string, o: { reconnectForever?: boolean } = {}): Promise<NatsConnection> {
  return connectNats(url, name, { run, ...o, ...(nkeyFile ? { credentials: await readHostKey(nkeyFile) } : {}) });
}

function discoveryFromEnv(env = process.env): { ignoreClusterUpdates?: boolean } {
  const value = env.CARAVAN_NATS_DISCOVERY;
  if (value === undefined || value === '' || value === 'on') return {};
  if (value === 'off') return { ignoreClusterUpdates: true };
  throw new Error(`CARAVAN_NATS_DISCOVERY must be 'on' or 'off', not '${value}'`);
}

function tlsFromEnv(env = process.env): { tls?: { caFile?: string; certFile?: string; keyFile?: string } } {
  const { CARAVAN_TLS_CA: caFile, CARAVAN_TLS_CERT: certFile, CARAVAN_TLS_KEY: keyFile } = env;
  if (!caFile && !certFile && !keyFile) return {};
  if (!certFile !== !keyFile) throw new Error('CARAVAN_TLS_CERT and CARAVAN_TLS_KEY go together: set both or neither');
  return { tls: { ...(caFile ? { caFile } : {}), ...(certFile ? { certFile, keyFile } : {}) } };
}
