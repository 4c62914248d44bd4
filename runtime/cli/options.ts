// Flag parsers shared by the commands: each names the flag in its error.
import { InvalidArgumentError } from 'commander';

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
  batch?: number;
  seq?: number;
  bottleneck?: number;
  bottleneckQuant?: 'none' | 'mxint8';
  bottleneckEmbed: boolean;
  lz4: boolean;
}

/** The model and training overrides of the compression flags. */
export function compressionOverrides(flags: RunShapeFlags) {
  return {
    bottleneckAtBoundaries: flags.bottleneck,
    model: {
      ...(flags.bottleneckQuant ? { bottleneckQuant: flags.bottleneckQuant } : {}),
      ...(flags.bottleneck !== undefined ? { bottleneckEmbed: flags.bottleneckEmbed } : {}),
    },
    training: flags.lz4 === false ? { lz4: false } : undefined,
  };
}
