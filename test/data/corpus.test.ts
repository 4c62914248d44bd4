import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { corpusPath, createTokenizer, readCorpusText, tokenizeCorpus } from '../../runtime/data/index.ts';

test('the bundled corpus is Moby-Dick and larger than 1 MB', (t) => {
  const text = readCorpusText();
  t.true(Buffer.byteLength(text, 'utf8') > 1_000_000);
  t.true(text.includes('Call me Ishmael.'));
  t.true(corpusPath().endsWith(path.join('datasets-moby-dick', 'data', 'data.txt')));
});

test('tokenizeCorpus: byte tokens are the UTF-8 bytes', (t) => {
  const text = readCorpusText();
  const bytes = tokenizeCorpus(createTokenizer('byte'));
  t.is(bytes.length, Buffer.byteLength(text, 'utf8'));
  t.deepEqual(bytes.subarray(0, 4), Uint16Array.from(Buffer.from(text.slice(0, 4), 'utf8')));
});

test('gpt2 tokens of the corpus fit the vocab and round trip', (t) => {
  // A 50 kB slice: the whole book takes ~0.5 s to encode, too slow for a unit test.
  const gpt2 = createTokenizer('gpt2');
  const text = readCorpusText().slice(0, 50_000);
  const ids = gpt2.encode(text);
  t.true(ids.length > 5_000 && ids.length < text.length);
  t.true(ids.every((id) => id < gpt2.vocabSize));
  t.is(gpt2.decode(ids), text);
});

test('a missing corpus file raises an error naming the file', (t) => {
  const missing = path.join(os.tmpdir(), 'caravan-no-such-corpus', 'data.txt');
  t.throws(() => readCorpusText(missing), { message: (m) => m.includes('file not found') && m.includes(missing) });
  t.throws(() => tokenizeCorpus(createTokenizer('byte'), missing), { message: /file not found/ });
});
