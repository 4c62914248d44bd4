// A run's pipeline schedule, as every party derives it from the run config:
// each stage's computations for one step (actors/pipeline-schedule.ts), made
// with op costs from the model's FLOPs — never from a measurement, since every
// stage must come out with rows of the same schedule — and the schedule's
// bound, the utilization it reaches in steady state with no link latency
// (actors/schedule-simulation.ts): 1F1B flushes every step, the zero-bubble
// schedules do not (their updates are post-validated).
import { pipelineSchedule, type PipelineOp, type ScheduleSpec } from '../../actors/pipeline-schedule.ts';
import { steadyStateUtilization } from '../../actors/schedule-simulation.ts';
import { opCostsFromFlops } from '../../schemas/model-flops.ts';
import { DEFAULT_SCHEDULE, type RunConfig, type ScheduleName } from '../../schemas/run-config.ts';
import { stageDevice, stageRanges } from '../../schemas/stage-layers.ts';

export interface RunSchedule {
  readonly name: ScheduleName;
  readonly spec: ScheduleSpec;
  /** Per stage, one step's computations in the order the stage runs them. */
  readonly lists: readonly (readonly PipelineOp[])[];
  /** Whether updates are applied before their commit and validated after (no flush between steps). */
  readonly postValidated: boolean;
}

export function runSchedule(config: RunConfig): RunSchedule {
  const { model, training: t } = config;
  const name = t.schedule ?? DEFAULT_SCHEDULE;
  // Stages on simulated devices of different speeds take their ops' FLOPs at their own pace.
  const pace = (s: number) => (t.synthetic ? t.synthetic.peakTflops / stageDevice(t.synthetic, s).peakTflops : 1);
  const costs = opCostsFromFlops(model, t.seqLen, stageRanges(config)).map((c, s) => ({ F: c.F * pace(s), B: c.B * pace(s), W: c.W * pace(s) }));
  const spec: ScheduleSpec = { stages: t.stages, microbatches: t.microbatches, extraInFlight: t.extraInFlight ?? 0, costs };
  return { name, spec, lists: pipelineSchedule(name, spec), postValidated: name !== '1f1b' };
}

const bounds = new Map<string, number>();

/** The schedule's bound on utilization (busy time over the pipeline's time, in steady state, with no link latency). */
export function scheduleBound(schedule: RunSchedule): number {
  const key = JSON.stringify([schedule.name, schedule.spec]);
  let bound = bounds.get(key);
  if (bound === undefined) bounds.set(key, (bound = steadyStateUtilization(schedule.lists, schedule.spec.costs, schedule.postValidated ? 'no-flush' : 'flush')));
  return bound;
}

/** The schedule's name and bound, for the run's metrics and summary. */
export function scheduleUse(config: RunConfig): { name: ScheduleName; bound: number } {
  const schedule = runSchedule(config);
  return { name: schedule.name, bound: scheduleBound(schedule) };
}
