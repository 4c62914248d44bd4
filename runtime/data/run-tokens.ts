// The tokens a run trains on: its token shard when the config names one,
// else the bundled corpus through the configured tokenizer.
import type { RunConfig } from '../../schemas/run-config.ts';
import type { TokenArray } from './batches.ts';
import { tokenizeCorpus } from './corpus.ts';
import { readTokenShard } from './token-shard.ts';
import { createTokenizer } from './tokenizer.ts';

export async function loadTokens(config: RunConfig, dataFile = config.training.dataFile): Promise<TokenArray> {
  const vocab = config.model.vocabSize;
  if (dataFile) return (await readTokenShard(dataFile, { vocabSize: vocab })).tokens;
  const tokenizer = createTokenizer(config.training.tokenizer);
  if (tokenizer.vocabSize > vocab) {
    throw new Error(`tokenizer ${tokenizer.name} has ${tokenizer.vocabSize} tokens but the model's vocabSize is ${vocab}`);
  }
  return tokenizeCorpus(tokenizer);
}
