// `npm run bench -- orion`: Orion-100B's own shape on this machine, and what
// a mix of devices gains from the speed-aware split, in one run. First
// `orion-100b` whole: 16 stages × 3 replicas (48 hosts, sharing processes as
// `caravan simulate` has them, each whole on the wire) on simulated A100s,
// the Bridge combining the replicas every step, through the real coordinator,
// NATS, signatures, heartbeats and checkpoints; its utilization, MFU and
// tokens/s beside the figures Orion-100B published. Then `mixed-7b` split
// evenly and for its devices' speeds (bench/split.ts).
//
// Flags: --steps=N (orion-100b's steps, default 3), --time-scale=X (its
// simulated seconds per wall second, default 1), --frame-bytes=N (its frames,
// default the preset's 2.36 MB), --split-steps=N and --split-time-scale=X
// (mixed-7b's, default 4 and 1).
import { createLogger } from '../runtime/log.ts';
import { SIMULATE_PRESETS } from '../runtime/synthetic/simulate-presets.ts';
import { simulate } from '../runtime/synthetic/simulate-run.ts';
import { validateRunConfig } from '../schemas/run-config.ts';
import { compareSplits } from './split.ts';

function flag(args: string[], name: string): string | undefined {
  return args.find((x) => x.startsWith(`--${name}=`))?.split('=')[1];
}

// As Orion-100B reported them (48 A100s in 5 datacenters): whole-run tokens/s, average MFU and training utilization.
const ORION_REPORTED = { tokens_per_s: 9000, mfu_pct: 30.8, utilization: 0.818 };

export async function benchOrion(args: string[]): Promise<Record<string, unknown>> {
  const preset = SIMULATE_PRESETS['orion-100b'];
  const t = preset.config.training;
  const steps = Number(flag(args, 'steps') ?? 3), timeScale = Number(flag(args, 'time-scale') ?? 1);
  const frameBytes = Number(flag(args, 'frame-bytes') ?? t.synthetic!.frameBytes);
  const config = validateRunConfig({
    ...preset.config,
    training: { ...t, steps, synthetic: { ...t.synthetic!, timeScale, frameBytes }, bridge: { syncEvery: preset.syncEvery! } },
  });
  const r = await simulate({ preset: 'orion-100b', config, datacenters: preset.datacenters, log: createLogger('bench', 'silent') });
  process.stderr.write(`orion-100b ${r.stages} × ${r.replicas}: ${r.hosts} hosts in ${r.host_processes} processes, utilization ${r.utilization} (bound ${r.schedule_bound}), MFU ${r.mfu_pct}%, ${r.tokens_per_s} tokens/s, Bridge sync ${r.bridge?.sync_s_median} s median over ${r.bridge?.outer_steps} outer steps, wall ${r.wall_s} s\n`);
  const mixed = await compareSplits('mixed-7b', Number(flag(args, 'split-steps') ?? 4), Number(flag(args, 'split-time-scale') ?? 1));
  return {
    bench: 'orion',
    orion_100b: {
      stages: r.stages, replicas: r.replicas, hosts: r.hosts, host_processes: r.host_processes, datacenters: r.datacenters, microbatches: r.microbatches, steps: r.steps,
      schedule: r.schedule, time_scale: r.time_scale, frame_bytes: r.frame_bytes, utilization: r.utilization, schedule_bound: r.schedule_bound,
      utilization_by_stage: r.utilization_by_stage, mfu_pct: r.mfu_pct, tokens_per_s: r.tokens_per_s,
      bridge: r.bridge, wan_bytes_per_step: r.wan_bytes_per_step, wall_s: r.wall_s,
    },
    orion_reported: ORION_REPORTED,
    mixed_split: mixed,
  };
}
