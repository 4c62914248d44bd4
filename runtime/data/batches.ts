// Deterministic training and validation batches over one token array.
// A batch is a pure function of (seed, replica, step, microbatch, row): no
// cursor, no Math.random, no dependence on call order. A stage that restarts,
// or a replica that re-runs a step after a host loss, gets bit-identical data,
// which is what "same seed, same data -> same result" needs.
// Not a loader: the tokens are already in memory (corpus.ts, token-shard.ts).
//
// Layout: the last valFraction of the tokens is held out for validation.
// Train windows are drawn only from [0, valStart) and validation windows only
// from [valStart, n), targets included, so no token is both seen and scored.

export type TokenArray = Uint16Array | Int32Array;
export type SplitName = 'train' | 'val';

export interface BatchCoordinates {
  readonly seed: number;
  readonly replica: number;
  readonly step: number;
  readonly microbatch: number;
}

export interface BatchRequest extends BatchCoordinates {
  readonly batchSize: number;
  readonly seqLen: number;
  readonly split: SplitName;
  /**
   * Replicas train on disjoint shards: with `shards` = R, replica r draws its
   * training windows from the r-th of R contiguous parts of the training
   * split (windows start there; the last may run into the next part). 1, the
   * default, is the whole split.
   */
  readonly shards?: number;
}

/** tokens and targets are (B, T) row-major; targets[b][t] = tokens[b][t+1] of the same window. */
export interface Batch {
  readonly tokens: Int32Array;
  readonly targets: Int32Array;
  /** Where each row's window begins, as an index into the whole token array. */
  readonly rowStarts: readonly number[];
}

export interface TokenDatasetOptions {
  /** Fraction of the tokens, taken from the end, held out for validation; default 0.1. */
  readonly valFraction?: number;
}

const MASK64 = (1n << 64n) - 1n;

// splitmix64 (Steele, Lea, Flood 2014): a bijection on 64 bits with full
// avalanche, so neighbouring tuples (step 7 vs 8) land far apart.
function splitmix64(x: bigint): bigint {
  let z = (x + 0x9e3779b97f4a7c15n) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

// Chained rather than summed: mix(mix(a) ^ b) keeps field order significant,
// so (step 1, microbatch 2) and (step 2, microbatch 1) differ.
function hashTuple(values: readonly number[]): bigint {
  let h = 0n;
  for (const v of values) h = splitmix64(h ^ BigInt(v));
  return h;
}

function requireInteger(where: string, name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${where}: ${name} must be an integer >= ${min}, got ${String(value)}`);
  }
}

const SPLIT_TAG: Record<SplitName, number> = { train: 0, val: 1 };

export class TokenDataset {
  readonly tokens: TokenArray;
  readonly valFraction: number;
  /** First index of the validation split; train is [0, valStart). */
  readonly valStart: number;

  constructor(tokens: TokenArray, options: TokenDatasetOptions = {}) {
    const valFraction = options.valFraction ?? 0.1;
    if (!(Number.isFinite(valFraction) && valFraction > 0 && valFraction < 1)) {
      throw new Error(`TokenDataset: valFraction must be a number in (0, 1), got ${String(valFraction)}`);
    }
    if (tokens.length === 0) throw new Error('TokenDataset: the token array is empty');
    this.tokens = tokens;
    this.valFraction = valFraction;
    this.valStart = tokens.length - Math.round(tokens.length * valFraction);
  }

  get train(): TokenArray {
    return this.tokens.subarray(0, this.valStart);
  }

  get val(): TokenArray {
    return this.tokens.subarray(this.valStart);
  }

  /** Each row starts at hash(split, seed, replica, step, microbatch, row) mod (split length - seqLen). */
  batchAt(request: BatchRequest): Batch {
    const { seed, replica, step, microbatch, batchSize, seqLen, split } = request;
    const where = `batchAt(seed ${seed}, replica ${replica}, step ${step}, microbatch ${microbatch}, split ${split})`;
    requireInteger(where, 'seed', seed, 0);
    requireInteger(where, 'replica', replica, 0);
    requireInteger(where, 'step', step, 0);
    requireInteger(where, 'microbatch', microbatch, 0);
    requireInteger(where, 'batchSize', batchSize, 1);
    requireInteger(where, 'seqLen', seqLen, 1);
    if (split !== 'train' && split !== 'val') {
      throw new Error(`${where}: split must be 'train' or 'val', got ${JSON.stringify(split)}`);
    }
    const [begin, end] = split === 'train' ? [0, this.valStart] : [this.valStart, this.tokens.length];
    const length = end - begin;
    if (length < seqLen + 1) {
      throw new Error(`${where}: the ${split} split has ${length} tokens, fewer than seqLen + 1 = ${seqLen + 1}`);
    }
    const shards = split === 'train' ? request.shards ?? 1 : 1;
    requireInteger(where, 'shards', shards, 1);
    if (replica >= shards && shards > 1) throw new Error(`${where}: replica ${replica} has no shard of ${shards}`);
    // Window starts of this replica's shard: [begin + ⌊length·r/R⌋, begin + ⌊length·(r+1)/R⌋), within the split.
    const first = shards > 1 ? Math.floor((length * replica) / shards) : 0;
    const starts = shards > 1 ? Math.min(Math.floor((length * (replica + 1)) / shards), length - seqLen) - first : length - seqLen;
    if (starts < 1) throw new Error(`${where}: shard ${replica} of ${shards} leaves no window of ${seqLen + 1} tokens in the ${split} split (${length} tokens)`);
    const choices = BigInt(starts);
    const rowStarts: number[] = [];
    for (let row = 0; row < batchSize; row++) {
      const h = hashTuple([SPLIT_TAG[split], seed, replica, step, microbatch, row]);
      rowStarts.push(begin + first + Number(h % choices));
    }
    return this.#gather(rowStarts, seqLen);
  }

  /** How many full validation batches of (batchSize, seqLen) the val split holds; 0 if none. */
  valBatchCount(batchSize: number, seqLen: number): number {
    requireInteger('valBatchCount', 'batchSize', batchSize, 1);
    requireInteger('valBatchCount', 'seqLen', seqLen, 1);
    const valLength = this.tokens.length - this.valStart;
    // Windows step by seqLen, so window w's last target is window w+1's first
    // input (as in llm.c's loader): every val token but the first is scored once.
    const windows = Math.max(0, Math.floor((valLength - 1) / seqLen));
    return Math.floor(windows / batchSize);
  }

  /** Validation batch `index`: rows are consecutive windows, starting at the beginning of the val split. */
  valBatchAt(index: number, batchSize: number, seqLen: number): Batch {
    const count = this.valBatchCount(batchSize, seqLen);
    requireInteger('valBatchAt', 'index', index, 0);
    if (count === 0) throw this.#valTooShort('valBatchAt', batchSize, seqLen);
    if (index >= count) {
      throw new Error(`valBatchAt: index ${index} is out of range: the val split holds ${count} batches of (${batchSize}, ${seqLen})`);
    }
    const rowStarts: number[] = [];
    for (let row = 0; row < batchSize; row++) rowStarts.push(this.valStart + (index * batchSize + row) * seqLen);
    return this.#gather(rowStarts, seqLen);
  }

  /** The first min(maxBatches, valBatchCount) validation batches, in order. */
  valBatches(batchSize: number, seqLen: number, maxBatches: number = Number.MAX_SAFE_INTEGER): Batch[] {
    requireInteger('valBatches', 'maxBatches', maxBatches, 1);
    const count = this.valBatchCount(batchSize, seqLen);
    if (count === 0) throw this.#valTooShort('valBatches', batchSize, seqLen);
    const batches: Batch[] = [];
    for (let i = 0; i < Math.min(count, maxBatches); i++) batches.push(this.valBatchAt(i, batchSize, seqLen));
    return batches;
  }

  #valTooShort(where: string, batchSize: number, seqLen: number): Error {
    const valLength = this.tokens.length - this.valStart;
    return new Error(
      `${where}: the val split has ${valLength} tokens, fewer than batchSize * seqLen + 1 = ${batchSize * seqLen + 1} ` +
        `needed for one batch (seqLen ${seqLen}, batchSize ${batchSize})`,
    );
  }

  #gather(rowStarts: number[], seqLen: number): Batch {
    const batchSize = rowStarts.length;
    const tokens = new Int32Array(batchSize * seqLen);
    const targets = new Int32Array(batchSize * seqLen);
    for (let row = 0; row < batchSize; row++) {
      const start = rowStarts[row];
      tokens.set(this.tokens.subarray(start, start + seqLen), row * seqLen);
      targets.set(this.tokens.subarray(start + 1, start + seqLen + 1), row * seqLen);
    }
    return { tokens, targets, rowStarts };
  }
}
