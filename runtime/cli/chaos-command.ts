// `caravan chaos`: train while killing hosts, the coordinator and a NATS
// server with SIGKILL at seeded moments; then compare with a fault-free run.
// With --cheat, one slot's holder also cheats, and the audits must catch it.
import { Command, InvalidArgumentError, Option } from 'commander';
import { runChaos, type ChaosReport, type Cheat, type CheatReport } from '../chaos/chaos-run.ts';
import { KILL_KINDS, type KillKind } from '../chaos/kill-plan.ts';
import { loadRunConfig } from '../config/load-run-config.ts';
import { createLogger, LOG_LEVELS } from '../log.ts';
import { PRESETS } from '../config/presets.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { CHEAT_MODES, parseCheat } from '../host/fault-points.ts';
import { auditRate, compressionOverrides, withCompressionOptions, withScheduleOptions, nonNegativeInt, positiveInt, type RunShapeFlags } from './options.ts';

interface ChaosFlags extends RunShapeFlags {
  trainSeed?: number;
  checkpointEvery?: number;
  kills?: number;
  faults?: number;
  seed: number;
  natsServers: string;
  targets?: string[];
  standbys: number;
  heartbeat: number;
  heartbeatTimeout: number;
  snapshotEvery?: number;
  logLevel?: string;
  json?: boolean;
  auditRate?: number;
  cheat?: Cheat;
}

const DEFAULT_FAULTS = 6;
// Strikes come one after another and some take long (a server cut off for 10 s, one restarted and caught up) while
// training goes on: the plan strikes over the first three quarters of the run (kill-plan.ts), about two steps a
// fault, and the last quarter is room for strikes that land late. With two steps a fault over the whole run, a CI
// run once ended with 4 of 20 faults not yet struck (arming a host through a server just paused took long).
const MIN_CHAOS_STEPS = 24;
const STEPS_PER_FAULT = 3;

export function chaosCommand(program: Command): void {
  withScheduleOptions(withCompressionOptions(program.command('chaos')), { stepsHelp: `default: ${MIN_CHAOS_STEPS}, or ${STEPS_PER_FAULT} per fault when that is more` })
    .description('train with seeded faults: SIGKILLs of stage hosts (mid-forward, mid-backward, after a publish, during a checkpoint or a Bridge sync, anytime), the coordinator and a NATS server; stage hosts stalled (SIGSTOP) or cut off from NATS past the heartbeat timeout; a NATS server cut off from the other servers past a Raft election; SIGSTOP pauses of the coordinator and a NATS server; compare with a fault-free run')
    .option('--faults <n>', `faults to inject, of the kinds --targets names, in seeded rounds (default: ${DEFAULT_FAULTS})`, nonNegativeInt('--faults'))
    .option('--kills <n>', 'the same as --faults (its older name)', nonNegativeInt('--kills'))
    .option('--seed <n>', 'seed of the kill plan (which process, where, when)', nonNegativeInt('--seed'), 1)
    .addOption(new Option('--nats-servers <n>', 'embedded NATS: a 3-node cluster (one server is killed too) or one server').choices(['1', '3']).default('3'))
    .option('--targets <list>', `comma-separated kinds of kill (default: all that apply): ${KILL_KINDS.join(', ')}`, (v: string) => v.split(',').map((x) => x.trim()).filter(Boolean))
    // Two: a fault that loses several hosts at once (a server paused or cut off loses every host connected to it) and a
    // stall right after must still find a standby while the supervisor brings the lost ones back.
    .option('--standbys <n>', 'standby hosts started with the run (killed hosts come back as standbys)', nonNegativeInt('--standbys'), 2)
    .option('--heartbeat <ms>', "hosts' heartbeat period", positiveInt('--heartbeat'), 200)
    .option('--heartbeat-timeout <ms>', 'a host silent this long is replaced', positiveInt('--heartbeat-timeout'), 1500)
    .option('--snapshot-every <entries>', "the coordinator's control-log entries between snapshots of the log (its --snapshot-every; default: the coordinator's)", nonNegativeInt('--snapshot-every'))
    .option('--config <file>', 'run config (YAML, TOML or JSON)')
    .addOption(new Option('--preset <name>', 'base settings').choices(Object.keys(PRESETS)))
    .option('--batch <n>', 'sequences per microbatch', positiveInt('--batch'), 4)
    .option('--seq <n>', 'tokens per sequence', positiveInt('--seq'), 64)
    .option('--train-seed <n>', 'seed for weights and data order', nonNegativeInt('--train-seed'))
    .option('--checkpoint-every <n>', 'steps between stage checkpoints', nonNegativeInt('--checkpoint-every'), 3)
    .option('--audit-rate <x>', 'audit this fraction of each slot\'s checkpoint intervals by exact replay, in the fault-free run and the chaos run (training.audit; docs/security.md)', auditRate)
    .option('--cheat <spec>', `<mode>/<replica>/<stage>/<from step>: that slot's holder cheats from that step on (mode: ${CHEAT_MODES.join(', ')}); needs --audit-rate. The audit must catch it: the host is banned and its replica trains again from its start; exit 0 when the audit blames that slot and the run ends with the fault-free run's weights, 2 otherwise`, cheatSpec)
    .addOption(new Option('--log-level <level>', "child processes' log level on stderr").choices([...LOG_LEVELS]))
    .option('--json', 'print one JSON line at the end')
    .action(async (flags: ChaosFlags) => {
      if (flags.faults !== undefined && flags.kills !== undefined && flags.faults !== flags.kills) throw new Error(`--faults ${flags.faults} and --kills ${flags.kills} disagree: they are one setting, give one`);
      const faults = flags.faults ?? flags.kills ?? DEFAULT_FAULTS;
      if (flags.cheat && flags.auditRate === undefined) throw new Error('--cheat needs --audit-rate: a cheat is only caught by the audits (rate 1 audits every interval)');
      const compression = compressionOverrides(flags);
      const config = await loadRunConfig({
        file: flags.config,
        preset: flags.preset,
        compression: compression.compression,
        overrides: {
          training: {
            steps: flags.steps ?? Math.max(MIN_CHAOS_STEPS, STEPS_PER_FAULT * faults), stages: flags.stages, replicas: flags.replicas, microbatches: flags.microbatches, schedule: flags.schedule,
            batchSize: flags.batch, seqLen: flags.seq, seed: flags.trainSeed, checkpointEvery: flags.checkpointEvery, ...compression.training,
            ...(flags.auditRate !== undefined ? { audit: { rate: flags.auditRate } } : {}),
          },
        },
      });
      if (flags.cheat) checkCheatFits(flags.cheat, config);
      const say = (line: string) => { if (!flags.json) process.stderr.write(`${line}\n`); };
      const t = config.training;
      if (flags.cheat) say(`caravan chaos: slot ${flags.cheat.replica}.${flags.cheat.stage}'s holder cheats (${flags.cheat.mode}) from step ${flags.cheat.from}; audits at rate ${flags.auditRate}`);
      say(`caravan chaos: ${faults} faults (seed ${flags.seed}) in a ${t.steps}-step run of ${t.stages} stages × ${t.replicas} replica(s), checkpoints every ${t.checkpointEvery} steps, ${flags.natsServers} NATS server(s)`);
      const report = await runChaos({
        config, kills: faults, seed: flags.seed, targets: flags.targets as KillKind[] | undefined, natsServers: flags.natsServers === '1' ? 1 : 3, standbys: flags.standbys,
        heartbeatMs: flags.heartbeat, heartbeatTimeoutMs: flags.heartbeatTimeout, log: createLogger('caravan-chaos', 'warn'),
        childLogLevel: flags.logLevel, onEvent: say, cheat: flags.cheat, snapshotEvery: flags.snapshotEvery,
      });
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      if ('cheat' in report) {
        sayCheat(report, say);
        process.exitCode = report.blamed_cheater && report.params_match_reference ? 0 : 2;
        return;
      }
      if ('error' in report) {
        // Where the run stood, even under --json (stderr), then what went wrong: the last line.
        process.stderr.write(`caravan chaos: failed at step ${report.committed_steps}${report.waiting_for ? `, waiting for ${report.waiting_for}` : ''}; run ${report.run_status ?? 'state unknown'}; slots: ${report.slots.map((x) => `${x.replica}.${x.stage}→${x.host}#${x.generation}`).join(' ') || 'none'}\n`);
        throw new Error(report.error);
      }
      sayChaos(report, say);
      if (!report.params_match_reference || report.lost_microbatches || report.duplicated_microbatches) process.exitCode = 2;
    });
}

/** --cheat, refused at parse time where it is not <mode>/<replica>/<stage>/<from step>. */
function cheatSpec(value: string): Cheat {
  try {
    return parseCheat(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

/** A cheat outside the run would never happen, and read as one the audits missed. */
function checkCheatFits(c: Cheat, config: RunConfig): void {
  const t = config.training;
  if (c.replica >= t.replicas || c.stage >= t.stages || c.from >= t.steps) {
    throw new Error(`--cheat ${c.mode}/${c.replica}/${c.stage}/${c.from}: the run has replicas 0–${t.replicas - 1}, stages 0–${t.stages - 1} and steps 0–${t.steps - 1}`);
  }
}

function sayCheat(r: CheatReport, say: (line: string) => void): void {
  const d = r.detected;
  say(d
    ? `cheat ${r.cheat.mode} at slot ${r.cheat.replica}.${r.cheat.stage} from step ${r.cheat.from}: caught at slot ${d.replica}.${d.stage} step ${d.step} (${r.detection_lag_steps} step(s) later), host ${d.host}${r.blamed_cheater ? '' : ' — NOT the cheating slot or step'}`
    : `cheat ${r.cheat.mode} at slot ${r.cheat.replica}.${r.cheat.stage} from step ${r.cheat.from}: NOT caught${r.run_failed ? ` (the run failed: ${r.run_failed})` : ''}`);
  if (r.audit_overhead !== null) say(`audits of the fault-free run: ${r.reference_audits!.audited} intervals, ${r.reference_audits!.replay_ms.toFixed(0)} ms of replay for ${r.reference_compute_ms!.toFixed(0)} ms of stage compute (overhead ${(100 * r.audit_overhead).toFixed(1)}%)`);
  for (const w of r.rewinds) say(`rewind: replica ${w.replica} trained again from step 0 (epoch ${w.epoch}, ${w.discarded_steps} committed step(s) recomputed); host ${w.banned} banned`);
  say(r.run_failed ? `the run failed: ${r.run_failed}` : `params ${r.params_match_reference ? 'match' : 'DO NOT match'} the fault-free run (${r.params_sha256?.slice(0, 16) ?? '-'}…)`);
}

function sayChaos(report: ChaosReport, say: (line: string) => void): void {
  say(`faults ${report.kills} ${JSON.stringify(report.faults_by_kind)}; lost microbatches ${report.lost_microbatches}, duplicated ${report.duplicated_microbatches}; recovery median ${report.recovery_s.median.toFixed(2)} s, p95 ${report.recovery_s.p95.toFixed(2)} s, max ${report.recovery_s.max.toFixed(2)} s`);
  for (const [kind, r] of Object.entries(report.recovery_s_by_kind)) say(`  ${kind}: ${report.faults_by_kind[kind]} × recovery median ${r.median.toFixed(2)} s, p95 ${r.p95.toFixed(2)} s, max ${r.max.toFixed(2)} s`);
  say(`params ${report.params_match_reference ? 'match' : 'DO NOT match'} the fault-free run (${report.params_sha256.slice(0, 16)}…)`);
  if (report.audits) say(`audits: ${report.audits.audited} intervals passed, ${report.audits.skipped} skipped, ${report.audits.failed.length} failed`);
}
