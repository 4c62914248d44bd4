// MX int8 on the wire: blocks of 32 consecutive values share a power-of-two
// scale 2^e, sent as one signed byte, and each value is an int8 code, as in
// the OCP Microscaling MXINT8 format (8.25 bits a value).
//
// Payload: [exponent of each block: int8 × ⌈n/32⌉][codes: int8 × n].
//
// The arithmetic is the engine's own (native/src/mxint8.cpp), bit for bit: a
// model with bottleneckQuant 'mxint8' already holds its boundary tensors on
// this grid, and because the scale is a power of two, quantizing them again
// gives back the same codes. So the codec is lossless for what the model
// sends, and a boundary inside a stage computes what a wire boundary does.
import type { FrameCodec } from '../../schemas/tensor-frame.ts';

export const MX_BLOCK = 32;
/** The exponent byte of an all-zero block (largest magnitude below 2^-100). */
export const MX_ZERO_EXPONENT = -128;
const ZERO_BELOW = 2 ** -100;
const MIN_EXPONENT = -106;  // blocks from 2^-100 up
const MAX_EXPONENT = 122;   // the largest finite float32

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The smallest e with amax / 2^e <= 127, for a finite amax (MX_ZERO_EXPONENT below 2^-100). */
export function mxExponent(amax: number): number {
  if (!(amax >= ZERO_BELOW)) return MX_ZERO_EXPONENT;
  f32[0] = amax;
  const E = ((u32[0] >>> 23) & 0xff) - 126;  // amax = m · 2^E, m in [0.5, 1): amax is normal here
  return amax * 2 ** (7 - E) <= 127 ? E - 7 : E - 6;
}

// Adding and subtracting 1.5·2^52 rounds a double of magnitude below 2^51 to
// an integer, halves to even (IEEE round-to-nearest-even), as nearbyint does.
const ROUNDER = 1.5 * 2 ** 52;
function roundHalfEven(v: number): number {
  return v + ROUNDER - ROUNDER;
}

export function mxint8EncodedLength(values: number): number {
  return values + Math.ceil(values / MX_BLOCK);
}

/** x[n] → [exponents][codes]; throws on a value that is not finite (the sender's bug, not the wire's). */
export function mxint8Encode(x: Float32Array): Uint8Array {
  const n = x.length;
  const blocks = Math.ceil(n / MX_BLOCK);
  const out = new Uint8Array(blocks + n);
  const exponents = new Int8Array(out.buffer, 0, blocks);
  const codes = new Int8Array(out.buffer, blocks, n);
  for (let b = 0; b < blocks; b++) {
    const start = b * MX_BLOCK;
    const end = Math.min(start + MX_BLOCK, n);
    let amax = 0;
    for (let i = start; i < end; i++) {
      const a = Math.abs(x[i]);
      if (!Number.isFinite(a)) throw new RangeError(`mxint8: value ${x[i]} at index ${i} is not finite`);
      if (a > amax) amax = a;
    }
    const e = mxExponent(amax);
    exponents[b] = e;
    if (e === MX_ZERO_EXPONENT) continue;  // codes stay 0
    const inv = 2 ** -e;
    for (let i = start; i < end; i++) {
      const q = roundHalfEven(x[i] * inv);
      codes[i] = q > 127 ? 127 : q < -127 ? -127 : q;
    }
  }
  return out;
}

/** [exponents][codes] of n values → x[n]; throws naming the first bad block or code. */
export function mxint8Decode(bytes: Uint8Array, n: number): Float32Array {
  const blocks = Math.ceil(n / MX_BLOCK);
  if (bytes.byteLength !== blocks + n) throw new RangeError(`${bytes.byteLength} bytes, ${n} values need ${blocks + n}`);
  const exponents = new Int8Array(bytes.buffer, bytes.byteOffset, blocks);
  const codes = new Int8Array(bytes.buffer, bytes.byteOffset + blocks, n);
  const x = new Float32Array(n);
  for (let b = 0; b < blocks; b++) {
    const e = exponents[b];
    const start = b * MX_BLOCK;
    const end = Math.min(start + MX_BLOCK, n);
    if (e === MX_ZERO_EXPONENT) {
      for (let i = start; i < end; i++) if (codes[i] !== 0) throw new RangeError(`block ${b} is marked all-zero but code ${i} is ${codes[i]}`);
      continue;
    }
    if (e < MIN_EXPONENT || e > MAX_EXPONENT) throw new RangeError(`block ${b} has exponent ${e}, outside [${MIN_EXPONENT}, ${MAX_EXPONENT}]`);
    const scale = 2 ** e;
    for (let i = start; i < end; i++) {
      const q = codes[i];
      if (q === -128) throw new RangeError(`code ${i} is -128, outside [-127, 127]`);
      x[i] = q * scale;
    }
  }
  return x;
}

export const mxint8Codec: FrameCodec = {
  name: 'mxint8',
  takes: 'f32',
  encodedLength: (inputBytes) => mxint8EncodedLength(inputBytes / 4),
  encode: (input) => mxint8Encode(new Float32Array(input.buffer, input.byteOffset, input.byteLength / 4)),
  decode: (input, outputBytes) => {
    const x = mxint8Decode(input, outputBytes / 4);
    return new Uint8Array(x.buffer);
  },
};
