// Outgoing frames are encoded into buffers used again once stored
// (runtime/host/frame-buffers.ts): a frame encoded into a used buffer full of
// another frame's bytes is byte for byte the one encoded into a fresh buffer,
// and decodes to the same data; a buffer of the wrong size is refused; the
// pool hands out the smallest free buffer that fits, and keeps no more than
// it was told to.
import test from 'ava';
import { FrameBuffers } from '../../runtime/host/frame-buffers.ts';
import { decodeFrame, encodeFrame, encodeFrameWithCodecs, type FrameContent } from '../../schemas/tensor-frame.ts';

const d = 16;
const content = (step: number, T: number): FrameContent => ({
  run: 'r', replica: 0, stage: 1, step, microbatch: 2, kind: 'act', shape: [1, T, d], data: new Float32Array(T * d).map((_, i) => Math.sin(i + step)),
});

test('a frame encoded into a used buffer is the one encoded into a fresh buffer, and decodes to the same data', (t) => {
  const pool = new FrameBuffers(2);
  const first = encodeFrameWithCodecs(content(0, 8), [], (n) => pool.take(n)).bytes;
  pool.give(first);
  const again = encodeFrameWithCodecs(content(1, 8), [], (n) => pool.take(n)).bytes;
  t.is(again.buffer, first.buffer, 'the same memory, used again');
  t.deepEqual(Buffer.from(again), Buffer.from(encodeFrame(content(1, 8))));
  const frame = decodeFrame(again, { run: 'r', replica: 0, stage: 1, kind: 'act', width: d, maxSeqLen: 8 });
  t.deepEqual(Array.from(frame.data), Array.from(content(1, 8).data));
  // A smaller frame in the larger buffer: only its own bytes, at the start of the buffer.
  pool.give(again);
  const smaller = encodeFrameWithCodecs(content(2, 4), [], (n) => pool.take(n)).bytes;
  t.is(smaller.buffer, first.buffer);
  t.deepEqual(Buffer.from(smaller), Buffer.from(encodeFrame(content(2, 4))));
});

test('a buffer of another size than the frame is refused', (t) => {
  const frameBytes = encodeFrame(content(0, 8)).byteLength;
  t.throws(() => encodeFrameWithCodecs(content(0, 8), [], () => new Uint8Array(frameBytes + 1)), { message: /buffer of \d+ bytes was given for a frame of \d+/ });
});

test('the smallest free buffer that fits is taken; no more than `keep` are kept, the largest', (t) => {
  const pool = new FrameBuffers(2);
  const a = pool.take(100), b = pool.take(200), c = pool.take(300);
  pool.give(b);
  pool.give(c);
  pool.give(a);  // three free, two kept: 300 and 200
  const got = pool.take(50);
  t.is(got.buffer, b.buffer, 'of 200 and 300, 200 fits 50 best; 100 was let go');
  t.is(got.byteLength, 50);
  t.is(pool.take(250).buffer, c.buffer);
  t.not(pool.take(10).buffer, a.buffer, 'nothing free: a new buffer');
});
