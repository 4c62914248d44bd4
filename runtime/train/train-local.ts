// The single-process training run: data from the bundled corpus (or a token
// shard), a LocalPipeline of S stages, periodic validation, checkpoints.
import { loadTokens, TokenDataset } from '../data/index.ts';
import { readStageCheckpoint, writeStageCheckpoint } from '../checkpoint/local-checkpoint.ts';
import type { EngineStage, StageSpec } from '../../native/index.ts';
import { LocalPipeline, type StepResult } from './local-pipeline.ts';
import type { RunPreset } from '../config/presets.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export interface TrainOptions extends RunPreset {
  readonly dataFile?: string;           // llm.c / nanoGPT token shard; the bundled corpus when absent
  readonly valEvery?: number;           // steps between validation passes (0: only at the end)
  readonly valBatches?: number;
  readonly checkpointDir?: string;      // written every training.checkpointEvery steps
  readonly resume?: boolean;            // load checkpointDir before training
  readonly on?: Pick<StageSpec, 'device' | 'gpu'>;  // the device every stage runs on (default the CPU)
  readonly onStep?: (step: number, result: StepResult, tokensPerSecond: number) => void;
  readonly onValidation?: (step: number, valLoss: number) => void;
  /** Called with the trained stages before the summary is returned (for exporting them). */
  readonly onFinished?: (stages: readonly EngineStage[]) => Promise<void> | void;
}

export interface TrainSummary {
  readonly steps: number;
  readonly firstLoss: number;
  readonly finalLoss: number;
  readonly valLoss: number;
  readonly lnVocab: number;
  readonly tokensPerSecond: number;
  readonly paramsSha256: string;
  readonly losses: number[];
  readonly wallSeconds: number;
}

export async function trainLocal(options: TrainOptions): Promise<TrainSummary> {
  const { model, optim, training: t } = options;
  const dataset = new TokenDataset(await loadTokens(options, options.dataFile));
  const pipeline = new LocalPipeline(model, optim, stageRanges(options), t.seed, t.cpuThreads, options.on);
  let startStep = 0;
  if (options.resume && options.checkpointDir) {
    for (const stage of pipeline.stages) await readStageCheckpoint(options.checkpointDir, stage);
    startStep = pipeline.stages[0].optimizerStep;
  }
  const B = t.batchSize, T = t.seqLen;
  const valBatches = dataset.valBatches(B, T, options.valBatches ?? 4);
  const validate = () => valBatches.reduce((s, b) => s + pipeline.evalLoss(b, B, T), 0) / valBatches.length;
  const losses: number[] = [];
  const began = performance.now();
  let tokens = 0;
  for (let step = startStep; step < t.steps; step++) {
    const microbatches = Array.from({ length: t.microbatches }, (_, microbatch) =>
      dataset.batchAt({ seed: t.seed, replica: 0, step, microbatch, batchSize: B, seqLen: T, split: 'train' }),
    );
    let result: StepResult;
    try {
      result = pipeline.trainStep(microbatches, B, T, t.maxGradNorm, t.nonFinite);
    } catch (err) {
      throw new Error(`step ${step}: ${(err as Error).message}`);
    }
    losses.push(result.loss);
    tokens += t.microbatches * B * T;
    options.onStep?.(step, result, tokens / ((performance.now() - began) / 1000));
    if (options.valEvery && (step + 1) % options.valEvery === 0 && step + 1 < t.steps) options.onValidation?.(step + 1, validate());
    if (options.checkpointDir && t.checkpointEvery && (step + 1) % t.checkpointEvery === 0) {
      for (const stage of pipeline.stages) await writeStageCheckpoint(options.checkpointDir, stage);
    }
  }
  const wallSeconds = (performance.now() - began) / 1000;
  const valLoss = validate();
  options.onValidation?.(t.steps, valLoss);
  if (options.checkpointDir) for (const stage of pipeline.stages) await writeStageCheckpoint(options.checkpointDir, stage);
  await options.onFinished?.(pipeline.stages);
  return {
    steps: t.steps,
    firstLoss: losses[0] ?? NaN,
    finalLoss: losses[losses.length - 1] ?? NaN,
    valLoss,
    lnVocab: Math.log(model.vocabSize),
    tokensPerSecond: tokens / wallSeconds,
    paramsSha256: pipeline.paramHash(),
    losses,
    wallSeconds,
  };
}
