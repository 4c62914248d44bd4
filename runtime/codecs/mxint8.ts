// MX int8 on the wire: each token's channels are cut into blocks of up to 32
// that share a power-of-two scale 2^e, sent as one signed byte, and each value
// is an int8 code, as in the OCP Microscaling MXINT8 format. Blocks never span
// tokens (see native/src/mxint8.cpp for why).
//
// Payload of x[rows, width]: [exponents: int8 × rows·⌈width/32⌉, row by row]
// [codes: int8 × rows·width].
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
const FLOAT32_MAX = 3.4028234663852886e38;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The smallest e with amax / 2^e <= 127, for a finite amax (MX_ZERO_EXPONENT below 2^-100). */
export function mxExponent(amax: number): number {
  if (!(amax >= ZERO_BELOW)) return MX_ZERO_EXPONENT;
  f32[0] = amax;  // exact: amax is a float32 value, and normal here
  const bits = u32[0];
  // amax = m · 2^E with m in [0.5, 1), E = biased exponent - 126; 128·m <= 127
  // exactly when the 23 mantissa bits of 2m (in [1, 2)) are at most
  // 63/64 · 2^23, i.e. 2m <= 127/64. Integer arithmetic only (no Math.pow).
  const E = ((bits >>> 23) & 0xff) - 126;
  return (bits & 0x7fffff) <= 0x7e0000 ? E - 7 : E - 6;
}

// Adding and subtracting 1.5·2^52 rounds a double of magnitude below 2^51 to
// an integer, halves to even (IEEE round-to-nearest-even), as nearbyint does.
const ROUNDER = 1.5 * 2 ** 52;
function roundHalfEven(v: number): number {
  return v + ROUNDER - ROUNDER;
}

// 2^-e and 2^e for every exponent a block can have, so the loops below do
// no Math.pow.
const INVERSE = new Float64Array(256);
const SCALE = new Float64Array(256);
for (let e = MIN_EXPONENT; e <= MAX_EXPONENT; e++) {
  INVERSE[e + 128] = 2 ** -e;
  SCALE[e + 128] = 2 ** e;
}

function blocksOf(values: number, width: number): number {
  if (!Number.isSafeInteger(width) || width < 1 || values % width !== 0) throw new RangeError(`${values} values are not rows of width ${width}`);
  return (values / width) * Math.ceil(width / MX_BLOCK);
}

export function mxint8EncodedLength(values: number, width: number): number {
  return values + blocksOf(values, width);
}

/** x[rows, width] → [exponents][codes]; throws on a value that is not finite (the sender's bug, not the wire's). */
export function mxint8Encode(x: Float32Array, width: number): Uint8Array {
  const n = x.length;
  const blocks = blocksOf(n, width);
  const out = new Uint8Array(blocks + n);
  const exponents = new Int8Array(out.buffer, 0, blocks);
  const codes = new Int8Array(out.buffer, blocks, n);
  let block = 0;
  for (let row = 0; row < n; row += width) {
    const rowEnd = row + width;
    for (let start = row; start < rowEnd; start += MX_BLOCK) {
      const end = start + MX_BLOCK < rowEnd ? start + MX_BLOCK : rowEnd;
      // Math.max, not a compare-and-branch: branch-free, 8x faster on noisy
      // data, and a NaN carries through to the check below.
      let amax = 0;
      for (let i = start; i < end; i++) amax = Math.max(amax, Math.abs(x[i]));
      if (!(amax <= FLOAT32_MAX)) {
        const i = x.subarray(start, end).findIndex((v) => !Number.isFinite(v)) + start;
        throw new RangeError(`mxint8: value ${x[i]} at index ${i} is not finite`);
      }
      const e = mxExponent(amax);
      exponents[block++] = e;
      if (e === MX_ZERO_EXPONENT) continue;  // codes stay 0
      const inv = INVERSE[e + 128];
      for (let i = start; i < end; i++) {
        const q = roundHalfEven(x[i] * inv);
        codes[i] = q > 127 ? 127 : q < -127 ? -127 : q;
      }
    }
  }
  return out;
}

/** [exponents][codes] of x[n / width, width] → x; throws naming the first bad block or code. */
export function mxint8Decode(bytes: Uint8Array, n: number, width: number): Float32Array {
  const blocks = blocksOf(n, width);
  if (bytes.byteLength !== blocks + n) throw new RangeError(`${bytes.byteLength} bytes, ${n} values in rows of ${width} need ${blocks + n}`);
  const exponents = new Int8Array(bytes.buffer, bytes.byteOffset, blocks);
  const codes = new Int8Array(bytes.buffer, bytes.byteOffset + blocks, n);
  const x = new Float32Array(n);
  let block = 0;
  for (let row = 0; row < n; row += width) {
    const rowEnd = row + width;
    for (let start = row; start < rowEnd; start += MX_BLOCK, block++) {
      const end = start + MX_BLOCK < rowEnd ? start + MX_BLOCK : rowEnd;
      const e = exponents[block];
      if (e === MX_ZERO_EXPONENT) {
        for (let i = start; i < end; i++) if (codes[i] !== 0) throw new RangeError(`block ${block} is marked all-zero but code ${i} is ${codes[i]}`);
        continue;
      }
      if (e < MIN_EXPONENT || e > MAX_EXPONENT) throw new RangeError(`block ${block} has exponent ${e}, outside [${MIN_EXPONENT}, ${MAX_EXPONENT}]`);
      const scale = SCALE[e + 128];
      let lowest = 0;
      for (let i = start; i < end; i++) {
        const q = codes[i];
        lowest = Math.min(lowest, q);
        x[i] = q * scale;
      }
      if (lowest === -128) {
        const i = codes.subarray(start, end).indexOf(-128) + start;
        throw new RangeError(`code ${i} is -128, outside [-127, 127]`);
      }
      // Only the top exponent can overflow: 127 · 2^121 is still a float32, 64 · 2^122 is not.
      if (e === MAX_EXPONENT) {
        for (let i = start; i < end; i++) if (!Number.isFinite(x[i])) throw new RangeError(`block ${block}: code ${codes[i]} at ${i} times 2^${e} is beyond the largest float32`);
      }
    }
  }
  return x;
}

export const mxint8Codec: FrameCodec = {
  name: 'mxint8',
  takes: 'f32',
  encodedLength: (inputBytes, width) => mxint8EncodedLength(inputBytes / 4, width),
  encode: (input, width) => mxint8Encode(new Float32Array(input.buffer, input.byteOffset, input.byteLength / 4), width),
  decode: (input, outputBytes, width) => new Uint8Array(mxint8Decode(input, outputBytes / 4, width).buffer),
};
