// `caravan coordinator` and `caravan host`: the two long-running processes of
// a run, one coordinator per run and one host per GPU node.
import { Command, Option } from 'commander';
import { loadRunConfig } from '../config/load-run-config.ts';
import { CONTROL_SNAPSHOT_EVERY, runCoordinator } from '../coordinator/coordinator-process.ts';
import { REPLACED_EXIT_CODE, runHost } from '../host/host-process.ts';
import { runHostGroup } from '../host/host-group.ts';
import { SlotLostError } from '../transport/slots.ts';
import { createLogger, LOG_LEVELS } from '../log.ts';
import { validateRunId } from '../transport/subjects.ts';
import { nonNegativeInt, positiveInt, positiveNumber } from './options.ts';

export function processCommands(program: Command): void {
  program
    .command('coordinator')
    .description('run the coordinator of a run: admits hosts, assigns slots, drives the steps, keeps run state in KV')
    .requiredOption('--nats <url>', 'NATS server or cluster')
    .requiredOption('--run <id>', 'run id')
    .option('--config <file>', 'run config (YAML, TOML or JSON)')
    .option('--preset <name>', 'base settings when no config file names one')
    .option('--heartbeat-timeout <ms>', 'a host silent this long is lost and its slot goes to a standby', positiveInt('--heartbeat-timeout'), 15_000)
    .option('--stuck-timeout <ms>', 'a host whose heartbeats say its event loop has not turned for this long is stuck, and lost after the heartbeat timeout (default: 10 × the heartbeat timeout)', positiveInt('--stuck-timeout'))
    .option('--from-states <dir>', "a new run starts from these stage states of one moment (an in-process run's checkpoints, or `caravan repartition`'s output), re-sharded for the run's split: it trains from their optimizer step on")
    .option('--snapshot-every <entries>', `control-log entries between snapshots of the log, which a restarted coordinator replays instead of the whole log; 0 for none`, nonNegativeInt('--snapshot-every'), CONTROL_SNAPSHOT_EVERY)
    .option('--stream-replicas <n>', 'copies of every stream, KV bucket and object store (default: 3 on a cluster, 1 on one server)', positiveInt('--stream-replicas'))
    .option('--json', 'print the run summary as one JSON line at the end')
    .option('--nkey <file>', 'authenticate to NATS as this nkey user (the coordinator seed `caravan creds` wrote)')
    .option('--host-keys <file>', 'admit only these host keys (the host-keys.pub `caravan creds` wrote; default with --nkey: host-keys.pub beside the seed)')
    .addOption(logLevelOption())
    .action(async (flags: { nats: string; run: string; config?: string; preset?: string; heartbeatTimeout: number; stuckTimeout?: number; snapshotEvery: number; fromStates?: string; streamReplicas?: number; json?: boolean; logLevel?: string; nkey?: string; hostKeys?: string }) => {
      validateRunId(flags.run);
      const config = await loadRunConfig({ file: flags.config, preset: flags.preset });
      const summary = await runCoordinator({
        nats: flags.nats, run: flags.run, config, log: createLogger('caravan-coordinator', flags.logLevel),
        heartbeatTimeoutMs: flags.heartbeatTimeout, stuckTimeoutMs: flags.stuckTimeout, snapshotEvery: flags.snapshotEvery, fromStates: flags.fromStates, streamReplicas: flags.streamReplicas, nkey: flags.nkey, hostKeys: flags.hostKeys,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    });

  program
    .command('host')
    .description('run an actor host (one per GPU node): registers, waits as a standby or runs its assigned stage')
    .requiredOption('--nats <url>', 'NATS server or cluster')
    .requiredOption('--run <id>', 'run id')
    .addOption(new Option('--device <kind>', 'compute device').choices(['cpu', 'cuda']).default('cpu'))
    .option('--gpu <n>', 'GPU index with --device cuda', nonNegativeInt('--gpu'), 0)
    .option('--datacenter <name>', 'where this host runs (shown in status and traces); with --count, a comma-separated list given to the hosts in turn', 'default')
    .option('--heartbeat <ms>', 'heartbeat period (keep it well under the coordinator\'s --heartbeat-timeout)', positiveInt('--heartbeat'), 1000)
    .option('--nkey <file>', 'this host\'s nkey seed (`caravan creds`): its NATS user and the key it signs frames with (default: a fresh key, no NATS authentication)')
    .option('--speed <tflops>', "report this training speed (TFLOP/s for the run's model) instead of measuring it: a machine whose speed is known, or one whose measure would mislead (shared, throttled)", positiveNumber('--speed'))
    .option('--count <n>', 'run n hosts in this one process, each whole on the wire (its own connection, key, heartbeats, consumers): for simulated runs, whose stages only wait on timers', positiveInt('--count'), 1)
    .addOption(logLevelOption())
    .action(async (flags: { nats: string; run: string; device: 'cpu' | 'cuda'; gpu: number; datacenter: string; heartbeat: number; logLevel?: string; nkey?: string; count: number; speed?: number }) => {
      validateRunId(flags.run);
      const { count, heartbeat, ...rest } = flags;
      if (count > 1 && flags.nkey) throw new Error('--count with --nkey: one seed file is one host\'s identity; hosts sharing a process get fresh keys');
      const log = createLogger('caravan-host', flags.logLevel);
      try {
        if (count > 1) await runHostGroup({ ...rest, heartbeatMs: heartbeat, count, datacenters: flags.datacenter.split(',').map((d) => d.trim()).filter(Boolean), log });
        else await runHost({ ...rest, heartbeatMs: heartbeat, log });
      } catch (err) {
        if (!(err instanceof SlotLostError)) throw err;
        // Replaced while it was away: another host holds its slot now. Not a crash.
        process.stderr.write(`caravan host: ${err.message}\n`);
        process.exitCode = REPLACED_EXIT_CODE;
      }
    });
}

/** --log-level: pino's threshold on stderr (default: CARAVAN_LOG_LEVEL, else info); debug adds a line per microbatch with its trace_id and span_id. */
function logLevelOption(): Option {
  return new Option('--log-level <level>', 'log threshold on stderr (JSON lines; readable lines on a terminal)').choices([...LOG_LEVELS]);
}
