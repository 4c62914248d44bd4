// LZ4 block compression of a frame's payload, where it pays: a frame whose
// compressed size would not be at least LZ4_MIN_RATIO times smaller goes
// without it (and without 'lz4' in its codec list). Measured here on what
// crosses stage boundaries (npm run bench -- compression): float32
// activations and MX int8 codes hardly compress (ratio ~1.0-1.1), so most
// frames skip it; it is there for payloads that do (sparse or repetitive).
//
// Payload: [original length: uint32 little-endian][LZ4 block]. The decoder is
// LZ4_decompress_safe, bounded by the length the frame's shape implies.
import { createRequire } from 'node:module';
import type { FrameCodec } from '../../schemas/tensor-frame.ts';

interface Lz4Binding {
  encodeBound(n: number): number;
  encodeBlock(input: Buffer, output: Buffer): number;
  decodeBlock(input: Buffer, output: Buffer): number;
}

const lz4 = createRequire(import.meta.url)('lz4') as Lz4Binding;

export const LZ4_MIN_RATIO = 1.05;

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** [length][block], or undefined when the ratio is below `minRatio`. */
export function lz4Encode(input: Uint8Array, minRatio = LZ4_MIN_RATIO): Uint8Array | undefined {
  const out = Buffer.allocUnsafe(4 + lz4.encodeBound(input.byteLength));
  const n = lz4.encodeBlock(asBuffer(input), out.subarray(4));
  if (n <= 0 || input.byteLength / (4 + n) < minRatio) return undefined;  // 0: incompressible
  out.writeUInt32LE(input.byteLength, 0);
  return out.subarray(0, 4 + n);
}

export function lz4Decode(input: Uint8Array, outputBytes: number): Uint8Array {
  if (input.byteLength < 5) throw new RangeError(`${input.byteLength} bytes is too short for an LZ4 payload`);
  const declared = asBuffer(input).readUInt32LE(0);
  if (declared !== outputBytes) throw new RangeError(`the payload declares ${declared} bytes, the frame's shape needs ${outputBytes}`);
  const out = new Uint8Array(outputBytes);  // its own buffer, so float32-aligned
  const n = lz4.decodeBlock(asBuffer(input).subarray(4), asBuffer(out));
  if (n !== outputBytes) throw new RangeError(n < 0 ? `corrupt LZ4 block (error at byte ${-n})` : `the LZ4 block holds ${n} bytes, expected ${outputBytes}`);
  return out;
}

export const lz4Codec: FrameCodec = {
  name: 'lz4',
  takes: 'bytes',
  encode: (input) => lz4Encode(input),
  decode: lz4Decode,
};
