// A run's config from a preset, a YAML, TOML or JSON file laid over it, and
// flags laid over both; validated before anything starts.
import { readFile } from 'node:fs/promises';
import { parse as parseToml } from 'smol-toml';
import { parse as parseYaml } from 'yaml';
import { validateRunConfig, type RunConfig } from '../../schemas/run-config.ts';
import { preset } from '../config/presets.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export interface ConfigOverrides {
  readonly model?: Partial<RunConfig['model']>;
  readonly optim?: Partial<RunConfig['optim']>;
  readonly training?: Partial<RunConfig['training']>;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    // A section the base lacks is merged into an empty one, so unset fields (undefined) never land at any depth.
    out[k] = isObject(v) ? merge(isObject(base[k]) ? (base[k] as Record<string, unknown>) : {}, v) : v;
  }
  return out;
}

/** Reads a config file: `preset: NAME` plus any of model/optim/training, each partial. */
export async function readConfigFile(file: string): Promise<{ preset?: string } & ConfigOverrides> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read config ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  return parseConfigText(text, file);
}

/** A config file's text (TOML when `file` ends in .toml, else YAML, which also reads JSON), checked for its sections only. */
export function parseConfigText(text: string, file: string): { preset?: string } & ConfigOverrides {
  const toml = file.endsWith('.toml');
  let parsed: unknown;
  try {
    parsed = toml ? parseToml(text) : parseYaml(text);  // YAML also reads JSON
  } catch (err) {
    throw new Error(`config ${file} is not valid ${toml ? 'TOML' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`);
  }
  if (!isObject(parsed)) throw new Error(`config ${file} must be a mapping with preset, model, optim or training`);
  const unknown = Object.keys(parsed).filter((k) => !['preset', 'model', 'optim', 'training'].includes(k));
  if (unknown.length) throw new Error(`config ${file}: unknown section ${unknown.join(', ')} (expected preset, model, optim, training)`);
  return parsed as { preset?: string } & ConfigOverrides;
}

export interface LoadRunConfigOptions {
  readonly file?: string;
  readonly preset?: string;
  readonly overrides?: ConfigOverrides;
  /**
   * Applied once the rest is valid, because bottlenecks sit at the split's
   * boundaries: a residual bottleneck at every stage boundary (replacing any
   * in the config), and the model's other compression settings.
   */
  readonly compression?: {
    readonly bottleneckAtBoundaries?: { readonly width: number; readonly embed: boolean };
    readonly model?: Partial<RunConfig['model']>;
  };
}

export async function loadRunConfig(options: LoadRunConfigOptions): Promise<RunConfig> {
  const fromFile = options.file ? await readConfigFile(options.file) : {};
  const base = preset(options.preset ?? fromFile.preset ?? 'tiny') as unknown as Record<string, unknown>;
  let merged = merge(base, fromFile as Record<string, unknown>);
  delete merged.preset;
  merged = merge(merged, (options.overrides ?? {}) as Record<string, unknown>);
  const steps = (merged.training as Record<string, unknown>).steps;
  // The schedule ends with the run unless the config says otherwise.
  if ((fromFile.optim?.totalSteps ?? options.overrides?.optim?.totalSteps) === undefined) {
    merged = merge(merged, { optim: { totalSteps: steps } });
  }
  const config = validateRunConfig(merged);
  const compression = options.compression;
  if (!compression) return config;
  let model = { ...config.model, ...compression.model };
  const wanted = compression.bottleneckAtBoundaries;
  if (wanted) {
    const bottlenecks = stageRanges(config).slice(1).map(([at]) => ({ at, width: wanted.width }));
    if (bottlenecks.length === 0) throw new Error('--bottleneck needs at least 2 stages: a bottleneck sits at a stage boundary');
    model = { ...model, bottlenecks, bottleneckEmbed: wanted.embed };
  }
  return validateRunConfig({ ...config, model });
}
