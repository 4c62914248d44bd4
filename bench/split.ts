// `npm run bench -- split`: a pipeline on devices of different speeds (the
// mixed-7b preset: an H100, an A100, an RTX 4090 and an RTX 3090, one stage
// each), with its layers split evenly by count and then for the devices'
// speeds (runtime/config/speed-split.ts), one after the other in one run,
// through the real coordinator, hosts, NATS and checkpoints (`caravan
// simulate`). Per split: layers per stage, utilization by stage, MFU and
// tokens/s on the simulated devices, and the speed split's ratio to the even
// one.
//
// Flags: --steps=N (default 4), --time-scale=X (simulated seconds per wall
// second, default 1), --preset=NAME (a preset with a mix of devices).
import { createLogger } from '../runtime/log.ts';
import { SIMULATE_PRESETS, splitStages, type LayerSplit } from '../runtime/synthetic/simulate-presets.ts';
import { simulate, type SimulateResult } from '../runtime/synthetic/simulate-run.ts';
import { validateRunConfig } from '../schemas/run-config.ts';

function flag(args: string[], name: string): string | undefined {
  return args.find((x) => x.startsWith(`--${name}=`))?.split('=')[1];
}

export async function benchSplit(args: string[]): Promise<Record<string, unknown>> {
  return { bench: 'split', ...await compareSplits(flag(args, 'preset') ?? 'mixed-7b', Number(flag(args, 'steps') ?? 4), Number(flag(args, 'time-scale') ?? 1)) };
}

/** The preset (one with a mix of devices) simulated with the even split and then the speed-aware one: both, and their ratio. */
export async function compareSplits(name: string, steps: number, timeScale: number): Promise<Record<string, unknown>> {
  const preset = SIMULATE_PRESETS[name];
  if (!preset?.mix) throw new Error(`bench split: --preset must name a preset with a mix of devices (${Object.keys(SIMULATE_PRESETS).filter((k) => SIMULATE_PRESETS[k].mix).join(', ')}), got '${name}'`);
  const t = preset.config.training;
  const rows = {} as Record<LayerSplit, SimulateResult>;
  for (const split of ['even', 'speed'] as const) {
    const config = validateRunConfig({ ...preset.config, training: { ...t, steps, ...splitStages(preset, { ...t.synthetic!, timeScale }, t.stages, split) } });
    const r = await simulate({ preset: name, config, datacenters: preset.datacenters, log: createLogger('bench', 'silent') });
    rows[split] = r;
    process.stderr.write(`${split}: layers ${r.layers_by_stage.join('/')}, utilization by stage ${r.utilization_by_stage.join(', ')}, MFU ${r.mfu_pct}%, ${r.tokens_per_s} tokens/s, wall ${r.wall_s} s\n`);
  }
  const per = (r: SimulateResult) => ({ layers_by_stage: r.layers_by_stage, memory_by_stage: r.memory_by_stage, utilization_by_stage: r.utilization_by_stage, utilization: r.utilization, schedule_bound: r.schedule_bound, mfu_pct: r.mfu_pct, tokens_per_s: r.tokens_per_s });
  return {
    preset: name, devices_by_stage: rows.even.devices_by_stage, stages: t.stages, microbatches: t.microbatches, steps, time_scale: timeScale, schedule: rows.even.schedule,
    even: per(rows.even), speed: per(rows.speed),
    speed_vs_even: { tokens_per_s: +(rows.speed.tokens_per_s / rows.even.tokens_per_s).toFixed(3), mfu: +(rows.speed.mfu_pct / rows.even.mfu_pct).toFixed(3) },
  };
}
