// A WAN profile (deploy/wan/*.yaml): datacenters, the round-trip time of
// every pair, jitter, and a host's access rates; and the plan `caravan wan
// up` builds from it: one network namespace per datacenter, joined to this
// machine's own namespace by a veth pair on its own /24, and one link
// emulator per datacenter towards the hub (the datacenter that holds NATS);
// with `mesh` ports, also one from every datacenter to every other (NATS
// gateways, when each datacenter runs its own server). With hosts per
// datacenter, each host gets a namespace of its own on the datacenter's
// bridge, and the access rates limit each host (and, with mesh ports, each
// datacenter's own server) for what crosses the datacenter's edge.
// Pure: reading the file is the only IO.
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { LinkSettings } from './link-emulator.ts';

export interface WanProfile {
  readonly name: string;
  readonly datacenters: readonly string[];
  /** rtt(a, b) in ms, both orders. */
  readonly rttMs: ReadonlyMap<string, number>;
  readonly jitterMs: number;
  readonly hostUpMbit: number;
  readonly hostDownMbit: number;
}

const PROFILES_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'deploy', 'wan');

export function rtt(profile: WanProfile, a: string, b: string): number {
  if (a === b) return 0;
  return profile.rttMs.get(`${a}|${b}`)!;
}

/** A profile by name (deploy/wan/<name>.yaml) or path. */
export async function loadWanProfile(nameOrFile: string): Promise<WanProfile> {
  const file = /[/.]/.test(nameOrFile) ? nameOrFile : join(PROFILES_DIR, `${nameOrFile}.yaml`);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`WAN profile ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new Error(`WAN profile ${file} is not valid YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  return validateWanProfile(raw, file);
}

export function validateWanProfile(raw: unknown, where: string): WanProfile {
  const fail = (why: string): never => { throw new Error(`WAN profile ${where}: ${why}`); };
  if (!raw || typeof raw !== 'object') fail('expected a mapping with name, datacenters, rtt_ms, jitter_ms, host_up_mbit, host_down_mbit');
  const r = raw as Record<string, unknown>;
  const dcs = r.datacenters;
  if (!Array.isArray(dcs) || dcs.length < 1 || !dcs.every((d) => typeof d === 'string' && /^[a-z0-9-]{1,32}$/.test(d))) fail('datacenters must be a list of names (lowercase letters, digits, -)');
  const names = dcs as string[];
  if (new Set(names).size !== names.length) fail('datacenters has a name twice');
  const number = (key: string, min: number) => {
    const v = r[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min) fail(`${key} must be a number >= ${min}, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const rttMs = new Map<string, number>();
  const table = r.rtt_ms;
  if (table !== undefined && (!table || typeof table !== 'object')) fail('rtt_ms must map datacenter to {datacenter: ms}');
  for (const [a, row] of Object.entries((table ?? {}) as Record<string, unknown>)) {
    if (!names.includes(a)) fail(`rtt_ms names '${a}', which is not in datacenters`);
    if (!row || typeof row !== 'object') fail(`rtt_ms.${a} must map datacenter to ms`);
    for (const [b, ms] of Object.entries(row as Record<string, unknown>)) {
      if (!names.includes(b)) fail(`rtt_ms.${a} names '${b}', which is not in datacenters`);
      if (typeof ms !== 'number' || !(ms > 0) || !Number.isFinite(ms)) fail(`rtt_ms.${a}.${b} must be a positive number of ms, got ${JSON.stringify(ms)}`);
      if (rttMs.has(`${a}|${b}`)) fail(`rtt_ms gives ${a}–${b} twice`);
      rttMs.set(`${a}|${b}`, ms as number);
      rttMs.set(`${b}|${a}`, ms as number);
    }
  }
  for (const a of names) for (const b of names) if (a !== b && !rttMs.has(`${a}|${b}`)) fail(`rtt_ms has no round-trip time for ${a}–${b}`);
  return {
    name: typeof r.name === 'string' ? r.name : 'profile',
    datacenters: names, rttMs,
    jitterMs: number('jitter_ms', 0), hostUpMbit: number('host_up_mbit', 1), hostDownMbit: number('host_down_mbit', 1),
  };
}

export interface PlannedDatacenter {
  readonly name: string;
  readonly index: number;
  readonly namespace: string;
  /** The veth end in this machine's namespace, and the one inside the datacenter's. */
  readonly vethRoot: string;
  readonly vethInside: string;
  readonly rootIp: string;
  readonly insideIp: string;
  /**
   * Whether tc limits its veth, everything that leaves or enters it, to the access rates: with mesh ports, all (each
   * datacenter's NATS server is one machine on the WAN); otherwise all but the hub (the one broker's own network), and
   * none whose hosts are limited one by one.
   */
  readonly limited: boolean;
  /** Host namespaces on the datacenter's bridge, each with the access rates for what it sends out and receives from outside (none: hosts run in the datacenter's namespace). */
  readonly hosts: readonly PlannedHost[];
}

export interface PlannedHost {
  readonly namespace: string;
  /** The veth end inside the host's namespace, and the one on the datacenter's bridge. */
  readonly vethInside: string;
  readonly vethBridge: string;
  readonly ip: string;
}

/** The bridge in a datacenter's namespace that its veth to this machine and its hosts' veths hang on. */
export const DATACENTER_BRIDGE = 'dcbr';
const MAX_HOSTS_PER_DATACENTER = 200;

export interface PlannedLink {
  /** A datacenter's way to the hub: listen on its root-side address, deliver to the hub's inside address. */
  readonly from: string;
  readonly to: string;
  readonly listen: { host: string; port: number };
  readonly target: { host: string; port: number };
  readonly forward: LinkSettings;
  readonly backward: LinkSettings;
}

export interface WanPlan {
  readonly id: string;
  readonly profile: string;
  readonly hub: string;
  readonly datacenters: readonly PlannedDatacenter[];
  readonly links: readonly PlannedLink[];
  readonly hostUpMbit: number;
  readonly hostDownMbit: number;
  /** Where a host in each datacenter finds each forwarded port of the hub: `host:port`. */
  readonly endpoints: Readonly<Record<string, Record<number, string>>>;
  /** With mesh ports: where datacenter `from` reaches port p of datacenter `to`, `peers[from][to][p]` = `host:port`. */
  readonly peers: Readonly<Record<string, Record<string, Record<number, string>>>>;
}

export interface WanPlanOptions {
  /** How many of the profile's datacenters, from the first. */
  readonly datacenters: number;
  /** Short prefix of every name this plan creates (namespaces, veths): several plans can coexist. */
  readonly id: string;
  /** The second octet of every address: 10.<subnet>.<datacenter>.0/24. */
  readonly subnet: number;
  readonly hub?: string;
  /** The hub's ports the other datacenters reach through their links (NATS: 4222). */
  readonly ports: readonly number[];
  /** Ports every datacenter reaches on every other through a link of its own (NATS gateways: 7222). */
  readonly mesh?: readonly number[];
  /** Namespaces for this many hosts in each datacenter, each with the access rates of its own (0: none). */
  readonly hostsPerDatacenter?: number;
}

/** Where a mesh link from one datacenter to datacenter `index` listens: a port per target, on the source's root-side address. */
export const meshListenPort = (port: number, index: number) => port + 1 + index;

export function planWan(profile: WanProfile, o: WanPlanOptions): WanPlan {
  if (!/^[a-z][a-z0-9]{0,5}$/.test(o.id)) throw new Error(`WAN id '${o.id}' must be 1-6 lowercase letters and digits, starting with a letter`);
  if (!Number.isSafeInteger(o.subnet) || o.subnet < 0 || o.subnet > 255) throw new Error(`subnet ${o.subnet} must be 0-255 (addresses are 10.<subnet>.<datacenter>.x)`);
  if (!Number.isSafeInteger(o.datacenters) || o.datacenters < 1 || o.datacenters > profile.datacenters.length) {
    throw new Error(`--datacenters ${o.datacenters}: profile ${profile.name} has ${profile.datacenters.length} (1-${profile.datacenters.length})`);
  }
  const names = profile.datacenters.slice(0, o.datacenters);
  const hub = o.hub ?? names[0];
  if (!names.includes(hub)) throw new Error(`--hub ${hub} is not one of ${names.join(', ')}`);
  const mesh = o.mesh ?? [];
  const perDc = o.hostsPerDatacenter ?? 0;
  if (!Number.isSafeInteger(perDc) || perDc < 0 || perDc > MAX_HOSTS_PER_DATACENTER) throw new Error(`hosts per datacenter must be 0-${MAX_HOSTS_PER_DATACENTER}, not ${perDc}`);
  const datacenters = names.map((name, index) => ({
    name, index, namespace: `${o.id}-${name}`.slice(0, 32),
    vethRoot: `${o.id}${index}r`, vethInside: `${o.id}${index}n`,
    rootIp: `10.${o.subnet}.${index}.1`, insideIp: `10.${o.subnet}.${index}.2`,
    limited: mesh.length > 0 || (perDc === 0 && name !== hub),
    hosts: Array.from({ length: perDc }, (_, k) => ({
      namespace: `${o.id}-${index}h${k}`, vethInside: `${o.id}${index}h${k}n`, vethBridge: `${o.id}${index}h${k}b`, ip: `10.${o.subnet}.${index}.${10 + k}`,
    })),
  }));
  for (const p of mesh) {
    const clash = [...o.ports, ...mesh].find((q) => q !== p && q > p && q <= meshListenPort(p, datacenters.length - 1));
    if (clash !== undefined) throw new Error(`mesh port ${p} listens on ${p + 1}-${meshListenPort(p, datacenters.length - 1)}, which takes port ${clash}`);
  }
  const hubDc = datacenters.find((d) => d.name === hub)!;
  const links: PlannedLink[] = [];
  const endpoints: Record<string, Record<number, string>> = {};
  for (const dc of datacenters) {
    endpoints[dc.name] = {};
    for (const port of o.ports) {
      if (dc.name === hub) { endpoints[dc.name][port] = `${hubDc.insideIp}:${port}`; continue; }
      const oneWay = rtt(profile, dc.name, hub) / 2;
      const settings = { delayMs: oneWay, jitterMs: profile.jitterMs, rateMbit: 0, up: true };
      links.push({ from: dc.name, to: hub, listen: { host: dc.rootIp, port }, target: { host: hubDc.insideIp, port }, forward: settings, backward: settings });
      endpoints[dc.name][port] = `${dc.rootIp}:${port}`;
    }
  }
  const peers: Record<string, Record<string, Record<number, string>>> = {};
  for (const from of datacenters) {
    peers[from.name] = {};
    for (const to of datacenters.filter((d) => d !== from)) {
      peers[from.name][to.name] = {};
      for (const port of mesh) {
        const settings = { delayMs: rtt(profile, from.name, to.name) / 2, jitterMs: profile.jitterMs, rateMbit: 0, up: true };
        const listen = { host: from.rootIp, port: meshListenPort(port, to.index) };
        links.push({ from: from.name, to: to.name, listen, target: { host: to.insideIp, port }, forward: settings, backward: settings });
        peers[from.name][to.name][port] = `${listen.host}:${listen.port}`;
      }
    }
  }
  return { id: o.id, profile: profile.name, hub, datacenters, links, hostUpMbit: profile.hostUpMbit, hostDownMbit: profile.hostDownMbit, endpoints, peers };
}
