// A peer that holds its slot and sends NaN: stage 0's holder puts a NaN in
// one of its activation frames (CARAVAN_CHAOS_POISON). Under 'stop' the
// receiver refuses it before computing, the run fails naming the sender, and
// no stored weights hold a non-finite value; under 'skip-step' the replica
// skips that step on every stage and the run ends with finite weights.
import test from 'ava';
import { decodeSafeTensors } from '../../native/index.ts';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { openExistingRun } from '../../runtime/transport/run-resources.ts';
import { readSlot } from '../../runtime/transport/slots.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';

process.env.CARAVAN_CHAOS = '1';  // the hosts (children) read it, and the poison below, when they start

const base = { steps: 3, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 9, checkpointEvery: 1 };

function nonFiniteValues(blob: Uint8Array, source: string): number {
  let bad = 0;
  for (const [, tensor] of decodeSafeTensors(blob, source).tensors) for (const v of tensor.data) if (!Number.isFinite(v)) bad++;
  return bad;
}

test.serial("nonFinite 'stop': the poisoned frame is refused before any compute, the run fails naming its sender, stored weights are finite", async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...base, nonFinite: 'stop' } } });
  const run = 'poison-stop';
  // Step 2: by the time it opens, every stage's step-0 checkpoint is recorded (reported before its step-1 report).
  process.env.CARAVAN_CHAOS_POISON = 'act/0/0/2/0';
  const err = await t.throwsAsync(trainDistributed({ config, nats: server.url, run, log: createLogger('test', 'silent') }));
  t.regex(err!.message, /^replica 0 stage 1 \(host [\w-]+\): act consumer: an act frame from stage 0 \(host [\w-]+, generation 1\) for step 2 microbatch 0 holds 1 non-finite value\(s\), the first at index 0: stopping the run \(training.nonFinite = stop\)( \[at [^\]]+\])?$/, 'the reason, then where it was made (drivers ask for it: CARAVAN_ERROR_FRAMES)');

  const nc = await connectNats(server.url, 'inspect');
  t.teardown(() => nc.close());
  const res = await openExistingRun(nc, run, server.url);
  for (const stage of [0, 1]) {
    const checkpoint = (await readSlot(res.kv, 0, stage))!.record.checkpoint!;
    t.true(checkpoint.step <= 1, 'step 2 never committed');
    t.is(nonFiniteValues((await res.objects.getBlob(checkpoint.object))!, checkpoint.object), 0);
  }
});

test.serial("nonFinite 'skip-step': step 1 is skipped on every stage and the run ends with finite weights", async (t) => {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...base, nonFinite: 'skip-step' } } });
  process.env.CARAVAN_CHAOS_POISON = 'act/0/0/1/0';
  let finalBad = -1;
  const summary = await trainDistributed({
    config, log: createLogger('test', 'silent'),
    onFinished: async ({ url, run }) => {
      const nc = await connectNats(url, 'inspect');
      const res = await openExistingRun(nc, run, url);
      finalBad = 0;
      for (const [begin, end] of [[0, 2], [2, 4]]) finalBad += nonFiniteValues((await res.objects.getBlob(res.names.finalState(0, begin, end)))!, `final ${begin}-${end}`);
      await nc.close();
    },
  });
  t.deepEqual(summary.skipped_steps, [{ replica: 0, step: 1 }]);
  t.is(finalBad, 0, 'no weight holds a non-finite value');
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.losses[0], clean.losses[0], 'step 0 ran as in a clean run');
  t.false(Number.isFinite(summary.losses[1]));
  t.true(Number.isFinite(summary.losses[2]), 'the run went on after the skipped step');
});
