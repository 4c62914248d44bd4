// The pipeline over NATS, with separate host processes, computes exactly what
// one process computes: bitwise the same losses and final parameters for 4
// stages, 1 stage, and the in-process chain.
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const common = ['train', '--json', '--steps', '4', '--seq', '32', '--batch', '4', '--microbatches', '3', '--seed', '7'];

test('caravan train --stages 4 over NATS equals --stages 1 and the in-process run, bit for bit', async (t) => {
  const [four, one, local] = await Promise.all([
    caravan([...common, '--stages', '4']),
    caravan([...common, '--stages', '1']),
    caravan([...common, '--stages', '2', '--in-process']),
  ]);
  const [a, b, c] = [summaryOf(four), summaryOf(one), summaryOf(local)];
  t.is(a.mode, 'nats');
  t.is(a.stages, 4);
  t.is(b.stages, 1);
  t.is((a.losses as number[]).length, 4);
  t.deepEqual(a.losses, b.losses);
  t.deepEqual(a.losses, c.losses);
  t.is(a.params_sha256, b.params_sha256);
  t.is(a.params_sha256, c.params_sha256);
  t.is(a.final_loss, (a.losses as number[])[3]);
  t.true((a.losses as number[])[3] < (a.losses as number[])[0], 'the loss falls');
  t.regex(a.params_sha256 as string, /^[0-9a-f]{64}$/);
  t.true((a.tokens_per_s as number) > 0);
  t.is(a.dead_letters, 0);
});

test('two replicas train independently on their own data', async (t) => {
  const r = summaryOf(await caravan([...common, '--stages', '2', '--replicas', '2', '--steps', '2']));
  const byReplica = r.params_sha256_by_replica as string[];
  t.is(byReplica.length, 2);
  t.not(byReplica[0], byReplica[1], 'different data shards give different weights (no Bridge yet)');
  t.notDeepEqual((r.losses_by_replica as number[][])[0], (r.losses_by_replica as number[][])[1]);
});
