// `caravan train`: trains a model in this process (the stages chained in
// memory) with a progress bar of step, loss and tokens/s.
import cliProgress from 'cli-progress';
import { Command, InvalidArgumentError, Option } from 'commander';
import { preset, PRESETS, type RunPreset } from '../train/presets.ts';
import { trainLocal } from '../train/train-local.ts';

function positiveInt(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got '${value}'`);
    return n;
  };
}

function positiveNumber(name: string) {
  return (value: string): number => {
    const n = Number(value);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a positive number, got '${value}'`);
    return n;
  };
}

interface TrainFlags {
  preset: string;
  steps?: number;
  stages?: number;
  microbatches?: number;
  batch?: number;
  seq?: number;
  seed?: number;
  lr?: number;
  tokenizer?: 'byte' | 'gpt2';
  data?: string;
  valEvery: number;
  checkpointDir?: string;
  checkpointEvery?: number;
  resume?: boolean;
  json?: boolean;
  progress: boolean;
}

export function trainCommand(program: Command): void {
  program
    .command('train')
    .description('train a model in this process, its stages chained in memory')
    .addOption(new Option('--preset <name>', 'model and run settings').choices(Object.keys(PRESETS)).default('tiny'))
    .option('--steps <n>', 'optimizer steps', positiveInt('--steps'))
    .option('--stages <n>', 'pipeline stages the layers are split into', positiveInt('--stages'))
    .option('--microbatches <n>', 'microbatches per step', positiveInt('--microbatches'))
    .option('--batch <n>', 'sequences per microbatch', positiveInt('--batch'))
    .option('--seq <n>', 'tokens per sequence', positiveInt('--seq'))
    .option('--seed <n>', 'seed for weights and data order', (v) => Number(v))
    .option('--lr <x>', 'peak learning rate', positiveNumber('--lr'))
    .addOption(new Option('--tokenizer <name>', 'tokenizer for the bundled corpus').choices(['byte', 'gpt2']))
    .option('--data <file>', 'train on an llm.c / nanoGPT token shard instead of the bundled corpus')
    .option('--val-every <n>', 'steps between validation passes', positiveInt('--val-every'), 50)
    .option('--checkpoint-dir <dir>', 'write stage checkpoints (safetensors) here')
    .option('--checkpoint-every <n>', 'steps between checkpoints', positiveInt('--checkpoint-every'))
    .option('--resume', 'continue from the checkpoints in --checkpoint-dir')
    .option('--json', 'print one JSON summary line at the end')
    .option('--no-progress', 'no progress bar')
    .action(async (flags: TrainFlags) => {
      const base = preset(flags.preset);
      const steps = flags.steps ?? base.training.steps;
      let model = base.model;
      if (flags.tokenizer === 'gpt2' && model.vocabSize < 50257) model = { ...model, vocabSize: 50257 };
      const run: RunPreset = {
        model,
        optim: { ...base.optim, lr: flags.lr ?? base.optim.lr, totalSteps: steps },
        training: {
          ...base.training,
          steps,
          stages: flags.stages ?? base.training.stages,
          microbatches: flags.microbatches ?? base.training.microbatches,
          batchSize: flags.batch ?? base.training.batchSize,
          seqLen: flags.seq ?? base.training.seqLen,
          seed: flags.seed ?? base.training.seed,
          tokenizer: flags.tokenizer ?? base.training.tokenizer,
        },
      };
      if (run.training.seqLen > run.model.maxSeqLen) throw new Error(`--seq ${run.training.seqLen} exceeds the model's maxSeqLen ${run.model.maxSeqLen}`);
      if (flags.resume && !flags.checkpointDir) throw new Error('--resume needs --checkpoint-dir');
      const bar = flags.progress && process.stderr.isTTY && !flags.json
        ? new cliProgress.SingleBar({ format: 'step {value}/{total} |{bar}| loss {loss} | {tps} tok/s | lr {lr}', hideCursor: true }, cliProgress.Presets.shades_classic)
        : undefined;
      const log = (line: string) => { if (!flags.json) process.stderr.write(`${line}\n`); };
      log(`caravan train: ${run.model.nLayers} layers d=${run.model.dModel} V=${run.model.vocabSize} in ${run.training.stages} stages, ${steps} steps of ${run.training.microbatches}×${run.training.batchSize}×${run.training.seqLen} tokens`);
      bar?.start(steps, 0, { loss: '-', tps: '-', lr: '-' });
      const every = Math.max(1, Math.floor(steps / 10));
      const summary = await trainLocal({
        ...run,
        dataFile: flags.data,
        valEvery: flags.valEvery,
        checkpointDir: flags.checkpointDir,
        checkpointEvery: flags.checkpointEvery,
        resume: flags.resume,
        onStep: (step, r, tps) => {
          if (bar) bar.update(step + 1, { loss: r.loss.toFixed(4), tps: Math.round(tps), lr: r.lr.toExponential(2) });
          else if ((step + 1) % every === 0 || step === 0) log(`step ${step + 1}/${steps} loss ${r.loss.toFixed(4)} ${Math.round(tps)} tok/s lr ${r.lr.toExponential(2)}`);
        },
        onValidation: (step, loss) => {
          if (bar) bar.stop();
          log(`validation at step ${step}: loss ${loss.toFixed(4)}`);
          if (bar && step < steps) bar.start(steps, step, { loss: '-', tps: '-', lr: '-' });
        },
      });
      bar?.stop();
      if (flags.json) {
        const { losses, ...rest } = summary;
        process.stdout.write(`${JSON.stringify({ ...rest, losses })}\n`);
      } else {
        log(`done: loss ${summary.firstLoss.toFixed(3)} → ${summary.finalLoss.toFixed(3)} (ln V = ${summary.lnVocab.toFixed(3)}), validation ${summary.valLoss.toFixed(3)}, ${Math.round(summary.tokensPerSecond)} tok/s, params sha256 ${summary.paramsSha256.slice(0, 16)}…`);
      }
    });
}
