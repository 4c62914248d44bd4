// Token shards on disk, in the two layouts GPT-2 training code already writes:
//   llm.c   (dev/data/*.py, train_gpt2.c): 256 little-endian int32 header
//           [magic 20240520, version 1 = uint16 tokens, token count, 0...],
//           then the tokens as little-endian uint16.
//   nanoGPT (data/*/prepare.py): the tokens as little-endian uint16, nothing else.
// Reading accepts both and tells them apart by the magic; writing always
// emits llm.c, whose header lets a reader catch truncation.
// Not a streaming loader: a shard is read whole (2 bytes per token).
//
// The magic cannot be mistaken for nanoGPT data with these vocabularies: it
// would have to start with the uint16 tokens 55208, 308, and 55208 is beyond
// both the byte (256) and GPT-2 (50257) vocabularies.

import { readFile, rename, rm, writeFile } from 'node:fs/promises';

export const LLMC_SHARD_MAGIC = 20240520;
export const LLMC_SHARD_VERSION = 1;
export const LLMC_HEADER_INTS = 256;
export const LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4;

export type TokenShardFormat = 'llmc' | 'nanogpt';

export interface TokenShard {
  readonly format: TokenShardFormat;
  readonly tokens: Uint16Array;
}

export interface TokenShardOptions {
  /** When given, every token must be below it. */
  readonly vocabSize?: number;
}

const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Parses shard bytes; `source` names the file in errors. */
export function parseTokenShard(bytes: Uint8Array, source: string, options: TokenShardOptions = {}): TokenShard {
  const fail = (why: string): never => {
    throw new Error(`token shard ${source}: ${why}`);
  };
  if (bytes.byteLength === 0) fail('file is empty (0 bytes)');
  if (bytes.byteLength % 2 !== 0) {
    fail(`odd byte length ${bytes.byteLength}: tokens are uint16, so the length must be even`);
  }

  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let format: TokenShardFormat = 'nanogpt';
  let start = 0;
  if (bytes.byteLength >= 4 && view.getInt32(0, true) === LLMC_SHARD_MAGIC) {
    format = 'llmc';
    if (bytes.byteLength < LLMC_HEADER_BYTES) {
      fail(`truncated llm.c header: ${bytes.byteLength} bytes, the header alone is ${LLMC_HEADER_BYTES}`);
    }
    const version = view.getInt32(4, true);
    if (version !== LLMC_SHARD_VERSION) {
      fail(`unknown llm.c shard version ${version} (expected ${LLMC_SHARD_VERSION}: uint16 tokens)`);
    }
    const declared = view.getInt32(8, true);
    const present = (bytes.byteLength - LLMC_HEADER_BYTES) / 2;
    if (declared < 0) fail(`header declares a negative token count ${declared}`);
    if (declared > present) {
      fail(`truncated: header declares ${declared} tokens but the file holds ${present} (${bytes.byteLength} bytes)`);
    }
    if (declared < present) {
      fail(`header declares ${declared} tokens but the file holds ${present} (${bytes.byteLength} bytes): trailing data`);
    }
    start = LLMC_HEADER_BYTES;
  }

  const count = (bytes.byteLength - start) / 2;
  if (count === 0) fail('holds no tokens');
  // Copy rather than view: the source Buffer may be pooled or oddly aligned,
  // and a shard that outlives this call should not pin the whole file buffer.
  const tokens = new Uint16Array(count);
  if (HOST_IS_LITTLE_ENDIAN) {
    new Uint8Array(tokens.buffer).set(bytes.subarray(start));
  } else {
    for (let i = 0; i < count; i++) tokens[i] = view.getUint16(start + 2 * i, true);
  }

  if (options.vocabSize !== undefined) {
    const vocabSize = options.vocabSize;
    for (let i = 0; i < count; i++) {
      if (tokens[i] >= vocabSize) fail(`token ${tokens[i]} at index ${i} is out of range for vocab size ${vocabSize}`);
    }
  }
  return { format, tokens };
}

/** llm.c shard bytes for `tokens`; throws on a token that uint16 cannot hold. */
export function serializeTokenShard(tokens: ArrayLike<number>, options: TokenShardOptions = {}): Uint8Array {
  const count = tokens.length;
  if (count === 0) throw new Error('token shard: refusing to write a shard with no tokens (a reader rejects it)');
  if (count > 0x7fffffff) throw new Error(`token shard: ${count} tokens exceed the int32 count of the llm.c header`);
  const limit = Math.min(options.vocabSize ?? 0x10000, 0x10000);
  const bytes = new Uint8Array(LLMC_HEADER_BYTES + 2 * count);
  const view = new DataView(bytes.buffer);
  view.setInt32(0, LLMC_SHARD_MAGIC, true);
  view.setInt32(4, LLMC_SHARD_VERSION, true);
  view.setInt32(8, count, true);
  for (let i = 0; i < count; i++) {
    const t = tokens[i];
    // Checked here because a uint16 store would silently wrap a bad id into a valid-looking one.
    if (!Number.isInteger(t) || t < 0 || t >= limit) {
      throw new Error(`token shard: token ${t} at index ${i} cannot be written: expected an integer in [0, ${limit})`);
    }
    view.setUint16(LLMC_HEADER_BYTES + 2 * i, t, true);
  }
  return bytes;
}

export async function readTokenShard(file: string, options: TokenShardOptions = {}): Promise<TokenShard> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(cause)})`;
    throw new Error(`token shard ${file}: ${why}`, { cause });
  }
  return parseTokenShard(bytes, file, options);
}

/** Writes an llm.c shard via rename, so a writer that dies midway leaves no truncated shard behind. */
export async function writeTokenShard(file: string, tokens: ArrayLike<number>, options: TokenShardOptions = {}): Promise<void> {
  const bytes = serializeTokenShard(tokens, options);
  const partial = `${file}.partial-${process.pid}`;
  try {
    await writeFile(partial, bytes);
    await rename(partial, file);
  } catch (cause) {
    await rm(partial, { force: true });
    throw new Error(`token shard ${file}: write failed: ${(cause as Error).message}`, { cause });
  }
}
