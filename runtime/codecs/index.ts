// The codecs a stage boundary uses, chosen from the model config: MX int8
// where the model quantizes its bottleneck (lossless then, see mxint8.ts),
// LZ4 on top where a frame compresses.
import { bottleneckWidth, type LlamaConfig } from '../../schemas/model-config.ts';
import type { CodecRegistry, FrameCodec } from '../../schemas/tensor-frame.ts';
import { lz4Codec } from './lz4-block.ts';
import { mxint8Codec } from './mxint8.ts';

export { lz4Codec, lz4Decode, lz4Encode, LZ4_MIN_RATIO } from './lz4-block.ts';
export { mxint8Codec, mxint8Decode, mxint8Encode, mxExponent, MX_BLOCK } from './mxint8.ts';

/** Every codec this build can undo. */
export const FRAME_CODECS: CodecRegistry = new Map([mxint8Codec, lz4Codec].map((c) => [c.name, c]));

/** The codecs for frames crossing the stage boundary at residual position `at` (both directions). */
export function boundaryCodecs(model: LlamaConfig, at: number, lz4: boolean): FrameCodec[] {
  const quantized = model.bottleneckQuant === 'mxint8' && bottleneckWidth(model, at) !== undefined;
  return [...(quantized ? [mxint8Codec] : []), ...(lz4 ? [lz4Codec] : [])];
}
