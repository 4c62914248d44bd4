// The datacenters of a WAN plan as Linux network namespaces (iproute2 and
// tc; needs root or CAP_NET_ADMIN): each gets a veth pair to this machine's
// namespace, its own /24 on a bridge inside, and tbf rate limits: on both
// ends of that veth where the plan says (the datacenter's upload on the
// inside end's egress, its download on the outside end's), and, where the
// plan has hosts, on each host's own veth to the bridge for what it sends
// out of the datacenter and receives from outside (traffic inside the
// datacenter is not limited). No routes and no forwarding between
// datacenters: the only way from one to another is through a link emulator.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { DATACENTER_BRIDGE, type WanPlan } from './wan-profile.ts';

const run = promisify(execFile);

async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    return (await run(cmd, args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw new Error(`${cmd} is not installed (apt-get install iproute2)`);
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr ?? e.message).trim().split('\n').pop()}`);
  }
}

/** A bucket of about 4 ms at the rate (at least 64 KiB): enough for the timer, small enough to hold the rate. */
const burstBytes = (mbit: number) => String(Math.max(64 * 1024, Math.round((mbit * 1e6 / 8) * 0.004)));

function tbf(mbit: number): string[] {
  return ['root', 'tbf', 'rate', `${mbit}mbit`, 'burst', burstBytes(mbit), 'latency', '100ms'];
}

// The datacenter's own network: not what the profile limits.
const LAN_MBIT = 100_000;

/**
 * Limits only what a device sends to or from `wanIp` (`dst` or `src`), the
 * datacenter's way out: an htb class at the rate takes what the filter
 * matches; everything else (the datacenter's own network) goes to a class
 * too fast to matter. (This kernel has neither netem nor prio.)
 */
async function limitWanTraffic(exec: (args: string[]) => Promise<string>, dev: string, mbit: number, match: 'dst' | 'src', wanIp: string): Promise<void> {
  await exec(['tc', 'qdisc', 'add', 'dev', dev, 'root', 'handle', '1:', 'htb', 'default', '20']);
  await exec(['tc', 'class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:10', 'htb', 'rate', `${mbit}mbit`, 'burst', burstBytes(mbit)]);
  await exec(['tc', 'class', 'add', 'dev', dev, 'parent', '1:', 'classid', '1:20', 'htb', 'rate', `${LAN_MBIT}mbit`, 'burst', burstBytes(LAN_MBIT)]);
  await exec(['tc', 'filter', 'add', 'dev', dev, 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', match, `${wanIp}/32`, 'flowid', '1:10']);
}

export async function createNamespaces(plan: WanPlan): Promise<void> {
  for (const dc of plan.datacenters) {
    const inNs = (args: string[]) => sh('ip', ['netns', 'exec', dc.namespace, ...args]);
    await sh('ip', ['netns', 'add', dc.namespace]);
    await sh('ip', ['link', 'add', dc.vethRoot, 'type', 'veth', 'peer', 'name', dc.vethInside]);
    await sh('ip', ['link', 'set', dc.vethInside, 'netns', dc.namespace]);
    await sh('ip', ['addr', 'add', `${dc.rootIp}/24`, 'dev', dc.vethRoot]);
    await sh('ip', ['link', 'set', dc.vethRoot, 'up']);
    // The datacenter's address is on a bridge, so that its hosts' namespaces can hang on it too.
    await inNs(['ip', 'link', 'add', DATACENTER_BRIDGE, 'type', 'bridge']);
    await inNs(['ip', 'link', 'set', dc.vethInside, 'master', DATACENTER_BRIDGE]);
    await inNs(['ip', 'addr', 'add', `${dc.insideIp}/24`, 'dev', DATACENTER_BRIDGE]);
    await inNs(['ip', 'link', 'set', dc.vethInside, 'up']);
    await inNs(['ip', 'link', 'set', DATACENTER_BRIDGE, 'up']);
    await inNs(['ip', 'link', 'set', 'lo', 'up']);
    if (dc.limited) {
      await inNs(['tc', 'qdisc', 'add', 'dev', dc.vethInside, ...tbf(plan.hostUpMbit)]);
      await sh('tc', ['qdisc', 'add', 'dev', dc.vethRoot, ...tbf(plan.hostDownMbit)]);
    }
    for (const host of dc.hosts) {
      const inHost = (args: string[]) => sh('ip', ['netns', 'exec', host.namespace, ...args]);
      await sh('ip', ['netns', 'add', host.namespace]);
      await sh('ip', ['link', 'add', host.vethBridge, 'type', 'veth', 'peer', 'name', host.vethInside]);
      await sh('ip', ['link', 'set', host.vethInside, 'netns', host.namespace]);
      await sh('ip', ['link', 'set', host.vethBridge, 'netns', dc.namespace]);
      await inNs(['ip', 'link', 'set', host.vethBridge, 'master', DATACENTER_BRIDGE]);
      await inNs(['ip', 'link', 'set', host.vethBridge, 'up']);
      await inHost(['ip', 'addr', 'add', `${host.ip}/24`, 'dev', host.vethInside]);
      await inHost(['ip', 'link', 'set', host.vethInside, 'up']);
      await inHost(['ip', 'link', 'set', 'lo', 'up']);
      // What the host sends out of the datacenter leaves through its own end, what it receives from outside through
      // the bridge's end; both go by the datacenter's outside address, where the links listen.
      await limitWanTraffic(inHost, host.vethInside, plan.hostUpMbit, 'dst', dc.rootIp);
      await limitWanTraffic(inNs, host.vethBridge, plan.hostDownMbit, 'src', dc.rootIp);
    }
  }
}

/** Deletes every namespace and veth of the plan (their qdiscs go with the devices); what is already gone is skipped. */
export async function deleteNamespaces(plan: Pick<WanPlan, 'id'>): Promise<void> {
  const left = await leftovers(plan.id);
  for (const ns of left.namespaces) await sh('ip', ['netns', 'del', ns]).catch(() => {});
  for (const link of left.links) await sh('ip', ['link', 'del', link]).catch(() => {});
}

/** Namespaces and links of this id still on the machine, and qdiscs on those links. */
export async function leftovers(id: string): Promise<{ namespaces: string[]; links: string[]; qdiscs: string[] }> {
  const namespaces = (await sh('ip', ['netns', 'list'])).split('\n').map((l) => l.split(' ')[0]).filter((n) => n.startsWith(`${id}-`));
  // A datacenter's veth end here; a host's pair is here only if its set-up stopped half-way.
  const linkPattern = new RegExp(`^${id}\\d+(h\\d+)?[rnb]$`);
  const links = (await sh('ip', ['-o', 'link', 'show'])).split('\n').map((l) => l.split(':')[1]?.trim().split('@')[0] ?? '').filter((n) => linkPattern.test(n));
  const qdiscs = (await sh('tc', ['qdisc', 'show'])).split('\n').filter((l) => links.some((n) => l.includes(` dev ${n} `)) && /tbf|htb/.test(l));
  return { namespaces, links, qdiscs };
}
