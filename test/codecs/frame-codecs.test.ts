// The wire codecs: MX int8 against the engine's own quantizer, LZ4 where it
// pays, and frames that carry them through encodeFrame/decodeFrame.
import test from 'ava';
import { mxint8RoundTrip } from '../../native/index.ts';
import { boundaryCodecs, FRAME_CODECS, lz4Codec, lz4Decode, lz4Encode, mxExponent, mxint8Codec, mxint8Decode, mxint8Encode, MX_BLOCK } from '../../runtime/codecs/index.ts';
import { preset } from '../../runtime/config/presets.ts';
import { decodeFrame, encodeFrame, FrameError, type FrameCodec, type FrameContent, type FrameExpectation } from '../../schemas/index.ts';
import { mulberry32 } from '../support/random-weights.ts';

function values(n: number, seed: number, scale = 1): Float32Array {
  const next = mulberry32(seed);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = (next() - 0.5) * scale * (next() < 0.05 ? 50 : 1);
  return x;
}

function bits(x: Float32Array): number[] {
  return [...new Uint32Array(x.buffer, x.byteOffset, x.length)];
}

test('mxint8: the wire codec gives the engine quantizer\'s bits, over scales, widths and exact halves', (t) => {
  const wrong: string[] = [];
  for (let trial = 0; trial < 300; trial++) {
    const width = [1, 3, 4, 8, 31, 32, 33, 70][trial % 8];
    const n = width * (1 + ((trial * 37) % 40));
    const x = values(n, trial, 2 ** ((trial % 60) - 30));
    // Exact halves of the grid test the rounding rule (half to even, as nearbyint).
    if (trial % 5 === 0) for (let i = 0; i < n; i++) x[i] = Math.round(x[i] * 2 ** 20) / 2;
    const engine = Float32Array.from(x);
    mxint8RoundTrip(engine, width);
    const wire = mxint8Decode(mxint8Encode(x, width), n, width);
    if (bits(engine).some((b, i) => b !== bits(wire)[i])) wrong.push(`trial ${trial} (n=${n}, width ${width})`);
  }
  t.deepEqual(wrong.slice(0, 5), []);
});

test('mxint8: values already on the grid cross the wire unchanged (the model quantized them)', (t) => {
  const x = values(1000, 3, 0.02);
  mxint8RoundTrip(x, 40);
  const encoded = mxint8Encode(x, 40);
  t.is(encoded.byteLength, 1000 + 25 * 2, 'rows of 40 take two blocks each');
  t.deepEqual(bits(mxint8Decode(encoded, 1000, 40)), bits(x));
  t.deepEqual(mxint8Encode(mxint8Decode(encoded, 1000, 40), 40), encoded, 'encode(decode(e)) = e');
  t.is(mxint8Encode(values(4 * 100, 1), 4).byteLength, 500, 'a token of 4 channels is one block: 5 bytes');
});

test('mxint8: blocks never span tokens, so a small token keeps its precision beside a large one', (t) => {
  const x = Float32Array.of(1000, -700, 3, 1, 0.001, -0.002, 0.003, 0.0005);  // two tokens of 4
  const y = mxint8Decode(mxint8Encode(x, 4), 8, 4);
  for (let i = 4; i < 8; i++) t.true(Math.abs(y[i] - x[i]) <= 0.003 / 127, `${x[i]} → ${y[i]}`);
});

test('mxint8: error is within half a step of each block\'s scale; zero and tiny blocks are exact zeros', (t) => {
  const x = values(4 * MX_BLOCK, 9, 10);
  x.fill(0, MX_BLOCK, 2 * MX_BLOCK);
  x.fill(1e-35, 2 * MX_BLOCK, 3 * MX_BLOCK);
  const y = mxint8Decode(mxint8Encode(x, MX_BLOCK), x.length, MX_BLOCK);
  for (let b = 0; b < 4; b++) {
    const block = x.subarray(b * MX_BLOCK, (b + 1) * MX_BLOCK);
    const amax = Math.max(...block.map(Math.abs));
    const e = mxExponent(amax);
    for (let i = 0; i < MX_BLOCK; i++) {
      const j = b * MX_BLOCK + i;
      if (b === 1 || b === 2) t.is(y[j], 0);
      else t.true(Math.abs(y[j] - x[j]) <= 2 ** (e - 1), `value ${j}: ${x[j]} → ${y[j]}`);
    }
    if (b !== 1 && b !== 2) t.true(amax / 2 ** e <= 127 && amax / 2 ** e > 63, 'the scale is the smallest power of two that fits');
  }
});

test('mxint8: the encoder refuses non-finite values; the decoder refuses bad exponents, codes and lengths', (t) => {
  t.throws(() => mxint8Encode(Float32Array.of(1, NaN), 2), { message: /value NaN at index 1 is not finite/ });
  t.throws(() => mxint8Encode(new Float32Array(10), 4), { message: /10 values are not rows of width 4/ });
  const good = mxint8Encode(values(40, 1), 40);
  t.throws(() => mxint8Decode(good.subarray(0, 41), 40, 40), { message: /41 bytes, 40 values in rows of 40 need 42/ });
  const badExponent = Uint8Array.from(good);
  badExponent[0] = 125;
  t.throws(() => mxint8Decode(badExponent, 40, 40), { message: /block 0 has exponent 125/ });
  const badCode = Uint8Array.from(good);
  badCode[2 + 5] = 0x80;
  t.throws(() => mxint8Decode(badCode, 40, 40), { message: /code 5 is -128/ });
  const zeroBlock = mxint8Encode(new Float32Array(40), 40);
  zeroBlock[3] = 1;
  t.throws(() => mxint8Decode(zeroBlock, 40, 40), { message: /block 0 is marked all-zero but code 1 is 1/ });
});

test('lz4: compresses what compresses, declines what does not, and refuses a lying or corrupt block', (t) => {
  const repetitive = new Uint8Array(64 * 1024).map((_, i) => i % 7);
  const packed = lz4Encode(repetitive)!;
  t.truthy(packed);
  t.true(packed.byteLength * 20 < repetitive.byteLength);
  t.deepEqual(lz4Decode(packed, repetitive.byteLength), repetitive);
  const noise = new Uint8Array(new Float32Array(values(16 * 1024, 4)).buffer);
  t.is(lz4Encode(noise), undefined, 'random floats save less than 5%: the frame goes without');
  t.throws(() => lz4Decode(packed, repetitive.byteLength + 1), { message: /declares 65536 bytes, the frame's shape needs 65537/ });
  const corrupt = Uint8Array.from(packed);
  corrupt.fill(0xff, 4, 40);
  t.throws(() => lz4Decode(corrupt, repetitive.byteLength), { message: /corrupt LZ4 block|holds \d+ bytes/ });
  t.throws(() => lz4Decode(packed.subarray(0, 3), repetitive.byteLength), { message: /too short/ });
});

const EXPECT: FrameExpectation = { run: 'r', replica: 0, stage: 1, kind: 'act', width: 8, maxSeqLen: 64, codecs: FRAME_CODECS };

function frame(data: Float32Array, shape = [2, data.length / 16, 8]): FrameContent {
  return { run: 'r', replica: 0, stage: 1, step: 3, microbatch: 1, kind: 'act', shape, data };
}

test('frames: codecs are listed in cx, undone in reverse, and skipped where LZ4 would not pay', (t) => {
  const x = values(2 * 32 * 8, 5);
  mxint8RoundTrip(x, 8);
  const quantized = decodeFrame(encodeFrame(frame(x), [mxint8Codec, lz4Codec]), EXPECT);
  t.deepEqual(quantized.codecs, ['mxint8'], 'int8 codes of noise do not compress: lz4 is left out');
  t.deepEqual(bits(quantized.data), bits(x));
  const zeros = new Float32Array(2 * 32 * 8);
  zeros[5] = 1;
  const sparse = encodeFrame(frame(zeros), [mxint8Codec, lz4Codec]);
  const back = decodeFrame(sparse, EXPECT);
  t.deepEqual(back.codecs, ['mxint8', 'lz4']);
  t.deepEqual(bits(back.data), bits(zeros));
  t.true(sparse.byteLength < 200, `a sparse frame of 512 values is ${sparse.byteLength} bytes`);
  const raw = decodeFrame(encodeFrame(frame(zeros), [lz4Codec]), EXPECT);
  t.deepEqual(raw.codecs, ['lz4']);
  t.deepEqual(bits(raw.data), bits(zeros));
});

test('frames: a receiver that lacks a codec, or gets codecs in an impossible order, refuses with a codec fault', (t) => {
  const x = values(2 * 32 * 8, 6);
  const bytes = encodeFrame(frame(x), [mxint8Codec]);
  const onlyLz4: FrameExpectation = { ...EXPECT, codecs: new Map([['lz4', lz4Codec]]) };
  const err = t.throws(() => decodeFrame(bytes, onlyLz4), { instanceOf: FrameError });
  t.is(err?.fault, 'codec');
  t.regex(err!.message, /frame uses codec "mxint8", which this receiver lacks \(it has: lz4\)/);
  const upsideDown: FrameCodec = { ...lz4Codec, name: 'lz4' };
  t.throws(() => encodeFrame(frame(x), [upsideDown, mxint8Codec]), { message: /codec mxint8 reads float32 and must come first/ });
});

test('frames: a corrupt codec payload with a matching checksum is a codec fault naming the codec', (t) => {
  const x = values(2 * 32 * 8, 7);
  const lying: FrameCodec = { ...mxint8Codec, encode: (input, width) => { const e = mxint8Codec.encode(input, width)!; e[0] = 127; return e; } };
  const err = t.throws(() => decodeFrame(encodeFrame(frame(x), [lying]), EXPECT), { instanceOf: FrameError });
  t.is(err?.fault, 'codec');
  t.regex(err!.message, /codec mxint8 cannot decode the payload: block 0 has exponent 127/);
});

test('boundaryCodecs: mxint8 only where the model quantizes a bottleneck at that boundary', (t) => {
  const model = { ...preset('tiny').model, bottlenecks: [{ at: 2, width: 4 }], bottleneckQuant: 'mxint8' as const };
  t.deepEqual(boundaryCodecs(model, 2, true).map((c) => c.name), ['mxint8', 'lz4']);
  t.deepEqual(boundaryCodecs(model, 1, true).map((c) => c.name), ['lz4']);
  t.deepEqual(boundaryCodecs({ ...model, bottleneckQuant: 'none' }, 2, false).map((c) => c.name), []);
});

test('frames with codecs: every truncation and 3,000 random byte flips end in a FrameError or the same data', (t) => {
  const zeros = new Float32Array(2 * 32 * 8);
  zeros[5] = 1;
  zeros[300] = -2;
  const sparse = encodeFrame(frame(zeros), [mxint8Codec, lz4Codec]);
  const dense = values(2 * 32 * 8, 8);
  mxint8RoundTrip(dense, 8);
  const quantized = encodeFrame(frame(dense), [mxint8Codec]);
  const wrong: string[] = [];
  const judge = (bytes: Uint8Array, sent: Float32Array, what: string) => {
    try {
      const back = decodeFrame(bytes, EXPECT);
      if (bits(back.data).some((b, i) => b !== bits(sent)[i])) wrong.push(`${what}: decoded to other data`);
    } catch (error) {
      if (!(error instanceof FrameError)) wrong.push(`${what}: ${String(error)}`);
    }
  };
  for (const [bytes, sent] of [[sparse, zeros], [quantized, dense]] as const) {
    for (let cut = 0; cut < bytes.byteLength; cut++) judge(bytes.subarray(0, cut), sent, `cut at ${cut}`);
    const next = mulberry32(bytes.byteLength);
    for (let i = 0; i < 1500; i++) {
      const copy = Uint8Array.from(bytes);
      const at = Math.floor(next() * copy.byteLength);
      copy[at] ^= 1 << Math.floor(next() * 8);
      judge(copy, sent, `flip at ${at}`);
    }
  }
  t.deepEqual(wrong.slice(0, 5), []);
});
