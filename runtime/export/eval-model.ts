// Validation loss and perplexity of an exported model on the held-out split of
// the bundled corpus (through the export's tokenizer) or of a token shard.
import { createTokenizer, readTokenShard, TokenDataset, tokenizeCorpus } from '../data/index.ts';
import { engineFromExport } from './exported-engine.ts';
import type { ExportedModel } from './hf-llama.ts';

export interface EvalOptions {
  readonly dataFile?: string;
  readonly batches: number;
  readonly batchSize: number;
  readonly seqLen: number;
  readonly threads?: number;
}

export interface EvalResult {
  readonly loss: number;        // mean cross-entropy per token, nats
  readonly perplexity: number;
  readonly tokens: number;
  readonly batches: number;
}

export async function evalExported(exported: ExportedModel, o: EvalOptions): Promise<EvalResult> {
  if (o.seqLen > exported.model.maxSeqLen) throw new Error(`--seq ${o.seqLen} exceeds the model's max_position_embeddings ${exported.model.maxSeqLen}`);
  const tokens = o.dataFile
    ? (await readTokenShard(o.dataFile, { vocabSize: exported.model.vocabSize })).tokens
    : tokenizeCorpus(createTokenizer(exported.tokenizer));
  return validationLoss(exported, new TokenDataset(tokens), o);
}

/** The mean loss over the first `batches` batches of the dataset's held-out split (`caravan dashboard` keeps its dataset between calls). */
export function validationLoss(exported: ExportedModel, dataset: TokenDataset, o: Omit<EvalOptions, 'dataFile'>): EvalResult {
  const batches = dataset.valBatches(o.batchSize, o.seqLen, o.batches);
  const stage = engineFromExport(exported, o.threads);
  let sum = 0;
  for (const b of batches) sum += stage.evalLoss(b.tokens, o.batchSize, o.seqLen, b.targets);  // tokens, targets: [batchSize, seqLen]
  const loss = sum / batches.length;
  return { loss, perplexity: Math.exp(loss), tokens: batches.length * o.batchSize * o.seqLen, batches: batches.length };
}
