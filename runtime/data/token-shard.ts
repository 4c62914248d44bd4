// Token shards on disk, in the two layouts GPT-2 training code already writes:
//   llm.c   (dev/data/*.py, train_gpt2.c): 256 little-endian int32 header
//           [magic 20240520, version 1 = uint16 tokens, token count, 0...],
//           then the tokens as little-endian uint16.
//   nanoGPT (data/*/prepare.py): the tokens as little-endian uint16, nothing else.
// Reading accepts both and tells them apart by the magic; writing always
// emits llm.c, whose header lets a reader catch truncation.
// Not a streaming loader: a shard is read whole (2 bytes per token).
//
// The magic cannot be mistaken for nanoGPT data with these vocabularies: read
// as uint16 tokens it is 20240520 & 0xffff = 55432, then 20240520 >>> 16 = 308,
// and 55432 is beyond both the byte (256) and GPT-2 (50257) vocabularies.
//
// A damaged magic is the other way round: without its magic an llm.c shard is
// a valid-looking nanoGPT file (a zeroed magic reads as tokens 0, 0, 1, 0,
// count..., every one inside GPT-2's vocabulary), so a file is refused when
// its magic is wrong but the rest of its header is consistent: at least a
// header's 1024 bytes, int32 version 1 at byte 4, and at byte 8 an int32 count
// equal to the tokens after the header. For raw tokens to pass for that, tokens
// 2..5 would have to be exactly 1, 0, count & 0xffff, count >>> 16 for this
// very file size: about one chance in vocab^4 (1 in 6e18 for GPT-2) for
// tokens that were anything like independent, and for the byte vocabulary
// only possible at all when both halves of the count are below 256. Nothing
// else of the header is required (its 253 reserved ints are zero as llm.c
// writes them), so a header whose magic and zeros are both damaged is still
// caught; one whose version or count is damaged as well reads as nanoGPT, and
// the vocabulary check is then the only guard left.

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

/** Whether the bytes after the magic are an llm.c header consistent with the file's size (the rule in the file comment). */
function looksLikeLlmcHeader(view: DataView): boolean {
  if (view.byteLength < LLMC_HEADER_BYTES) return false;
  return view.getInt32(4, true) === LLMC_SHARD_VERSION && view.getInt32(8, true) === (view.byteLength - LLMC_HEADER_BYTES) / 2;
}

const hex32 = (n: number): string => `0x${(n >>> 0).toString(16).padStart(8, '0')}`;

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
  const magic = bytes.byteLength >= 4 ? view.getInt32(0, true) : undefined;
  if (magic !== undefined && magic !== LLMC_SHARD_MAGIC && looksLikeLlmcHeader(view)) {
    fail(
      `damaged llm.c header: magic is ${magic} (${hex32(magic)}), expected ${LLMC_SHARD_MAGIC} (${hex32(LLMC_SHARD_MAGIC)}); ` +
      `its version ${LLMC_SHARD_VERSION} and token count ${view.getInt32(8, true)} match the file's ${bytes.byteLength} bytes, ` +
      'so it is not raw nanoGPT tokens',
    );
  }
  if (magic === LLMC_SHARD_MAGIC) {
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
