// Flag parsers shared by the commands: each names the flag in its error.
import { scheduleNames, type ScheduleName } from '../../actors/pipeline-schedule.ts';
import { DEFAULT_SCHEDULE } from '../../schemas/run-config.ts';
import { InvalidArgumentError, Option, type Command } from 'commander';

export function positiveInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} must be a positive integer, got '${value}'`);
    return n;
  };
}

export function nonNegativeInt(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${flag} must be a non-negative integer, got '${value}'`);
    return n;
  };
}

export function positiveNumber(flag: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${flag} must be a positive number, got '${value}'`);
    return n;
  };
}

/** The flags that shape a run, shared by the commands that start one. */
export interface RunShapeFlags {
  config?: string;
  preset?: string;
  steps?: number;
  stages?: number;
  replicas?: number;
  microbatches?: number;
  schedule?: ScheduleName;
  batch?: number;
  seq?: number;
  bottleneck?: number;
  bottleneckQuant?: 'none' | 'mxint8';
  bottleneckEmbed: boolean;
  lz4: boolean;
}

/** The schedule's flags (--steps, --stages, --replicas, --microbatches, --schedule), shared by train, chaos and simulate. */
export function withScheduleOptions(command: Command, defaults: { steps?: number; stepsHelp?: string } = {}): Command {
  return command
    .option('--steps <n>', `optimizer steps${defaults.stepsHelp ? ` (${defaults.stepsHelp})` : ''}`, positiveInt('--steps'), defaults.steps)
    .option('--stages <n>', 'pipeline stages the layers are split into (S)', positiveInt('--stages'))
    .option('--replicas <n>', 'pipeline replicas, each on its own data shard', positiveInt('--replicas'))
    .option('--microbatches <n>', 'microbatches per step (M)', positiveInt('--microbatches'))
    .addOption(new Option('--schedule <name>', `pipeline schedule (training.schedule; default ${DEFAULT_SCHEDULE}): 1f1b flushes every step; zb-h1 and zb-h2 split the backward and validate each update after applying it`).choices([...scheduleNames]));
}

/** The compression flags, shared by the commands that start a run (docs/compression.md). */
export function withCompressionOptions(command: Command): Command {
  return command
    .option('--bottleneck <k>', 'a residual bottleneck of k channels at every stage boundary: k channels cross the wire instead of d', positiveInt('--bottleneck'))
    .addOption(new Option('--bottleneck-quant <q>', 'quantize each bottleneck inside the model, and so on the wire (mxint8: 8.25 bits a value)').choices(['none', 'mxint8']))
    .option('--no-bottleneck-embed', 'with --bottleneck: the receiving stage does not re-embed the tokens (by default it adds a token embedding of its own, so token identity need not cross)')
    .option('--no-lz4', 'no LZ4 on frames between stages (by default a frame gets it where it saves 5%)');
}

/** The model and training overrides of the compression flags. */
export function compressionOverrides(flags: RunShapeFlags) {
  return {
    compression: {
      bottleneckAtBoundaries: flags.bottleneck === undefined ? undefined : { width: flags.bottleneck, embed: flags.bottleneckEmbed },
      model: flags.bottleneckQuant ? { bottleneckQuant: flags.bottleneckQuant } : {},
    },
    training: flags.lz4 === false ? { lz4: false } : undefined,
  };
}

/** --audit-rate: a fraction in (0, 1]. */
export function auditRate(value: string): number {
  const n = Number(value);
  if (!(n > 0 && n <= 1)) throw new InvalidArgumentError(`--audit-rate must be a fraction in (0, 1], got '${value}'`);
  return n;
}
