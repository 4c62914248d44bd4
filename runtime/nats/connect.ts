// Connecting to NATS with an error that names the URL, instead of a stack.
import { connect, type NatsConnection } from '@nats-io/transport-node';

export type { NatsConnection };

export async function connectNats(url: string, name: string): Promise<NatsConnection> {
  try {
    // A cluster is given as a comma-separated list of its servers' URLs.
    const servers = url.split(',').map((u) => u.trim()).filter(Boolean);
    return await connect({ servers, name, maxReconnectAttempts: 10, reconnectTimeWait: 500, timeout: 5000 });
  } catch (err) {
    throw new Error(`cannot reach NATS at ${url}: ${(err as Error).message}`);
  }
}
