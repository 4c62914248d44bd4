// `caravan chaos`: train while killing hosts, the coordinator and a NATS
// server with SIGKILL at seeded moments; then compare with a fault-free run.
import { Command, Option } from 'commander';
import { runChaos } from '../chaos/chaos-run.ts';
import { KILL_KINDS, type KillKind } from '../chaos/kill-plan.ts';
import { loadRunConfig } from '../config/load-run-config.ts';
import { createLogger, LOG_LEVELS } from '../log.ts';
import { PRESETS } from '../config/presets.ts';
import { compressionOverrides, withCompressionOptions, withScheduleOptions, nonNegativeInt, positiveInt, type RunShapeFlags } from './options.ts';

interface ChaosFlags extends RunShapeFlags {
  trainSeed?: number;
  checkpointEvery?: number;
  kills: number;
  seed: number;
  natsServers: string;
  targets?: string[];
  standbys: number;
  heartbeat: number;
  heartbeatTimeout: number;
  logLevel?: string;
  json?: boolean;
}

export function chaosCommand(program: Command): void {
  withScheduleOptions(withCompressionOptions(program.command('chaos')), { steps: 24 })
    .description('train with seeded SIGKILLs of stage hosts (mid-forward, mid-backward, after a publish, during a checkpoint, anytime), the coordinator and a NATS server; compare with a fault-free run')
    .option('--kills <n>', 'processes to kill', nonNegativeInt('--kills'), 6)
    .option('--seed <n>', 'seed of the kill plan (which process, where, when)', nonNegativeInt('--seed'), 1)
    .addOption(new Option('--nats-servers <n>', 'embedded NATS: a 3-node cluster (one server is killed too) or one server').choices(['1', '3']).default('3'))
    .option('--targets <list>', `comma-separated kinds of kill (default: all that apply): ${KILL_KINDS.join(', ')}`, (v: string) => v.split(',').map((x) => x.trim()).filter(Boolean))
    .option('--standbys <n>', 'standby hosts started with the run (each kill starts one more)', nonNegativeInt('--standbys'), 1)
    .option('--heartbeat <ms>', "hosts' heartbeat period", positiveInt('--heartbeat'), 200)
    .option('--heartbeat-timeout <ms>', 'a host silent this long is replaced', positiveInt('--heartbeat-timeout'), 1500)
    .option('--config <file>', 'run config (YAML, TOML or JSON)')
    .addOption(new Option('--preset <name>', 'base settings').choices(Object.keys(PRESETS)))
    .option('--batch <n>', 'sequences per microbatch', positiveInt('--batch'), 4)
    .option('--seq <n>', 'tokens per sequence', positiveInt('--seq'), 64)
    .option('--train-seed <n>', 'seed for weights and data order', nonNegativeInt('--train-seed'))
    .option('--checkpoint-every <n>', 'steps between stage checkpoints', nonNegativeInt('--checkpoint-every'), 3)
    .addOption(new Option('--log-level <level>', "child processes' log level on stderr").choices([...LOG_LEVELS]))
    .option('--json', 'print one JSON line at the end')
    .action(async (flags: ChaosFlags) => {
      const compression = compressionOverrides(flags);
      const config = await loadRunConfig({
        file: flags.config,
        preset: flags.preset,
        compression: compression.compression,
        overrides: {
          training: {
            steps: flags.steps, stages: flags.stages, replicas: flags.replicas, microbatches: flags.microbatches, schedule: flags.schedule,
            batchSize: flags.batch, seqLen: flags.seq, seed: flags.trainSeed, checkpointEvery: flags.checkpointEvery, ...compression.training,
          },
        },
      });
      const say = (line: string) => { if (!flags.json) process.stderr.write(`${line}\n`); };
      const t = config.training;
      say(`caravan chaos: ${flags.kills} kills (seed ${flags.seed}) in a ${t.steps}-step run of ${t.stages} stages × ${t.replicas} replica(s), checkpoints every ${t.checkpointEvery} steps, ${flags.natsServers} NATS server(s)`);
      const report = await runChaos({
        config, kills: flags.kills, seed: flags.seed, targets: flags.targets as KillKind[] | undefined, natsServers: flags.natsServers === '1' ? 1 : 3, standbys: flags.standbys,
        heartbeatMs: flags.heartbeat, heartbeatTimeoutMs: flags.heartbeatTimeout, log: createLogger('caravan-chaos', 'warn'),
        childLogLevel: flags.logLevel, onEvent: say,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else {
        say(`kills ${report.kills} ${JSON.stringify(report.kills_by_target)}; lost microbatches ${report.lost_microbatches}, duplicated ${report.duplicated_microbatches}; recovery median ${report.recovery_s.median.toFixed(2)} s, max ${report.recovery_s.max.toFixed(2)} s`);
        say(`params ${report.params_match_reference ? 'match' : 'DO NOT match'} the fault-free run (${report.params_sha256.slice(0, 16)}…)`);
      }
      if (!report.params_match_reference || report.lost_microbatches || report.duplicated_microbatches) process.exitCode = 2;
    });
}
