// Text from an exported model on onnxruntime-node: the ONNX graph of the
// whole model with a key/value cache (runtime/onnx), the next token sampled
// from the last position's logits, the text streamed as it grows. After the
// prompt each token is one incremental call; once the text outgrows
// maxSeqLen, the model sees the last maxSeqLen tokens, re-run from scratch
// each step (positions cannot slide under a cache).
import { createTokenizer } from '../data/index.ts';
import { KvCacheDecoder, openOnnxSession } from '../onnx/index.ts';
import { mulberry32 } from '../seeded-random.ts';
import { onnxForExport, type ExportedModel } from './hf-llama.ts';
import { sampleToken, type SamplingOptions } from './sample-tokens.ts';

export interface GenerateOptions extends SamplingOptions {
  readonly maxTokens: number;
  readonly seed: number;
  /** Text as it is produced: each call gets what was added since the last. */
  readonly onText?: (delta: string) => void;
}

export interface Generation {
  readonly text: string;       // the generated text, without the prompt
  readonly tokens: number[];   // the generated ids
  readonly seconds: number;
}

/** Generates from `onnx`, a kvCache graph of the exported model (model.onnx of an export, or onnxForExport with kvCache). */
export async function generateText(exported: ExportedModel, prompt: string, options: GenerateOptions, onnx?: Uint8Array): Promise<Generation> {
  const tokenizer = createTokenizer(exported.tokenizer);
  const { maxSeqLen } = exported.model;
  const ids = Array.from(tokenizer.encode(prompt));
  if (ids.length === 0) throw new Error('the prompt is empty: generation needs at least one token to start from');
  const session = await openOnnxSession(onnx ?? onnxForExport(exported, { kvCache: true }));
  const decoder = new KvCacheDecoder(session, exported.model);
  const random = mulberry32(options.seed);
  const generated: number[] = [];
  let shown = '';
  const started = performance.now();
  try {
    for (let n = 0; n < options.maxTokens; n++) {
      let logits: Float32Array;
      if (ids.length <= maxSeqLen && decoder.pastLength > 0) logits = await decoder.append(ids.slice(decoder.pastLength));
      else {
        decoder.reset();
        logits = await decoder.append(ids.slice(-maxSeqLen));
      }
      const next = sampleToken(logits, options, random);
      ids.push(next);
      generated.push(next);
      // A byte-level model can stop inside a UTF-8 sequence: hold back an
      // unfinished character rather than print a replacement for it.
      const text = tokenizer.decode(generated).replace(/\uFFFD$/, '');
      if (text.length > shown.length && text.startsWith(shown)) {
        options.onText?.(text.slice(shown.length));
        shown = text;
      }
    }
  } finally {
    await session.release();
  }
  const text = tokenizer.decode(generated);
  if (text.length > shown.length && text.startsWith(shown)) options.onText?.(text.slice(shown.length));
  return { text, tokens: generated, seconds: (performance.now() - started) / 1000 };
}
