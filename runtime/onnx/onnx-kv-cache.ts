// Incremental decoding on a graph built with `kvCache`: the session keeps each
// layer's keys and values, so after the prompt every call runs one new token.
import * as ort from 'onnxruntime-node';
import { headDim, type LlamaConfig } from '../../schemas/model-config.ts';

export class KvCacheDecoder {
  private past: ort.Tensor[] = [];
  private length = 0;

  constructor(private readonly session: ort.InferenceSession, private readonly model: LlamaConfig) {
    this.reset();
  }

  /** Tokens already in the cache (their positions are 0..pastLength-1). */
  get pastLength(): number {
    return this.length;
  }

  reset(): void {
    const empty = () => new ort.Tensor('float32', new Float32Array(0), [1, this.model.nKvHeads, 0, headDim(this.model)]);
    this.past = Array.from({ length: 2 * this.model.nLayers }, empty);
    this.length = 0;
  }

  /** Runs `tokens` after what the cache holds; returns the logits of the last one [V] and keeps their keys and values. */
  async append(tokens: readonly number[]): Promise<Float32Array> {
    const { nLayers, vocabSize: V, maxSeqLen } = this.model;
    if (tokens.length === 0) throw new Error('KvCacheDecoder.append: no tokens');
    if (this.length + tokens.length > maxSeqLen) {
      throw new Error(`KvCacheDecoder.append: ${this.length} cached + ${tokens.length} new tokens exceed maxSeqLen ${maxSeqLen}`);
    }
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor('int64', BigInt64Array.from(tokens, (t) => BigInt(t)), [1, tokens.length]),
    };
    for (let i = 0; i < nLayers; i++) {
      feeds[`past_key_values.${i}.key`] = this.past[2 * i];
      feeds[`past_key_values.${i}.value`] = this.past[2 * i + 1];
    }
    const out = await this.session.run(feeds);
    for (let i = 0; i < nLayers; i++) {
      this.past[2 * i] = out[`present.${i}.key`];
      this.past[2 * i + 1] = out[`present.${i}.value`];
    }
    this.length += tokens.length;
    const logits = out.logits.data as Float32Array;
    return logits.subarray((tokens.length - 1) * V, tokens.length * V);
  }
}
