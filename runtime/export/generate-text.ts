// Text from an exported model on onnxruntime-node: the ONNX graph of the
// whole model (runtime/onnx), the next token sampled from the last position's
// logits, the text streamed as it grows. Each token re-runs the model over
// the context (at most maxSeqLen tokens); a key/value-cache graph would make
// that incremental and is not built yet.
import { createTokenizer } from '../data/index.ts';
import { buildLlamaOnnx, openOnnxSession, runSessionLogits } from '../onnx/index.ts';
import { mulberry32 } from '../seeded-random.ts';
import type { ExportedModel } from './hf-llama.ts';
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

export function onnxForExport(exported: ExportedModel): Uint8Array {
  return buildLlamaOnnx(exported.model, (name) => {
    const t = exported.tensors.get(name);
    if (!t) throw new Error(`the export has no tensor ${name}`);
    return t.data;
  });
}

export async function generateText(exported: ExportedModel, prompt: string, options: GenerateOptions): Promise<Generation> {
  const tokenizer = createTokenizer(exported.tokenizer);
  const { vocabSize: V, maxSeqLen } = exported.model;
  const ids = Array.from(tokenizer.encode(prompt));
  if (ids.length === 0) throw new Error('the prompt is empty: generation needs at least one token to start from');
  const session = await openOnnxSession(onnxForExport(exported));
  const random = mulberry32(options.seed);
  const generated: number[] = [];
  let shown = '';
  const started = performance.now();
  try {
    for (let n = 0; n < options.maxTokens; n++) {
      const context = ids.slice(-maxSeqLen);
      const T = context.length;
      const logits = await runSessionLogits(session, Int32Array.from(context), 1, T);
      const next = sampleToken(logits.subarray((T - 1) * V, T * V), options, random);
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
