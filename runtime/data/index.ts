// Public surface of the data layer: tokenizers, the bundled corpus, token
// shards (llm.c / nanoGPT), and deterministic batches.

export { TOKENIZER_NAMES, ByteTokenizer, Gpt2Tokenizer, createTokenizer } from './tokenizer.ts';
export type { Tokenizer, TokenizerName } from './tokenizer.ts';
export { CORPUS_NAME, corpusPath, readCorpusText, tokenizeCorpus } from './corpus.ts';
export {
  LLMC_SHARD_MAGIC,
  LLMC_SHARD_VERSION,
  LLMC_HEADER_INTS,
  LLMC_HEADER_BYTES,
  parseTokenShard,
  serializeTokenShard,
  readTokenShard,
  writeTokenShard,
} from './token-shard.ts';
export type { TokenShard, TokenShardFormat, TokenShardOptions } from './token-shard.ts';
export { TokenDataset } from './batches.ts';
export type { Batch, BatchCoordinates, BatchRequest, SplitName, TokenArray, TokenDatasetOptions } from './batches.ts';
export { loadTokens } from './run-tokens.ts';
