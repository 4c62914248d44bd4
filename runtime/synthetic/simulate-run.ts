// `caravan simulate`: a synthetic run through the real coordinator, hosts,
// NATS transport and recovery code (one host process per stage and replica),
// and the figures that say how close the pipeline comes to its schedule:
// utilization (the fraction of the window from the first engine call to the
// last that replica 0's stages spent computing), the schedule's bound,
// throughput and MFU in the simulated device's time, and the bytes that
// cross datacenters per step. With `wan`, the datacenters are real network
// namespaces joined by emulated links (runtime/wan/), the hosts in contiguous
// blocks across them and the coordinator in the first; NATS is one server
// per datacenter joined by gateways (each slot's input stream in its
// holder's datacenter), or with `nats: 'hub'` one server in the first.
import { scheduleUse } from '../config/run-schedule.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { Logger } from '../log.ts';
import { connectNats } from '../transport/connect.ts';
import { openExistingRun } from '../transport/run-resources.ts';
import { slotPlacements } from '../transport/slot-placement.ts';
import { trainDistributed, type DistributedOptions } from '../train/train-distributed.ts';
import type { RunSummary } from '../../schemas/run-records.ts';
import { SyntheticStage } from '../compute/synthetic-stage.ts';
import { FaultInjector, type FaultRecord, type SimulateFaults } from './simulate-faults.ts';
import { startNatsServer } from '../nats/nats-server.ts';
import { startSupercluster } from '../nats/nats-supercluster.ts';
import { startWan, type WanNetwork } from '../wan/wan-network.ts';
import { planWan, type WanProfile } from '../wan/wan-profile.ts';
import { stageDevice, stageRanges } from '../../schemas/stage-layers.ts';
import { stageMemory } from '../../schemas/model-memory.ts';
import { elementCount, llamaTensorSpecs } from '../../schemas/model-config.ts';

const CLIENT_PORT = 4222, CLUSTER_PORT = 6222, GATEWAY_PORT = 7222;

export interface SimulateResult {
  readonly bench: 'simulate';
  readonly preset: string;
  readonly stages: number;
  readonly replicas: number;
  readonly datacenters: number;
  readonly microbatches: number;
  readonly steps: number;
  readonly utilization: number;
  readonly schedule: string;
  readonly schedule_bound: number;
  readonly rolled_back_steps: number;
  readonly peak_stash_bytes_by_stage: readonly number[];
  readonly ratio_to_bound: number;
  /** Of stage 0, one microbatch, on the simulated device (a backward takes twice as long). */
  readonly forward_ms_simulated: number;
  /** In the simulated device's time (wall rate ÷ timeScale). */
  readonly tokens_per_s: number;
  readonly mfu_pct: number;
  readonly wan_bytes_per_step: number;
  readonly frame_bytes: number;
  readonly time_scale: number;
  readonly wall_s: number;
  readonly utilization_by_stage: number[];
  /** Each stage's layers (its count), and the simulated device it runs on. */
  readonly layers_by_stage: number[];
  readonly devices_by_stage: string[];
  /** What each stage would hold training on a GPU (GiB, schemas/model-memory.ts), and its device's memory where known. */
  readonly memory_by_stage: Array<{ need_gib: number; have_gib: number | null }>;
  readonly recoveries: unknown;
  /** What was killed or cut, after which step, and how long replica 0 then stood still. */
  readonly faults: FaultRecord[];
  /** Host processes started (stage hosts and standbys), and how many processes they ran in (simulate's hostsPerProcess). */
  readonly hosts: number;
  readonly host_processes: number;
  /**
   * With the Bridge on: outer steps, and the seconds from a stage's first contribution to its stored record, the
   * slowest stage's per outer step (median and max). The synthetic stages' state is 16 stand-in parameters, so this
   * is the Bridge's coordination (gathering, combining, storing, announcing), not the transfer of a real model's
   * pseudo-gradients: `bridge_payload_bytes_per_replica` is what that would weigh per outer step.
   */
  readonly bridge: { outer_steps: number; sync_s_median: number; sync_s_max: number; payload_bytes_per_replica: number } | null;
  /** With --wan: the profile, its RTT scale, and the hosts' access rates (Mbit/s up, down); null on loopback. */
  readonly wan: { profile: string; rtt_scale: number; up_mbit: number; down_mbit: number; nats: NatsTopology } | null;
}

export interface SimulateOptions {
  readonly preset: string;
  readonly config: RunConfig;
  readonly datacenters: number;
  readonly standbys?: number;
  readonly log: Logger;
  readonly childLogLevel?: string;
  readonly onProgress?: DistributedOptions['onProgress'];
  /** Run the datacenters as namespaces with this profile's links (needs root); RTTs times rttScale, access rates replaced by rateMbit. */
  readonly wan?: { readonly profile: WanProfile; readonly rttScale?: number; readonly rateMbit?: number; readonly nats?: NatsTopology };
  /** How long a silent host has before a standby takes its slot (default the coordinator's). */
  readonly heartbeatTimeoutMs?: number;
  /** Churn and link faults during the run (simulate-faults.ts); kills need as many standbys. */
  readonly faults?: SimulateFaults;
  /** Hosts per process (default: as many as keep the host processes to 16, one each for 16 hosts or fewer); 1 with a WAN or kills. */
  readonly hostsPerProcess?: number;
}

/** Host processes past which hosts share them by default: 16 lone host processes is what this 2-core machine ran well. */
const LONE_HOST_PROCESSES = 16;

/** Over a WAN: one NATS server per datacenter joined by gateways, or one in the first datacenter that all reach through their links. */
export type NatsTopology = 'per-dc' | 'hub';
export const NATS_TOPOLOGIES: readonly NatsTopology[] = ['per-dc', 'hub'];

/** The profile with every round trip scaled and, if given, one access rate for both directions. */
export function scaledProfile(p: WanProfile, rttScale = 1, rateMbit?: number): WanProfile {
  return {
    ...p,
    rttMs: new Map([...p.rttMs].map(([k, v]) => [k, v * rttScale])),
    ...(rateMbit ? { hostUpMbit: rateMbit, hostDownMbit: rateMbit } : {}),
  };
}

export async function simulate(o: SimulateOptions): Promise<SimulateResult> {
  const t = o.config.training;
  const s = t.synthetic!;
  let dcs = Array.from({ length: o.datacenters }, (_, i) => `dc-${i}`);
  // Hosts in contiguous blocks per datacenter, as one would rent them: a pipeline crosses a datacenter boundary a few
  // times, not at every stage. Standbys go round the datacenters.
  const slots = t.stages * t.replicas;
  const block = (i: number) => (i < slots ? Math.min(o.datacenters - 1, Math.floor((i * o.datacenters) / slots)) : (i - slots) % o.datacenters);
  const kills = o.faults?.kills ?? 0;
  if (kills > (o.standbys ?? 0)) throw new Error(`${kills} kills need at least ${kills} standbys (--standbys): a killed host is not restarted`);
  const partition = o.faults?.partition;
  if (partition) {
    if (!o.wan) throw new Error('a partition needs --wan: there are no links to cut on loopback');
    const names = o.wan.profile.datacenters.slice(0, o.datacenters);
    if (!names.includes(partition.datacenter)) throw new Error(`--partition ${partition.datacenter}: the run's datacenters are ${names.join(', ')}`);
  }
  const hosts = slots + (o.standbys ?? 0);
  // A kill strikes a process, so with kills each host keeps one of its own, as it does over a WAN (a namespace each).
  const perProcess = o.hostsPerProcess ?? (o.wan || kills > 0 ? 1 : Math.ceil(hosts / LONE_HOST_PROCESSES));
  if (o.wan && perProcess > 1) throw new Error('over a WAN each host has a namespace of its own: hosts cannot share a process');
  if (kills > 0 && perProcess > 1) throw new Error('--kill strikes a host\'s process: hosts that share one would all go with it (leave out --hosts-per-process)');
  let placement: DistributedOptions['placement'] = { host: (i) => ({ datacenter: dcs[block(i)] }) };
  let wan: WanNetwork | undefined, nats: { url: string; stop(): Promise<void> } | undefined;
  if (o.wan) {
    const topology = o.wan.nats ?? 'per-dc';
    const perDc = topology === 'per-dc' && o.datacenters > 1;
    // Each host in a namespace of its own, with the access rates of its own.
    const hostsIn = new Map<number, number[]>();
    for (let i = 0; i < slots + (o.standbys ?? 0); i++) hostsIn.set(block(i), [...(hostsIn.get(block(i)) ?? []), i]);
    const plan = planWan(scaledProfile(o.wan.profile, o.wan.rttScale, o.wan.rateMbit), {
      datacenters: o.datacenters, id: 'sim', subnet: 78, ...(perDc ? { ports: [], mesh: [GATEWAY_PORT] } : { ports: [CLIENT_PORT] }),
      hostsPerDatacenter: Math.max(...[...hostsIn.values()].map((h) => h.length)),
    });
    const hostNs = (i: number) => plan.datacenters[block(i)].hosts[hostsIn.get(block(i))!.indexOf(i)].namespace;
    wan = await startWan(plan);
    const hub = plan.datacenters[0];
    const inNs = (name: string) => ['ip', 'netns', 'exec', plan.datacenters.find((d) => d.name === name)!.namespace];
    let urlIn: (dc: string) => string;
    try {
      if (perDc) {
        const sc = await startSupercluster({
          datacenters: plan.datacenters.map((d) => ({
            name: d.name, prefix: inNs(d.name),
            clientListen: `${d.insideIp}:${CLIENT_PORT}`, clusterListen: `${d.insideIp}:${CLUSTER_PORT}`, gatewayListen: `${d.insideIp}:${GATEWAY_PORT}`,
            gateways: Object.fromEntries(Object.entries(plan.peers[d.name]).map(([other, ports]) => [other, ports[GATEWAY_PORT]])),
          })),
        });
        nats = { url: sc.urls[hub.name], stop: sc.stop };
        urlIn = (dc) => sc.urls[dc];
      } else {
        const server = await startNatsServer({ listen: `${hub.insideIp}:${CLIENT_PORT}`, prefix: inNs(hub.name) });
        nats = server;
        urlIn = (dc) => (dc === hub.name ? server.url : `nats://${plan.endpoints[dc][CLIENT_PORT]}`);
      }
    } catch (err) {
      await wan.stop();
      throw err;
    }
    dcs = plan.datacenters.map((d) => d.name);
    placement = {
      coordinator: { prefix: inNs(hub.name), nats: urlIn(hub.name) },
      host: (i) => ({ prefix: ['ip', 'netns', 'exec', hostNs(i)], nats: urlIn(dcs[block(i)]), datacenter: dcs[block(i)] }),
    };
  }
  const faults = new FaultInjector({ faults: o.faults ?? { kills: 0 }, stages: t.stages, replicas: t.replicas, wan, log: o.log });
  let stageDcs: string[][] = [];
  let summary: RunSummary;
  try {
    summary = await trainDistributed({
      config: o.config, log: o.log, standbys: o.standbys, childLogLevel: o.childLogLevel, nats: nats?.url, placement,
      hostsMayBeKilled: kills > 0, heartbeatTimeoutMs: o.heartbeatTimeoutMs, hostsPerProcess: perProcess,
      onReady: ({ url, run }) => faults.attach(url, run),
      onProgress: (p) => { faults.onProgress(p); o.onProgress?.(p); },
      onFinished: async ({ url, run }) => {
        const nc = await connectNats(url, 'simulate-inspect');
        try {
          stageDcs = (await slotPlacements(await openExistingRun(nc, run, url), t.replicas, t.stages)).map((row) => row.map((p) => p.datacenter));
        } finally {
          await nc.close();
        }
      },
    });
  } finally {
    await faults.stop();
    await nats?.stop();
    await wan?.stop();
  }
  const M = t.microbatches, S = t.stages;
  const utilization = summary.utilization_by_stage.reduce((a, b) => a + b, 0) / S;
  const { name: schedule, bound } = scheduleUse(o.config);
  const frameBytes = summary.wire.frames ? summary.wire.wire_bytes / summary.wire.frames : 0;
  // Each boundary whose two stages sit in different datacenters carries M activations and M gradients a step.
  const crossings = stageDcs.reduce((n, row) => n + row.slice(1).filter((dc, i) => dc !== row[i]).length, 0);
  const ranges = stageRanges(o.config);
  const [begin, end] = ranges[0];
  const forwardMs = new SyntheticStage({ model: o.config.model, layerBegin: begin, layerEnd: end, batchSize: t.batchSize, seqLen: t.seqLen, synthetic: stageDevice(s, 0) }).forwardMs * s.timeScale;
  return {
    bench: 'simulate', preset: o.preset, stages: S, replicas: t.replicas, datacenters: o.datacenters, microbatches: M, steps: t.steps,
    schedule, utilization: +utilization.toFixed(4), schedule_bound: +bound.toFixed(4), ratio_to_bound: +(utilization / bound).toFixed(4),
    rolled_back_steps: summary.rolled_back_steps?.length ?? 0, peak_stash_bytes_by_stage: summary.peak_stash_bytes_by_stage ?? [],
    tokens_per_s: Math.round(summary.tokens_per_s / s.timeScale), mfu_pct: +summary.mfu_pct.toFixed(2),
    wan_bytes_per_step: Math.round(crossings * 2 * M * frameBytes), frame_bytes: Math.round(frameBytes), time_scale: s.timeScale,
    forward_ms_simulated: +forwardMs.toFixed(1), wall_s: +summary.wall_seconds.toFixed(1),
    utilization_by_stage: summary.utilization_by_stage.map((u) => +u.toFixed(3)),
    layers_by_stage: ranges.map(([b, e]) => e - b), devices_by_stage: ranges.map((_, st) => stageDevice(s, st).device),
    memory_by_stage: stageMemory(o.config, ranges.map(([b, e]) => e - b), ranges.map((_, st) => stageDevice(s, st))), recoveries: summary.recoveries, faults: faults.report(),
    hosts, host_processes: Math.ceil(hosts / perProcess), bridge: bridgeFigures(o.config, summary),
    wan: o.wan ? { profile: o.wan.profile.name, rtt_scale: o.wan.rttScale ?? 1, up_mbit: o.wan.rateMbit ?? o.wan.profile.hostUpMbit, down_mbit: o.wan.rateMbit ?? o.wan.profile.hostDownMbit, nats: o.wan.nats ?? 'per-dc' } : null,
  };
}

/** The Bridge's outer steps and sync times (SimulateResult.bridge) from the run's records; null without a Bridge. */
function bridgeFigures(config: RunConfig, summary: RunSummary): SimulateResult['bridge'] {
  const b = config.training.bridge;
  if (!b) return null;
  const slowest = new Map<number, number>();
  for (const r of summary.bridge_syncs ?? []) slowest.set(r.outer, Math.max(slowest.get(r.outer) ?? 0, (r.finished_ms - r.first_ms) / 1000));
  const spans = [...slowest.values()].sort((x, y) => x - y);
  // A real replica's payload: every parameter of the model once per outer step (all its stages together), at the
  // payload's width: fp32 4 bytes; mxint8 1 byte and a 1-byte scale per block of 32; topk an fp32 value and a u32 index each.
  const params = llamaTensorSpecs(config.model).reduce((n, t) => n + elementCount(t.shape), 0);
  const bytesPerParam = b.payload === 'fp32' ? 4 : b.payload === 'mxint8' ? 1 + 1 / 32 : 8 * b.topkFraction;
  return {
    outer_steps: spans.length,
    sync_s_median: spans.length ? +spans[Math.floor((spans.length - 1) / 2)].toFixed(3) : 0,
    sync_s_max: spans.length ? +spans[spans.length - 1].toFixed(3) : 0,
    payload_bytes_per_replica: Math.round(params * bytesPerParam),
  };
}
