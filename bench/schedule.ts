// `npm run bench -- schedule`: each pipeline schedule on the same synthetic
// Orion-shaped pipeline (the orion-100b preset: 16 stages, M = 32, A100 speed,
// 2.36 MB frames; one replica, since 48 host processes do not fit here), one
// after another in one run, through the real coordinator, hosts, NATS,
// signatures and checkpoints (`caravan simulate`). Per schedule: measured
// utilization beside the schedule's bound, MFU, tokens/s on the simulated
// devices, steps rolled back, the peak activation stash per stage, and the
// ratio of each to 1F1B's.
//
// Flags: --steps=N (default 6: the measured window includes the first
// step's fill and the last step's drain, which a longer run spreads thinner),
// --time-scale=X (simulated seconds per wall second, default 1: an A100
// forward of a 6-layer stage is 0.75 s), --only=1f1b,zb-h2, --stages=N,
// --microbatches=N.
import { scheduleNames, type ScheduleName } from '../actors/pipeline-schedule.ts';
import { createLogger } from '../runtime/log.ts';
import { SIMULATE_PRESETS } from '../runtime/synthetic/simulate-presets.ts';
import { simulate, type SimulateResult } from '../runtime/synthetic/simulate-run.ts';
import { validateRunConfig } from '../schemas/run-config.ts';

function flag(args: string[], name: string): string | undefined {
  return args.find((x) => x.startsWith(`--${name}=`))?.split('=')[1];
}

export async function benchSchedule(args: string[]): Promise<Record<string, unknown>> {
  const preset = SIMULATE_PRESETS['orion-100b'];
  const t = preset.config.training;
  const only = flag(args, 'only')?.split(',') ?? scheduleNames;
  const unknown = only.filter((n) => !scheduleNames.includes(n as ScheduleName));
  if (unknown.length) throw new Error(`bench schedule: --only names ${unknown.join(', ')}; the schedules are ${scheduleNames.join(', ')}`);
  const steps = Number(flag(args, 'steps') ?? 6), timeScale = Number(flag(args, 'time-scale') ?? 1);
  const stages = Number(flag(args, 'stages') ?? t.stages), microbatches = Number(flag(args, 'microbatches') ?? t.microbatches);
  const rows: Record<string, SimulateResult> = {};
  for (const schedule of only as ScheduleName[]) {
    const config = validateRunConfig({
      ...preset.config,
      training: { ...t, steps, stages, microbatches, replicas: 1, schedule, synthetic: { ...t.synthetic!, timeScale } },
    });
    const r = await simulate({ preset: 'orion-100b', config, datacenters: preset.datacenters, log: createLogger('bench', 'silent') });
    rows[schedule] = r;
    process.stderr.write(`${schedule}: utilization ${r.utilization} (bound ${r.schedule_bound}, ${(100 * r.ratio_to_bound).toFixed(1)}% of it), MFU ${r.mfu_pct}%, ${r.tokens_per_s} tokens/s, ${r.rolled_back_steps} rolled back, wall ${r.wall_s} s\n`);
  }
  const base = rows['1f1b'];
  const per = Object.fromEntries(Object.entries(rows).map(([name, r]) => [name, {
    utilization: r.utilization, bound: r.schedule_bound, ratio_to_bound: r.ratio_to_bound, mfu_pct: r.mfu_pct, tokens_per_s: r.tokens_per_s,
    rolled_back_steps: r.rolled_back_steps, peak_stash_gb_by_stage: r.peak_stash_bytes_by_stage.map((b) => +(b / 1e9).toFixed(1)),
    ...(base ? { utilization_vs_1f1b: +(r.utilization / base.utilization).toFixed(3), tokens_per_s_vs_1f1b: +(r.tokens_per_s / base.tokens_per_s).toFixed(3) } : {}),
  }]));
  return {
    bench: 'schedule', preset: 'orion-100b', stages, microbatches, replicas: 1, steps, time_scale: timeScale, datacenters: preset.datacenters,
    reference: { system: 'Orion-100B', utilization: 0.818, mfu_pct: 30.8 }, schedules: per,
  };
}
