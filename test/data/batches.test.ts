import test from 'ava';
import { createTokenizer, TokenDataset, type Batch, type BatchRequest } from '../../runtime/data/index.ts';

// Token value = its position, so a batch shows exactly which positions it read.
const N = 10_000;
const positions = Int32Array.from({ length: N }, (_, i) => i);
const dataset = new TokenDataset(positions);
const base: BatchRequest = { seed: 1234, replica: 0, step: 0, microbatch: 0, batchSize: 4, seqLen: 16, split: 'train' };

function positionsRead(batch: Batch, seqLen: number): number[] {
  // inputs plus the last target of each row: every position a row touches
  const read: number[] = [];
  for (let r = 0; r < batch.rowStarts.length; r++) {
    for (let t = 0; t < seqLen; t++) read.push(batch.tokens[r * seqLen + t]);
    read.push(batch.targets[r * seqLen + seqLen - 1]);
  }
  return read;
}

test('splits: the last 10% is validation, the two cover every position once', (t) => {
  t.is(dataset.valStart, 9_000);
  t.is(dataset.train.length + dataset.val.length, N);
  t.is(dataset.train[dataset.train.length - 1] + 1, dataset.val[0]);
  t.is(new TokenDataset(positions, { valFraction: 0.25 }).valStart, 7_500);
});

test('the same tuple gives the same batch, whatever was asked before', (t) => {
  const first = dataset.batchAt(base);
  dataset.batchAt({ ...base, step: 99 });
  dataset.batchAt({ ...base, split: 'val' });
  const again = new TokenDataset(positions).batchAt({ ...base });
  t.deepEqual(again, first);
  t.is(first.tokens.length, base.batchSize * base.seqLen);
  t.true(first.tokens instanceof Int32Array && first.targets instanceof Int32Array);
});

test('batch offsets are pinned: a changed hash would silently change every run\'s data', (t) => {
  // splitmix64 chained over (train=0, 1234, 0, 0, 0, row) mod (9000 - 16), checked against a Python port
  t.deepEqual(dataset.batchAt(base).rowStarts, [2505, 1698, 1118, 8117]);
});

test('each coordinate of the tuple changes the batch', (t) => {
  const reference = dataset.batchAt(base).rowStarts;
  for (const change of [{ seed: 1235 }, { replica: 1 }, { step: 1 }, { microbatch: 1 }]) {
    t.notDeepEqual(dataset.batchAt({ ...base, ...change }).rowStarts, reference, JSON.stringify(change));
  }
  // field order matters: (step 1, microbatch 2) is not (step 2, microbatch 1)
  t.notDeepEqual(
    dataset.batchAt({ ...base, step: 1, microbatch: 2 }).rowStarts,
    dataset.batchAt({ ...base, step: 2, microbatch: 1 }).rowStarts,
  );
  t.is(new Set(reference).size, reference.length, 'rows of one batch start at different offsets');
});

test('targets are the tokens shifted by one position', (t) => {
  const T = base.seqLen;
  for (const split of ['train', 'val'] as const) {
    const batch = dataset.batchAt({ ...base, split, step: 7 });
    for (let r = 0; r < base.batchSize; r++) {
      for (let i = 0; i < T; i++) {
        t.is(batch.tokens[r * T + i], batch.rowStarts[r] + i);
        t.is(batch.targets[r * T + i], batch.rowStarts[r] + i + 1);
      }
    }
  }
});

test('train and val windows never overlap (targets included)', (t) => {
  const T = base.seqLen;
  let maxTrain = -1;
  let minVal = N;
  for (let step = 0; step < 200; step++) {
    for (const read of positionsRead(dataset.batchAt({ ...base, step }), T)) maxTrain = Math.max(maxTrain, read);
    for (const read of positionsRead(dataset.batchAt({ ...base, step, split: 'val' }), T)) minVal = Math.min(minVal, read);
  }
  for (const batch of dataset.valBatches(4, T)) {
    for (const read of positionsRead(batch, T)) minVal = Math.min(minVal, read);
  }
  t.true(maxTrain < dataset.valStart, `train read up to ${maxTrain}`);
  t.true(minVal >= dataset.valStart, `val read from ${minVal}`);
  t.true(maxTrain > dataset.valStart - 200, 'train sampling reaches near the end of its split');
});

test('valBatches enumerates the val split in contiguous windows, in order', (t) => {
  const T = 16;
  const B = 4;
  const count = dataset.valBatchCount(B, T);
  t.is(count, Math.floor(Math.floor((1_000 - 1) / T) / B));
  const all = dataset.valBatches(B, T);
  t.is(all.length, count);
  const starts = all.flatMap((b) => [...b.rowStarts]);
  t.deepEqual(starts, starts.map((_, w) => dataset.valStart + w * T));
  t.deepEqual(dataset.valBatches(B, T, 3), all.slice(0, 3));
  t.deepEqual(dataset.valBatchAt(2, B, T), all[2]);
  t.deepEqual(dataset.valBatches(B, T), all, 'repeatable');
  t.throws(() => dataset.valBatchAt(count, B, T), { message: new RegExp(`index ${count} is out of range`) });
});

test('works on a tokenized Uint16Array corpus', (t) => {
  const ids = createTokenizer('byte').encode('the whale '.repeat(100));
  const small = new TokenDataset(ids);
  const batch = small.batchAt({ ...base, seqLen: 8 });
  t.deepEqual(Array.from(batch.tokens.subarray(0, 8)), Array.from(ids.subarray(batch.rowStarts[0], batch.rowStarts[0] + 8)));
});

test('errors name the offending value', (t) => {
  t.throws(() => dataset.batchAt({ ...base, step: -1 }), { message: /step must be an integer >= 0, got -1/ });
  t.throws(() => dataset.batchAt({ ...base, seed: 1.5 }), { message: /seed must be an integer >= 0, got 1.5/ });
  t.throws(() => dataset.batchAt({ ...base, replica: Number.NaN }), { message: /replica must be an integer >= 0, got NaN/ });
  t.throws(() => dataset.batchAt({ ...base, microbatch: -2 }), { message: /microbatch must be an integer >= 0, got -2/ });
  t.throws(() => dataset.batchAt({ ...base, batchSize: 0 }), { message: /batchSize must be an integer >= 1, got 0/ });
  t.throws(() => dataset.batchAt({ ...base, seqLen: 2.5 }), { message: /seqLen must be an integer >= 1, got 2.5/ });
  t.throws(() => dataset.batchAt({ ...base, split: 'test' as 'val' }), { message: /split must be 'train' or 'val', got "test"/ });
  t.throws(() => dataset.valBatches(4, 16, 0), { message: /maxBatches must be an integer >= 1, got 0/ });
  t.throws(() => new TokenDataset(positions, { valFraction: 1 }), { message: /valFraction must be a number in \(0, 1\), got 1/ });
  t.throws(() => new TokenDataset(new Int32Array(0)), { message: /empty/ });
});

test('a split shorter than seqLen + 1 is an error that says so', (t) => {
  const tiny = new TokenDataset(positions.subarray(0, 100)); // train 90, val 10
  t.throws(() => tiny.batchAt({ ...base, split: 'val', seqLen: 10, step: 3 }), {
    message: /step 3.*the val split has 10 tokens, fewer than seqLen \+ 1 = 11/,
  });
  t.throws(() => tiny.batchAt({ ...base, seqLen: 90 }), { message: /the train split has 90 tokens, fewer than seqLen \+ 1 = 91/ });
  t.notThrows(() => tiny.batchAt({ ...base, seqLen: 89 }));
  t.is(tiny.valBatchCount(4, 16), 0);
  t.throws(() => tiny.valBatches(4, 16), { message: /val split has 10 tokens, fewer than batchSize \* seqLen \+ 1 = 65/ });
});
