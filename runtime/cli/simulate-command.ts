// `caravan simulate`: the pipeline at a scale this machine cannot compute,
// with the synthetic backend (docs/simulate.md).
import type { ScheduleName } from '../../actors/pipeline-schedule.ts';
import { Command, Option } from 'commander';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { createLogger, LOG_LEVELS } from '../log.ts';
import { SIMULATE_PRESETS, splitStages, type LayerSplit } from '../synthetic/simulate-presets.ts';
import { NATS_TOPOLOGIES, simulate, type NatsTopology } from '../synthetic/simulate-run.ts';
import { loadWanProfile } from '../wan/wan-profile.ts';
import { nonNegativeInt, positiveInt, positiveNumber, withScheduleOptions } from './options.ts';

export function simulateCommand(program: Command): void {
  withScheduleOptions(program.command('simulate'))
    .description('run a model too large for this machine through the real pipeline with synthetic compute (sleeps as long as the device would) and report utilization against its pipeline schedule\'s bound')
    .addOption(new Option('--preset <name>', Object.entries(SIMULATE_PRESETS).map(([k, p]) => `${k}: ${p.description}`).join('; ')).choices(Object.keys(SIMULATE_PRESETS)).default('orion-mini'))
    .option('--datacenters <n>', 'datacenter labels the hosts are spread over, in contiguous blocks', positiveInt('--datacenters'))
    .option('--time-scale <x>', 'simulated seconds per wall second (compute runs x times faster than on the device)', positiveNumber('--time-scale'))
    .option('--frame-bytes <n>', 'payload bytes of one activation or gradient frame', positiveNumber('--frame-bytes'))
    .option('--efficiency <x>', 'fraction of the device peak its kernels reach on this model', positiveNumber('--efficiency'))
    .option('--standbys <n>', 'extra hosts waiting to replace a lost one (default: as many as --kill)', nonNegativeInt('--standbys'))
    .option('--wan <profile>', 'run the datacenters as network namespaces with this WAN profile\'s links (deploy/wan/<name>.yaml or a file; needs root)')
    .option('--rtt-scale <x>', 'with --wan: multiply every round-trip time', (v) => { const n = Number(v); if (!(n >= 0) || !Number.isFinite(n)) throw new Error(`--rtt-scale must be a number >= 0, got '${v}'`); return n; })
    .option('--rate-mbit <n>', 'with --wan: every host\'s access rate, both directions', positiveNumber('--rate-mbit'))
    .option('--nats-topology <t>', `with --wan: ${NATS_TOPOLOGIES.join(' or ')}: one NATS server per datacenter joined by gateways, each slot's input stream in its holder's datacenter (default); or one server in the first datacenter`, (v) => {
      if (!NATS_TOPOLOGIES.includes(v as NatsTopology)) throw new Error(`--nats-topology must be ${NATS_TOPOLOGIES.join(' or ')}, got '${v}'`);
      return v as NatsTopology;
    })
    .option('--extra-in-flight <n>', 'microbatches each stage but the last may have in flight beyond 1F1B\'s S−s, to hide link latency (training.extraInFlight)', nonNegativeInt('--extra-in-flight'))
    .option('--kill <n>', 'churn: SIGKILL a stage host after each of the first n steps (standbys take over; --standbys defaults to n)', nonNegativeInt('--kill'), 0)
    .option('--partition <dc:seconds>', 'with --wan: cut every link from and to datacenter dc (a name, or its index from 0) for this long, after the first step', (v) => {
      const m = /^([a-z0-9-]+):(\d+(?:\.\d+)?)$/.exec(v);
      if (!m) throw new Error(`--partition takes <datacenter>:<seconds> (us-central:5, or 1:5), got '${v}'`);
      return { datacenter: m[1], seconds: Number(m[2]) };
    })
    .option('--heartbeat-timeout <ms>', 'a host silent this long is lost and its slot goes to a standby (the coordinator\'s default: 15000)', positiveInt('--heartbeat-timeout'))
    .addOption(new Option('--log-level <level>', "child processes' log level on stderr").choices([...LOG_LEVELS]))
    .addOption(new Option('--split <how>', 'layers per stage: even (by count), or speed (balanced for the stages\' devices, the LM head counted: runtime/config/speed-split.ts)').choices(['even', 'speed']).default('even'))
    .option('--sync-every <H>', 'with more than one replica: the Bridge combines the replicas every H steps (default: the preset\'s; 0 turns it off)', nonNegativeInt('--sync-every'))
    .option('--hosts-per-process <n>', 'hosts that share one process, each whole on the wire (default: enough to keep to 16 host processes; 1 with --wan or --kill)', positiveInt('--hosts-per-process'))
    .option('--json', 'print only the final JSON line')
    .action(async (flags: { preset: string; steps?: number; microbatches?: number; stages?: number; replicas?: number; schedule?: ScheduleName; datacenters?: number; timeScale?: number; frameBytes?: number; efficiency?: number; standbys?: number; kill: number; extraInFlight?: number; heartbeatTimeout?: number; partition?: { datacenter: string; seconds: number }; wan?: string; rttScale?: number; rateMbit?: number; natsTopology?: NatsTopology; split: LayerSplit; syncEvery?: number; hostsPerProcess?: number; logLevel?: string; json?: boolean }) => {
      if ((flags.rttScale !== undefined || flags.rateMbit !== undefined || flags.natsTopology !== undefined || flags.partition) && !flags.wan) throw new Error('--rtt-scale, --rate-mbit, --nats-topology and --partition need --wan PROFILE');
      const p = SIMULATE_PRESETS[flags.preset];
      const t = p.config.training;
      const stages = flags.stages ?? t.stages;
      const replicas = flags.replicas ?? t.replicas;
      const syncEvery = flags.syncEvery ?? p.syncEvery ?? 0;
      if (flags.syncEvery && replicas < 2) throw new Error('--sync-every needs more than one replica: the Bridge combines replicas');
      const synthetic = { ...t.synthetic!, ...(flags.timeScale ? { timeScale: flags.timeScale } : {}), ...(flags.frameBytes ? { frameBytes: flags.frameBytes } : {}), ...(flags.efficiency ? { efficiency: flags.efficiency } : {}) };
      const config = validateRunConfig({
        ...p.config,
        training: {
          ...t, steps: flags.steps ?? t.steps, microbatches: flags.microbatches ?? t.microbatches, stages, replicas, schedule: flags.schedule ?? t.schedule,
          ...splitStages(p, synthetic, stages, flags.split), ...(flags.extraInFlight !== undefined ? { extraInFlight: flags.extraInFlight } : {}),
          ...(replicas > 1 && syncEvery > 0 ? { bridge: { syncEvery } } : {}),
        },
      });
      const started = Date.now();
      const profile = flags.wan ? await loadWanProfile(flags.wan) : undefined;
      const partition = flags.partition && profile && /^\d+$/.test(flags.partition.datacenter)
        ? { ...flags.partition, datacenter: profile.datacenters[Number(flags.partition.datacenter)] ?? flags.partition.datacenter }
        : flags.partition;
      const result = await simulate({
        preset: flags.preset, config, datacenters: flags.datacenters ?? p.datacenters, standbys: flags.standbys ?? flags.kill,
        hostsPerProcess: flags.hostsPerProcess, faults: { kills: flags.kill, ...(partition ? { partition } : {}) }, heartbeatTimeoutMs: flags.heartbeatTimeout,
        ...(profile ? { wan: { profile, rttScale: flags.rttScale, rateMbit: flags.rateMbit, nats: flags.natsTopology } } : {}),
        log: createLogger('caravan-simulate', flags.logLevel), childLogLevel: flags.logLevel,
        onProgress: flags.json ? undefined : (pr) => process.stderr.write(`replica ${pr.replica} step ${pr.step + 1}/${pr.steps} after ${((Date.now() - started) / 1000).toFixed(0)} s\n`),
      });
      if (!flags.json) {
        process.stderr.write(`utilization ${(result.utilization * 100).toFixed(1)}% of the window (${result.schedule} bound ${(result.schedule_bound * 100).toFixed(1)}%: ${(result.ratio_to_bound * 100).toFixed(1)}% of it), ${result.rolled_back_steps} step(s) rolled back, MFU ${result.mfu_pct}%, ${result.tokens_per_s} tokens/s on the simulated devices\n`);
      }
      process.stdout.write(`${JSON.stringify(result)}\n`);
    });
}
