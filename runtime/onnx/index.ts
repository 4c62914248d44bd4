export {
  elementCount,
  headDim,
  llamaTensorSpecs,
  validateLlamaConfig,
  type LlamaConfig,
  type TensorSpec,
} from '../../schemas/model-config.ts';
export {
  buildLlamaOnnx,
  rotaryTables,
  LLAMA_ONNX_IR_VERSION,
  LLAMA_ONNX_OPSET,
  type BuildLlamaOnnxOptions,
  type ShapedWeight,
  type WeightSource,
} from './llama-graph.ts';
export { KvCacheDecoder } from './onnx-kv-cache.ts';
export { openOnnxSession, runOnnxLogits, runSessionLogits, type OnnxSessionOptions } from './onnx-logits.ts';
