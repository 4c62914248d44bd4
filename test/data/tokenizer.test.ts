import test from 'ava';
import { createTokenizer, TOKENIZER_NAMES } from '../../runtime/data/index.ts';

const MIXED_TEXT = 'Call me Ishmael. Ça va? Grüße, 日本語, 🐋 and \u{FEFF}a BOM.\n\ttabs';

test('byte tokenizer: vocab 256, one token per UTF-8 byte, exact round trip', (t) => {
  const byte = createTokenizer('byte');
  t.is(byte.name, 'byte');
  t.is(byte.vocabSize, 256);
  const ids = byte.encode(MIXED_TEXT);
  t.true(ids instanceof Uint16Array);
  t.deepEqual(Array.from(ids), Array.from(Buffer.from(MIXED_TEXT, 'utf8')));
  t.is(byte.decode(ids), MIXED_TEXT);
  t.deepEqual(Array.from(byte.encode('é')), [0xc3, 0xa9]);
});

test('byte tokenizer: invalid UTF-8 decodes to U+FFFD, out-of-range ids throw', (t) => {
  const byte = createTokenizer('byte');
  t.is(byte.decode([0x41, 0xff]), 'A\uFFFD');
  t.throws(() => byte.decode([65, 256]), { message: /id 256 at index 1.*\[0, 256\)/ });
});

test('gpt2 tokenizer: vocab 50257, known ids, round trip incl. non-ASCII', (t) => {
  const gpt2 = createTokenizer('gpt2');
  t.is(gpt2.name, 'gpt2');
  t.is(gpt2.vocabSize, 50257);
  t.deepEqual(Array.from(gpt2.encode('Hello world')), [15496, 995]);
  t.deepEqual(Array.from(gpt2.encode(' the')), [262]);
  const ids = gpt2.encode(MIXED_TEXT);
  t.true(ids instanceof Uint16Array);
  t.is(gpt2.decode(ids), MIXED_TEXT);
  t.is(gpt2.decode([50256]), '<|endoftext|>');
  t.throws(() => gpt2.decode([50257]), { message: /id 50257 at index 0/ });
});

test('gpt2 tokenizer: a literal <|endoftext|> in text is ordinary text, not the EOT id', (t) => {
  const gpt2 = createTokenizer('gpt2');
  const ids = gpt2.encode('a<|endoftext|>b');
  t.false(Array.from(ids).includes(50256));
  t.is(gpt2.decode(ids), 'a<|endoftext|>b');
});

test('createTokenizer: an unknown name is named in the error with the allowed ones', (t) => {
  t.deepEqual([...TOKENIZER_NAMES], ['byte', 'gpt2']);
  t.throws(() => createTokenizer('gpt4'), { message: /unknown tokenizer "gpt4": expected one of 'byte', 'gpt2'/ });
});
