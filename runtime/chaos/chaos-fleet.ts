// The processes one `caravan chaos` run starts: its NATS server (or 3-node
// cluster), the coordinator and the stage hosts, the last two children of
// this process. The fleet spawns them, tells the exits the run causes (a
// kill it makes, SIGTERM, a replaced host refusing to go on) from one that
// fails the run, and `stop` ends every one of them however the run ended:
// SIGTERM, then SIGKILL for any child still there after 5 s, then the servers.
//
// Hosts run under a supervisor, as systemd's Restart=on-failure or a
// Kubernetes pod would keep them: a host process that was killed, or that
// left because its slot had been handed to another (it was frozen, or too
// slow to heartbeat), is started again after RESTART_DELAY_MS as a fresh
// process, which joins as a standby. So capacity is not used up by faults,
// however many there are.
//
// With `partitions`, each host reaches every NATS server through a link of
// its own (a userspace TCP proxy, link-emulator.ts) that the driver can cut
// and heal: a partition between that host and NATS. While cut, the link
// carries nothing and drops nothing, as a partition that heals before TCP
// gives up; the host's connections stall rather than close.
import type { Logger } from '../log.ts';
import { LinkEmulator } from '../wan/link-emulator.ts';
import { startNatsCluster, type NatsClusterHandle } from '../nats/nats-cluster.ts';
import { startNatsServer, type NatsServerHandle } from '../nats/nats-server.ts';
import { isRunning, spawnCaravan, type CaravanChild } from '../train/caravan-child.ts';

/** How long the supervisor waits before it starts a host again (systemd's RestartSec). */
export const RESTART_DELAY_MS = 1000;

export interface ChaosFleetOptions {
  readonly run: string;
  /** The run's config, for the coordinator: written there before it is spawned. */
  readonly configFile: string;
  readonly heartbeatMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly log: Logger;
  readonly childLogLevel?: string;
  /** CARAVAN_CHAOS_CHEAT for every stage host (whichever first holds the slot cheats; fault-points.ts): `caravan chaos --cheat`. */
  readonly cheat?: string;
  /** Called when a child exits in a way the run did not cause. */
  readonly fail: (err: Error) => void;
  /** The coordinator's --snapshot-every, where given. */
  readonly snapshotEvery?: number;
  /** Each host reaches NATS through links that `partition` can cut (a hop through this process for every byte). */
  readonly partitions?: boolean;
  /** The cluster's routes run through this process, so that `partitionServer` can cut a server off from the others. */
  readonly serverPartitions?: boolean;
}

const OPEN_LINK = { delayMs: 0, jitterMs: 0, rateMbit: 0, up: true };

export class ChaosFleet {
  /** The 3-node cluster, once started (undefined with a single server). */
  cluster: NatsClusterHandle | undefined;
  private single: NatsServerHandle | undefined;
  /** Where the children connect, once NATS is started. */
  url: string | undefined;
  private readonly children: CaravanChild[] = [];
  private readonly expectedExit = new Set<CaravanChild>();
  private hostCount = 0;
  private refusedCount = 0;
  private restartCount = 0;
  private stopping = false;
  private readonly restarts = new Set<NodeJS.Timeout>();
  private current: CaravanChild | undefined;
  /** Each host's links to the servers (with `partitions`). */
  private readonly links = new Map<CaravanChild, LinkEmulator[]>();

  constructor(private readonly o: ChaosFleetOptions) {}

  /** Hosts that came back after they were replaced and refused to go on (exit 3), as designed. */
  get refused(): number {
    return this.refusedCount;
  }

  /** Host processes the supervisor started again after they were killed or left. */
  get restarted(): number {
    return this.restartCount;
  }

  /** The coordinator spawned last. */
  get coordinator(): CaravanChild {
    if (!this.current) throw new Error('chaos: no coordinator was spawned');
    return this.current;
  }

  /** Starts one NATS server or a 3-node cluster; resolves to the URL the children connect to. */
  async startNats(servers: 1 | 3): Promise<string> {
    if (servers === 3) this.cluster = await startNatsCluster({ log: (l) => this.o.log.info(l), partitionable: this.o.serverPartitions });
    else this.single = await startNatsServer();
    this.url = this.cluster?.url ?? this.single!.url;
    return this.url;
  }

  /** The coordinator, or one of the run's NATS servers (the `n`th modulo their number), to signal: a pause is SIGSTOP, then SIGCONT. */
  pausable(process: 'coordinator' | 'nats', n: number): { name: string; signal(sig: NodeJS.Signals): void } {
    if (process === 'coordinator') {
      const coordinator = this.coordinator.process;
      return { name: 'the coordinator', signal: (sig) => { coordinator.kill(sig); } };
    }
    if (this.cluster) {
      const server = this.cluster.servers[n % this.cluster.servers.length];
      return { name: `NATS server ${server.name}`, signal: (sig) => server.signal(sig) };
    }
    const single = this.single!;
    return { name: 'the NATS server', signal: (sig) => { single.process.kill(sig); } };
  }

  spawnCoordinator(): CaravanChild {
    this.current = this.watch(spawnCaravan('coordinator', [
      'coordinator', '--nats', this.natsUrl(), '--run', this.o.run, '--config', this.o.configFile, '--heartbeat-timeout', String(this.o.heartbeatTimeoutMs),
      ...(this.o.snapshotEvery !== undefined ? ['--snapshot-every', String(this.o.snapshotEvery)] : []),
    ], { logLevel: this.o.childLogLevel, echo: this.echo() }));
    return this.current;
  }

  /**
   * A stage host with fault injection on (CARAVAN_CHAOS=1, and the cheat if one is given), in a datacenter of its own;
   * with `partitions`, behind links of its own to the servers.
   */
  async spawnHost(): Promise<void> {
    const i = this.hostCount++;
    // Empty without --cheat: one inherited from this process's environment would make an ordinary chaos run cheat unasked.
    const links = this.o.partitions ? await this.openLinks(`host ${i}`) : undefined;
    // Behind links, only the links: a host that learnt the servers' own addresses would reconnect around a cut.
    const env = { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_CHEAT: this.o.cheat ?? '', ...(links ? { CARAVAN_NATS_DISCOVERY: 'off' } : {}) };
    if (this.stopping) { for (const l of links ?? []) await l.stop(); return; }  // stopped meanwhile: nothing must start after stop()
    const url = links ? links.map((l) => `nats://127.0.0.1:${l.port}`).join(',') : this.natsUrl();
    const host = this.watch(spawnCaravan(`host ${i}`, [
      'host', '--nats', url, '--run', this.o.run, '--datacenter', `local-${i}`, '--heartbeat', String(this.o.heartbeatMs),
    ], { env, logLevel: this.o.childLogLevel, echo: this.echo() }));
    if (links) {
      this.links.set(host, links);
      void host.exited.then(async () => { this.links.delete(host); for (const l of links) await l.stop(); });
    }
    void host.exited.then(({ code }) => {
      // Killed by the run, or replaced and gone (exit 3): the supervisor starts it again. A clean exit (the run
      // ended) or a crash (which fails the run) is not restarted.
      if (this.stopping || !(this.expectedExit.has(host) || code === 3)) return;
      const timer = setTimeout(() => {
        this.restarts.delete(timer);
        if (this.stopping) return;
        this.restartCount++;
        void this.spawnHost().catch((err: Error) => this.o.fail(err));
      }, RESTART_DELAY_MS);
      this.restarts.add(timer);
    });
  }

  /** Cuts (true) or heals (false) every link between a host and NATS; only with `partitions`. */
  partition(host: CaravanChild, cut: boolean): void {
    const links = this.links.get(host);
    if (!links) throw new Error(`chaos: ${host.name} has no links to cut (the fleet was started without partitions)`);
    for (const l of links) l.set({ up: !cut });
  }

  /** The child with process id `pid`, running or not. */
  child(pid: number): CaravanChild | undefined {
    return this.children.find((c) => c.process.pid === pid);
  }

  /** Kills a child with SIGKILL, an exit the run causes, and waits until it has exited. */
  async kill(c: CaravanChild): Promise<void> {
    this.expectedExit.add(c);
    c.process.kill('SIGKILL');
    await c.exited;
  }

  /** Ends every child and server the fleet started, whatever state they are in. */
  async stop(): Promise<void> {
    this.stopping = true;
    for (const timer of this.restarts) clearTimeout(timer);
    this.restarts.clear();
    for (const c of this.children) if (isRunning(c)) c.process.kill('SIGTERM');
    const timer = setTimeout(() => { for (const c of this.children) if (isRunning(c)) c.process.kill('SIGKILL'); }, 5000);
    await Promise.all(this.children.map((c) => c.exited));
    clearTimeout(timer);
    for (const links of this.links.values()) for (const l of links) await l.stop();
    this.links.clear();
    await this.cluster?.stop();
    await this.single?.stop();
  }

  private watch(c: CaravanChild): CaravanChild {
    this.children.push(c);
    void c.exited.then(({ code, signal }) => {
      // Once stopping, every exit is the fleet's own doing (SIGTERM, then SIGKILL for a child still there).
      if (this.stopping || this.expectedExit.has(c) || signal === 'SIGTERM') return;
      if (code === 3) { this.refusedCount++; return; }  // a replaced host refused on its return: as designed
      if (code !== 0) this.o.fail(new Error(`${c.name} exited (${code ?? signal}): ${c.lastLine()}`));
    });
    return c;
  }

  /** A link to each server, open, on a free loopback port. */
  private async openLinks(name: string): Promise<LinkEmulator[]> {
    const servers = this.natsUrl().split(',').map((u) => new URL(u.trim()));
    return Promise.all(servers.map(async (u, k) => {
      const link = new LinkEmulator({
        name: `${name} → server ${k}`, listen: { host: '127.0.0.1', port: 0 }, target: { host: u.hostname, port: Number(u.port) }, forward: OPEN_LINK, backward: OPEN_LINK,
      });
      await link.start();
      return link;
    }));
  }

  private natsUrl(): string {
    if (this.url === undefined) throw new Error('chaos: NATS is not started yet');
    return this.url;
  }

  private echo(): boolean {
    return Boolean(this.o.childLogLevel && this.o.childLogLevel !== 'silent');
  }
}
