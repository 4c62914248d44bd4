// One JetStream server per datacenter, joined by gateways into a
// super-cluster: NATS's own way across regions (docs/operations.md says why
// it beat a single hub). Each server is a cluster of one, named after its
// datacenter and tagged `dc:<name>`, so a slot's input stream can be placed
// in its holder's datacenter (transport/run-resources.ts). Clients connect
// to their own datacenter's server; a message for a stream elsewhere crosses
// one gateway. Used by `caravan simulate --wan` and by tests; the shipped
// configs are deploy/nats/supercluster/.
import { awaitPlacement } from './nats-cluster.ts';
import { startNatsServer, type NatsServerHandle } from './nats-server.ts';

export interface SuperclusterDatacenter {
  readonly name: string;
  /** host:port for clients, for the (single-server) cluster's routes, and for gateways from other datacenters. */
  readonly clientListen: string;
  readonly clusterListen: string;
  readonly gatewayListen: string;
  /** How this datacenter's server reaches the other datacenters' gateways: name → `host:port`. */
  readonly gateways: Readonly<Record<string, string>>;
  /** A command to run the server under (`ip netns exec <ns>`). */
  readonly prefix?: readonly string[];
}

export interface SuperclusterHandle {
  /** Each datacenter's client URL, by name. */
  readonly urls: Readonly<Record<string, string>>;
  readonly servers: Readonly<Record<string, NatsServerHandle>>;
  stop(): Promise<void>;
}

/** The config lines that make a server its datacenter's member of the super-cluster. */
export function superclusterConfig(dc: SuperclusterDatacenter): string[] {
  const others = Object.entries(dc.gateways).map(([name, at]) => `    { name: "${name}", urls: ["nats://${at}"] }`);
  return [
    `server_name: ${dc.name}`,
    `server_tags: ["dc:${dc.name}"]`,
    // JetStream across gateways needs every server clustered: a cluster of one routes to itself.
    `cluster { name: "${dc.name}", listen: "${dc.clusterListen}", routes: ["nats-route://${dc.clusterListen}"] }`,
    'gateway {',
    `  name: "${dc.name}"`,
    `  listen: "${dc.gatewayListen}"`,
    // Gateways gossip the addresses they listen on, which other datacenters cannot reach here (only the links can).
    '  connect_retries: 1000000',
    '  gateways: [',
    others.join(',\n'),
    '  ]',
    '}',
  ];
}

// nats-server 2.10.27 now and then forms a fresh JetStream meta group
// without every server and does not heal (docs/operations.md); a fresh start
// of all of them, with nothing stored yet, did.
const START_ATTEMPTS = 3;

export async function startSupercluster(o: { datacenters: readonly SuperclusterDatacenter[]; timeoutMs?: number; log?: (line: string) => void }): Promise<SuperclusterHandle> {
  if (o.datacenters.length < 2) throw new Error(`a super-cluster needs at least 2 datacenters, not ${o.datacenters.length}`);
  const timeoutMs = o.timeoutMs ?? 60_000;
  const log = o.log ?? (() => {});
  for (let attempt = 1; ; attempt++) {
    const servers: Record<string, NatsServerHandle> = {};
    const stop = async () => { await Promise.all(Object.values(servers).map((s) => s.stop())); };
    try {
      for (const dc of o.datacenters) {
        servers[dc.name] = await startNatsServer({ listen: dc.clientListen, prefix: dc.prefix, config: superclusterConfig(dc), timeoutMs });
      }
      const urls = Object.fromEntries(o.datacenters.map((dc) => [dc.name, servers[dc.name].url]));
      // Up once a stream can be placed in every datacenter: the meta group has formed across the gateways and knows every server's tags.
      const probes = o.datacenters.map((dc) => ({ what: `a stream in ${dc.name}`, replicas: 1, placement: { cluster: dc.name, tags: [`dc:${dc.name}`] } }));
      await awaitPlacement(urls[o.datacenters[0].name], probes, Date.now() + timeoutMs / START_ATTEMPTS, log);
      return { urls, servers, stop };
    } catch (err) {
      await stop();
      if (attempt === START_ATTEMPTS) throw err;
      log(`super-cluster start ${attempt} of ${START_ATTEMPTS} failed (${(err as Error).message}); starting it again`);
    }
  }
}
