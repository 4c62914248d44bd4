import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import anyTest, { type TestFn } from 'ava';
import {
  LLMC_HEADER_BYTES,
  LLMC_SHARD_MAGIC,
  readTokenShard,
  serializeTokenShard,
  writeTokenShard,
} from '../../runtime/data/index.ts';

const test = anyTest as TestFn<{ dir: string }>;

test.beforeEach(async (t) => {
  t.context.dir = await mkdtemp(path.join(os.tmpdir(), 'caravan-shard-'));
});

test.afterEach.always(async (t) => {
  await rm(t.context.dir, { recursive: true, force: true });
});

const TOKENS = Uint16Array.from([0, 1, 255, 256, 50256, 65535, 12345, 7]);

function nanoGptBytes(tokens: ArrayLike<number>): Uint8Array {
  const bytes = new Uint8Array(tokens.length * 2);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < tokens.length; i++) view.setUint16(2 * i, tokens[i], true);
  return bytes;
}

test('llm.c shard: write -> read round trip, header as llm.c expects', async (t) => {
  const file = path.join(t.context.dir, 'train.bin');
  await writeTokenShard(file, TOKENS);
  const raw = await readFile(file);
  t.is(raw.byteLength, LLMC_HEADER_BYTES + 2 * TOKENS.length);
  t.is(raw.readInt32LE(0), LLMC_SHARD_MAGIC);
  t.is(raw.readInt32LE(4), 1);
  t.is(raw.readInt32LE(8), TOKENS.length);
  t.is(raw.readInt32LE(12), 0);

  const shard = await readTokenShard(file);
  t.is(shard.format, 'llmc');
  t.deepEqual(shard.tokens, TOKENS);
});

test('llm.c shard: Int32Array input round trips too', async (t) => {
  const file = path.join(t.context.dir, 'int32.bin');
  await writeTokenShard(file, Int32Array.from(TOKENS), { vocabSize: 65536 });
  t.deepEqual((await readTokenShard(file)).tokens, TOKENS);
});

test('nanoGPT shard: raw uint16 file is read without a header', async (t) => {
  const file = path.join(t.context.dir, 'val.bin');
  await writeFile(file, nanoGptBytes(TOKENS));
  const shard = await readTokenShard(file, { vocabSize: 65536 });
  t.is(shard.format, 'nanogpt');
  t.deepEqual(shard.tokens, TOKENS);
});

// Each corrupt case: bytes on disk, then what the error must say.
const corruptCases: Array<[string, () => Uint8Array, RegExp, number?]> = [
  ['empty file', () => new Uint8Array(0), /file is empty/],
  ['odd byte length', () => new Uint8Array(7), /odd byte length 7/],
  [
    'truncated llm.c shard',
    () => serializeTokenShard(TOKENS).subarray(0, LLMC_HEADER_BYTES + 2 * (TOKENS.length - 2)),
    /truncated: header declares 8 tokens but the file holds 6/,
  ],
  [
    'llm.c shard with trailing bytes',
    () => {
      const bytes = new Uint8Array(LLMC_HEADER_BYTES + 2 * TOKENS.length + 4);
      bytes.set(serializeTokenShard(TOKENS));
      return bytes;
    },
    /header declares 8 tokens but the file holds 10 .*trailing data/,
  ],
  [
    'truncated llm.c header',
    () => serializeTokenShard(TOKENS).subarray(0, 100),
    /truncated llm.c header: 100 bytes/,
  ],
  [
    'unknown version',
    () => {
      const bytes = serializeTokenShard(TOKENS);
      new DataView(bytes.buffer).setInt32(4, 2, true);
      return bytes;
    },
    /unknown llm.c shard version 2/,
  ],
  [
    'token beyond the vocab (llm.c)',
    () => serializeTokenShard([1, 2, 50257]),
    /token 50257 at index 2 is out of range for vocab size 50257/,
    50257,
  ],
  ['token beyond the vocab (nanoGPT)', () => nanoGptBytes([65, 300]), /token 300 at index 1 is out of range for vocab size 256/, 256],
];

for (const [name, bytes, message, vocabSize] of corruptCases) {
  test(`corrupt shard: ${name}`, async (t) => {
    const file = path.join(t.context.dir, 'corrupt.bin');
    await writeFile(file, bytes());
    const error = await t.throwsAsync(readTokenShard(file, { vocabSize }), { message });
    t.true(error?.message.includes(file), `error names the file: ${error?.message}`);
  });
}

// An llm.c shard whose magic alone is damaged would otherwise read as raw
// nanoGPT tokens: with the byte vocabulary the error would blame a token, and
// with GPT-2's a zeroed magic would train on the header's bytes.
const damagedMagics: Array<[string, number]> = [
  ['zeroed', 0],
  ['one bit flipped', LLMC_SHARD_MAGIC ^ (1 << 13)],
];
for (const [damage, magic] of damagedMagics) {
  for (const vocabSize of [256, 50257]) {
    test(`damaged llm.c magic (${damage}) is refused naming the magic, vocab size ${vocabSize}`, async (t) => {
      const file = path.join(t.context.dir, 'damaged.bin');
      const bytes = serializeTokenShard([1, 2, 3, 4], { vocabSize });
      new DataView(bytes.buffer).setInt32(0, magic, true);
      await writeFile(file, bytes);
      const error = await t.throwsAsync(readTokenShard(file, { vocabSize }), {
        message: new RegExp(`damaged llm.c header: magic is ${magic} .*expected ${LLMC_SHARD_MAGIC}`),
      });
      t.true(error?.message.includes(file), `error names the file: ${error?.message}`);
    });
  }
}

test('nanoGPT shard: a raw file as long as a header whose first tokens do not form a consistent header still reads', async (t) => {
  const file = path.join(t.context.dir, 'raw.bin');
  // 600 tokens: the bytes 1024 and up would hold 88 tokens after a header.
  // Tokens 2, 3 are (1, 0) as in llm.c's version, but the "count" is not 88.
  const tokens = Uint16Array.from({ length: 600 }, (_, i) => (i === 2 ? 1 : i === 3 ? 0 : (i * 37) % 256));
  t.not(tokens[4] | (tokens[5] << 16), (tokens.byteLength - LLMC_HEADER_BYTES) / 2);
  await writeFile(file, nanoGptBytes(tokens));
  for (const vocabSize of [256, 50257]) {
    const shard = await readTokenShard(file, { vocabSize });
    t.is(shard.format, 'nanogpt');
    t.deepEqual(shard.tokens, tokens);
  }
});

test('corrupt shard: missing file', async (t) => {
  const file = path.join(t.context.dir, 'absent.bin');
  const error = await t.throwsAsync(readTokenShard(file), { message: /file not found/ });
  t.true(error?.message.includes(file));
});

test('writing refuses tokens a uint16 shard cannot hold, and empty shards', async (t) => {
  const file = path.join(t.context.dir, 'bad.bin');
  await t.throwsAsync(writeTokenShard(file, [1, 65536]), { message: /token 65536 at index 1/ });
  await t.throwsAsync(writeTokenShard(file, [-1]), { message: /token -1 at index 0/ });
  await t.throwsAsync(writeTokenShard(file, [1.5]), { message: /token 1.5 at index 0/ });
  await t.throwsAsync(writeTokenShard(file, [5, 256], { vocabSize: 256 }), { message: /token 256 at index 1.*\[0, 256\)/ });
  await t.throwsAsync(writeTokenShard(file, []), { message: /no tokens/ });
  await t.throwsAsync(readFile(file), { code: 'ENOENT' });
});
