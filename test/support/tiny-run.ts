// A small model and deterministic corpus batches shared by the determinism tests.
import { createTokenizer, TokenDataset, tokenizeCorpus } from '../../runtime/data/index.ts';
import { DEFAULT_OPTIMIZER, type OptimizerConfig } from '../../native/index.ts';
import type { MicroBatch } from '../../runtime/train/local-pipeline.ts';
import type { LlamaConfig } from '../../schemas/model-config.ts';

export const smallModel: LlamaConfig = {
  vocabSize: 256, dModel: 64, nLayers: 4, nHeads: 4, nKvHeads: 2, ffnHidden: 160, maxSeqLen: 32, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false,
};
export const smallOptim: OptimizerConfig = { ...DEFAULT_OPTIMIZER, lr: 3e-3, warmupSteps: 3, totalSteps: 10 };
export const B = 4, T = 32, M = 2;

let dataset: TokenDataset | undefined;
export function corpusBatches(step: number, seed = 1): MicroBatch[] {
  dataset ??= new TokenDataset(tokenizeCorpus(createTokenizer('byte')));
  return Array.from({ length: M }, (_, microbatch) => dataset!.batchAt({ seed, replica: 0, step, microbatch, batchSize: B, seqLen: T, split: 'train' }));
}
