// `caravan train` over NATS: an embedded nats-server unless --nats names one,
// then the coordinator and one host per (replica, stage) as child processes,
// exactly as they would run on separate machines. Progress and the summary
// come back over NATS; everything is stopped on exit, also on Ctrl-C.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { RunSummary } from '../../schemas/run-records.ts';
import type { Progress } from '../../schemas/control-messages.ts';
import { REPLACED_EXIT_CODE } from '../host/host-process.ts';
import type { Logger } from '../log.ts';
import { connectToRun } from '../transport/connect.ts';
import { startNatsServer, type NatsServerHandle } from '../nats/nats-server.ts';
import { openRunResources } from '../transport/run-resources.ts';
import { edgeLimits } from '../transport/edge-limits.ts';
import { followRunEvents } from '../transport/run-events.ts';
import { isRunning, spawnCaravan, type CaravanChild } from './caravan-child.ts';

export type { Progress };

export interface DistributedOptions {
  readonly config: RunConfig;
  readonly nats?: string;
  readonly run?: string;
  readonly standbys?: number;
  readonly childLogLevel?: string;
  /** A host killed by a signal is a fault the run recovers from (a standby takes its slot), not the end of the run: for fault tests. */
  readonly hostsMayBeKilled?: boolean;
  /** How long a silent host has before its slot goes to a standby (default the coordinator's, 15 s); hosts beat 5 times as often. */
  readonly heartbeatTimeoutMs?: number;
  /** The hosts' device (default the CPU); with 'cuda' every host uses GPU `gpu`. */
  readonly device?: 'cpu' | 'cuda';
  readonly gpu?: number;
  /**
   * nkey seed files (`caravan creds`): the coordinator's (this process connects with it too) and one per host, in
   * order; hosts beyond the list get fresh keys and no NATS credentials.
   */
  readonly credentials?: { readonly coordinator?: string; readonly hosts?: readonly string[] };
  /**
   * Where host i runs: a command prefix (`ip netns exec <namespace>` for an emulated datacenter), the NATS URL it
   * reaches from there, and its datacenter label. The coordinator's, with `coordinator`. Default: here, `nats`.
   */
  readonly placement?: { readonly coordinator?: ProcessPlacement; readonly host?: (i: number) => ProcessPlacement };
  /** Stage states the run starts from (the coordinator's --from-states). */
  readonly fromStates?: string;
  /**
   * Hosts run this many to a process (`caravan host --count`; default 1): for simulated runs, whose synthetic
   * stages only wait on timers. Hosts sharing a process share its placement's prefix and NATS URL.
   */
  readonly hostsPerProcess?: number;
  /** Datacenter labels for the hosts, given out in turn (default: local-<i>, one each). */
  readonly datacenters?: readonly string[];
  readonly log: Logger;
  readonly onProgress?: (p: Progress) => void;
  /** Called once the run's resources exist, before any process starts (tests inject frames here). */
  readonly onReady?: (info: { url: string; run: string }) => Promise<void> | void;
  /** Called with the summary while the server (embedded or not) is still up: for reading the run's final states. */
  readonly onFinished?: (info: { url: string; run: string; summary: RunSummary }) => Promise<void> | void;
  /** Once the coordinator and the first hosts are started: `addHosts(n)` starts n more (a replica that joins later), ended with the run. */
  readonly onStarted?: (control: { addHosts: (count: number) => void }) => void;
}

export interface ProcessPlacement {
  readonly prefix?: readonly string[];
  readonly nats?: string;
  readonly datacenter?: string;
}

export function newRunId(): string {
  return `run-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
}

export async function trainDistributed(o: DistributedOptions): Promise<RunSummary> {
  const t = o.config.training;
  const run = o.run ?? newRunId();
  let server: NatsServerHandle | undefined;
  const children: CaravanChild[] = [];
  const dir = await mkdtemp(join(tmpdir(), 'caravan-run-'));
  const cleanup = async () => {
    for (const c of children) if (isRunning(c)) c.process.kill('SIGTERM');
    await Promise.all(children.map((c) => c.exited));
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  };
  const onSignal = () => { void cleanup().then(() => process.exit(130)); };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    server = o.nats ? undefined : await startNatsServer();
    const url = o.nats ?? server!.url;
    const nc = await connectToRun(url, `caravan-train-${run}`, run, o.credentials?.coordinator);
    try {
      const res = await openRunResources(nc, run, { limits: edgeLimits(o.config) });
      let settle!: (v: RunSummary | Error) => void;
      const outcome = new Promise<RunSummary | Error>((r) => { settle = r; });
      await followRunEvents(nc, res.names, {
        progress: (p) => o.onProgress?.(p),
        finished: (summary) => settle(summary),
        failed: (f) => settle(new Error(f.reason)),
      });
      await o.onReady?.({ url, run });

      const configFile = join(dir, 'run.json');
      await writeFile(configFile, JSON.stringify({ model: o.config.model, optim: o.config.optim, training: o.config.training }));
      // Replicas that join later (training.bridge.startReplicas) bring their hosts then: addHosts.
      const hosts = t.stages * (t.bridge?.startReplicas ?? t.replicas) + (o.standbys ?? 0);
      const spawnChild = (name: string, args: string[], prefix?: readonly string[]) => {
        const echo = Boolean(o.childLogLevel && o.childLogLevel !== 'silent');
        const child = spawnCaravan(name, args, { logLevel: o.childLogLevel, echo, prefix });
        void child.exited.then(({ code, signal }) => {
          if (code !== 0 && code !== null && code !== REPLACED_EXIT_CODE) settle(new Error(`${name} exited with code ${code}: ${child.lastLine()}`));
          else if (signal && signal !== 'SIGTERM' && !(o.hostsMayBeKilled && name.startsWith('host'))) settle(new Error(`${name} was killed by ${signal}`));
        });
        children.push(child);
      };
      const timeout = o.heartbeatTimeoutMs ? ['--heartbeat-timeout', String(o.heartbeatTimeoutMs)] : [];
      const beat = o.heartbeatTimeoutMs ? ['--heartbeat', String(Math.max(50, Math.floor(o.heartbeatTimeoutMs / 5)))] : [];
      const nkey = (file: string | undefined) => (file ? ['--nkey', file] : []);
      const c = o.placement?.coordinator;
      spawnChild('coordinator', ['coordinator', '--nats', c?.nats ?? url, '--run', run, '--config', configFile, ...timeout, ...nkey(o.credentials?.coordinator),
        ...(o.fromStates ? ['--from-states', o.fromStates] : [])], c?.prefix);
      const perProcess = o.hostsPerProcess ?? 1;
      let spawned = 0;
      const spawnHosts = (count: number) => {
        const end = spawned + count;
        for (let first = spawned; first < end; first += perProcess) spawnHostGroup(Array.from({ length: Math.min(perProcess, end - first) }, (_, k) => first + k));
        spawned = end;
      };
      const spawnHostGroup = (group: number[]) => {
        const first = group[0];
        const places = group.map((i) => o.placement?.host?.(i));
        const p = places[0];
        if (places.some((q) => q?.nats !== p?.nats || q?.prefix?.join(' ') !== p?.prefix?.join(' '))) {
          throw new Error(`hosts ${first}–${group[group.length - 1]} share a process but not a place (a namespace or NATS URL of their own): run them one to a process`);
        }
        const labels = group.map((i) => places[i - first]?.datacenter ?? (o.datacenters?.length ? o.datacenters[i % o.datacenters.length] : `local-${i}`));
        const name = group.length === 1 ? `host ${first}` : `hosts ${first}-${group[group.length - 1]}`;
        const keys = group.map((i) => o.credentials?.hosts?.[i]).filter((f) => f !== undefined);
        if (group.length > 1 && keys.length) throw new Error(`hosts ${name.slice(6)} share a process: they cannot have nkey seed files of their own`);
        spawnChild(name, ['host', '--nats', p?.nats ?? url, '--run', run, '--device', o.device ?? 'cpu', '--gpu', String(o.gpu ?? 0), '--datacenter', labels.join(','), ...beat,
          ...(group.length > 1 ? ['--count', String(group.length)] : []), ...nkey(keys[0])], p?.prefix);
      };
      spawnHosts(hosts);
      o.onStarted?.({ addHosts: spawnHosts });
      const result = await outcome;
      if (result instanceof Error) throw result;
      await o.onFinished?.({ url, run, summary: result });
      return result;
    } finally {
      await nc.close().catch(() => {});
    }
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}
