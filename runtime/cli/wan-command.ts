// `caravan wan up|down|link|status`: datacenters on this machine, as network
// namespaces joined by link emulators (runtime/wan/), for trying a run over
// WAN links before renting them. Needs root (or CAP_NET_ADMIN).
import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { deleteNamespaces, leftovers } from '../wan/namespaces.ts';
import { askWan, defaultWanDir, readWanState, serveWan } from '../wan/wan-daemon.ts';
import { loadWanProfile, planWan, type WanPlan } from '../wan/wan-profile.ts';
import { nonNegativeInt, positiveInt } from './options.ts';

interface PlanFlags { profile: string; datacenters: number; id: string; subnet: number; hub?: string; port: number[]; meshPort?: number[]; hostsPerDc: number }

const portList = (v: string, prev: number[] = []) => {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1 || n > 65535) throw new Error(`--port ${v}: not a TCP port`);
  return [...prev, n];
};

function planOptions(c: Command): Command {
  return c
    .option('--profile <name|file>', 'WAN profile: a name in deploy/wan/ or a YAML file', 'us5')
    .option('--datacenters <n>', "how many of the profile's datacenters, from the first", positiveInt('--datacenters'), 3)
    .option('--hub <name>', 'the datacenter that holds NATS (default: the first)')
    .option('--port <n>', "a port of the hub the others reach through their link (repeatable; default 4222)", portList)
    .option('--mesh-port <n>', 'a port every datacenter reaches on every other through a link of its own (repeatable; 7222 for NATS gateways, one server per datacenter)', portList)
    .option('--hosts-per-dc <n>', 'a namespace per host, this many in each datacenter, each with the profile\'s access rates of its own (0: hosts share their datacenter\'s namespace and rates)', nonNegativeInt('--hosts-per-dc'), 0)
    .option('--subnet <n>', 'addresses are 10.<n>.<datacenter>.x', (v) => Number(v), 77);
}

async function planFrom(flags: PlanFlags): Promise<WanPlan> {
  const profile = await loadWanProfile(flags.profile);
  return planWan(profile, { datacenters: flags.datacenters, id: flags.id, subnet: flags.subnet, hub: flags.hub, ports: flags.port?.length ? flags.port : [4222], mesh: flags.meshPort ?? [], hostsPerDatacenter: flags.hostsPerDc });
}

const idOption = () => new Option('--id <id>', 'prefix of every name this WAN creates (namespaces <id>-<datacenter>); several can coexist').default('cv');
const dirOption = () => new Option('--state-dir <dir>', 'where the daemon keeps its state and socket').default(defaultWanDir());

export function wanCommand(program: Command): void {
  const wan = program.command('wan').description('datacenters on this machine: network namespaces, tc rate limits and userspace WAN links (needs root)');

  planOptions(wan.command('up').description('create the datacenters and their links, held by a background daemon until `caravan wan down`'))
    .addOption(idOption()).addOption(dirOption())
    .option('--json', 'print the plan as one JSON line')
    .action(async (flags: PlanFlags & { stateDir: string; json?: boolean }) => {
      const plan = await planFrom(flags);
      if (await readWanState(flags.stateDir, plan.id)) throw new Error(`WAN '${plan.id}' is up already: 'caravan wan down --id ${plan.id}' first`);
      await mkdir(flags.stateDir, { recursive: true });
      const log = join(flags.stateDir, `${plan.id}.log`);
      const args = ['wan', 'serve', '--profile', flags.profile, '--datacenters', String(flags.datacenters), '--subnet', String(flags.subnet),
        '--id', plan.id, '--state-dir', flags.stateDir, '--hub', plan.hub, ...(flags.port ?? []).flatMap((p) => ['--port', String(p)]), ...(flags.meshPort ?? []).flatMap((p) => ['--mesh-port', String(p)]), '--hosts-per-dc', String(flags.hostsPerDc)];
      const child = spawn(process.execPath, [...process.execArgv, process.argv[1], ...args], { detached: true, stdio: ['ignore', openSync(log, 'a'), openSync(log, 'a')] });
      child.unref();
      const exited = new Promise<number | null>((r) => child.once('exit', r));
      const deadline = Date.now() + 30_000;
      for (;;) {
        if (await readWanState(flags.stateDir, plan.id)) break;
        const code = await Promise.race([exited, new Promise<undefined>((r) => setTimeout(r, 100))]);
        if (code !== undefined) throw new Error(`the WAN daemon exited (${code}) before it was up; its log: ${log}`);
        if (Date.now() > deadline) throw new Error(`the WAN daemon was not up within 30 s; its log: ${log}`);
      }
      if (flags.json) { process.stdout.write(`${JSON.stringify(plan)}\n`); return; }
      process.stdout.write(`WAN '${plan.id}' up (profile ${plan.profile}, hub ${plan.hub}):\n`);
      for (const dc of plan.datacenters) {
        const link = plan.links.find((l) => l.from === dc.name);
        const where = Object.entries(plan.endpoints[dc.name]).map(([p, e]) => `${p} → ${e}`).join(', ');
        process.stdout.write(`  ${dc.name.padEnd(12)} ip netns exec ${dc.namespace} …   hub ports: ${where}${link ? `   one-way ${link.forward.delayMs} ms` : '   (hub)'}\n`);
        for (const h of dc.hosts) process.stdout.write(`  ${''.padEnd(12)}   host: ip netns exec ${h.namespace} … (${h.ip})\n`);
        for (const [to, ports] of Object.entries(plan.peers[dc.name])) {
          for (const [p, e] of Object.entries(ports)) process.stdout.write(`  ${''.padEnd(12)}   ${to}:${p} → ${e}\n`);
        }
      }
    });

  planOptions(wan.command('serve').description('(used by `wan up`) hold a WAN up in the foreground until SIGTERM'))
    .addOption(idOption()).addOption(dirOption())
    .action(async (flags: PlanFlags & { stateDir: string }) => {
      await serveWan(await planFrom(flags), flags.stateDir);
    });

  wan.command('down').description('stop the daemon and remove every namespace, veth and qdisc of the WAN; fails if anything is left')
    .addOption(idOption()).addOption(dirOption())
    .action(async (flags: { id: string; stateDir: string }) => {
      const state = await readWanState(flags.stateDir, flags.id);
      if (state) {
        try { process.kill(state.pid, 'SIGTERM'); } catch { /* already gone */ }
        const deadline = Date.now() + 10_000;
        while (alive(state.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        if (alive(state.pid)) process.kill(state.pid, 'SIGKILL');
      }
      await deleteNamespaces({ id: flags.id });
      const left = await leftovers(flags.id);
      if (state && alive(state.pid)) throw new Error(`the WAN daemon (pid ${state.pid}) is still running`);
      if (left.namespaces.length || left.links.length || left.qdiscs.length) {
        throw new Error(`left behind: namespaces ${left.namespaces.join(' ') || '-'}; links ${left.links.join(' ') || '-'}; qdiscs ${left.qdiscs.length}`);
      }
      await rm(join(flags.stateDir, `${flags.id}.json`), { force: true });
      await rm(join(flags.stateDir, `${flags.id}.sock`), { force: true });
      await rm(join(flags.stateDir, `${flags.id}.log`), { force: true });
      process.stdout.write(`WAN '${flags.id}' down: no namespace, link, qdisc or daemon left\n`);
    });

  wan.command('link').description('change every link from and to a datacenter while it runs (both directions unless --forward/--backward)')
    .requiredOption('--from <datacenter>', 'the datacenter whose links change')
    .option('--delay <ms>', 'one-way delay', (v) => Number(v))
    .option('--jitter <ms>', 'extra delay, uniform in [0, ms]', (v) => Number(v))
    .option('--rate <mbit>', 'rate limit in Mbit/s (0: none)', (v) => Number(v))
    .option('--down', 'partition: deliver nothing until --up')
    .option('--up', 'heal a partition')
    .addOption(idOption()).addOption(dirOption())
    .action(async (flags: { from: string; delay?: number; jitter?: number; rate?: number; down?: boolean; up?: boolean; id: string; stateDir: string }) => {
      const state = await readWanState(flags.stateDir, flags.id);
      if (!state) throw new Error(`WAN '${flags.id}' is not up ('caravan wan up')`);
      for (const [name, v] of [['--delay', flags.delay], ['--jitter', flags.jitter], ['--rate', flags.rate]] as const) {
        if (v !== undefined && !(Number.isFinite(v) && v >= 0)) throw new Error(`${name} must be a number >= 0`);
      }
      if (flags.down && flags.up) throw new Error('--down and --up together');
      const change = { ...(flags.delay !== undefined ? { delayMs: flags.delay } : {}), ...(flags.jitter !== undefined ? { jitterMs: flags.jitter } : {}), ...(flags.rate !== undefined ? { rateMbit: flags.rate } : {}), ...(flags.down ? { up: false } : flags.up ? { up: true } : {}) };
      const reply = await askWan(state, { op: 'set', datacenter: flags.from, change });
      if (!reply.ok) throw new Error(reply.error);
      process.stdout.write(`${JSON.stringify(reply.links)}\n`);
    });

  wan.command('status').description('the WAN\'s datacenters and each link\'s current settings')
    .addOption(idOption()).addOption(dirOption())
    .action(async (flags: { id: string; stateDir: string }) => {
      const state = await readWanState(flags.stateDir, flags.id);
      if (!state) throw new Error(`WAN '${flags.id}' is not up ('caravan wan up')`);
      const reply = await askWan(state, { op: 'links' });
      process.stdout.write(`${JSON.stringify({ id: state.plan.id, pid: state.pid, hub: state.plan.hub, datacenters: state.plan.datacenters, endpoints: state.plan.endpoints, peers: state.plan.peers, links: reply.links })}\n`);
    });
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}
