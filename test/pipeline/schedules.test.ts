// Every pipeline schedule gives the weights of the in-process run, bit for
// bit: `caravan train --stages 4 --steps 8 --seed 7 --schedule X --json`
// against `--in-process` (which runs the stages one after another with the
// fused backward), with 1, 3 and 8 microbatches and clipping active (the
// tiny preset's max norm of 1 clips its first steps: under a zero-bubble
// schedule those are the steps whose provisional update a commit rolls back);
// with a NaN under `--non-finite skip-step` every schedule ends with the same
// weights; and through `caravan chaos` kills (zb-h2, the default, is also
// the schedule of test/chaos/chaos.test.ts).
import test from 'ava';
import { scheduleNames } from '../../actors/pipeline-schedule.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const shape = ['train', '--stages', '4', '--steps', '8', '--seed', '7', '--seq', '64', '--batch', '4', '--json'];

for (const M of [1, 3, 8]) {
  test(`M=${M}: 1f1b, zb-h1 and zb-h2 over NATS give the in-process run's weights, clipped steps rolled back`, async (t) => {
    const withM = [...shape, '--microbatches', String(M)];
    const reference = summaryOf(await caravan([...withM, '--in-process']));
    for (const schedule of scheduleNames) {
      const r = summaryOf(await caravan([...withM, '--schedule', schedule]));
      t.is(r.schedule, schedule);
      t.is(r.params_sha256, reference.params_sha256, `${schedule} M=${M}`);
      t.deepEqual(r.losses, reference.losses, `${schedule} M=${M}: the same loss at every step`);
      const rolledBack = r.rolled_back_steps as Array<{ step: number }>;
      if (schedule === '1f1b') t.deepEqual(rolledBack, [], '1F1B applies nothing before its commit');
      else t.true(rolledBack.length > 0, `${schedule}: clipping was active, so some commit was not the optimistic one`);
    }
  });
}

test('a NaN under --non-finite skip-step: every schedule skips the step and ends with the same weights', async (t) => {
  // Stage 0's holder poisons microbatch 0 of step 2 on its way to stage 1 (CARAVAN_CHAOS_POISON, read by the hosts).
  const env = { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_POISON: 'act/0/0/2/0' };
  const hashes: string[] = [];
  for (const schedule of scheduleNames) {
    const r = summaryOf(await caravan([...shape, '--microbatches', '3', '--non-finite', 'skip-step', '--schedule', schedule], env));
    t.deepEqual(r.skipped_steps, [{ replica: 0, step: 2 }], schedule);
    hashes.push(r.params_sha256 as string);
  }
  t.is(new Set(hashes).size, 1, `the same weights under every schedule: ${hashes.map((h) => h.slice(0, 12)).join(', ')}`);
});

for (const schedule of ['1f1b', 'zb-h1'] as const) {
  test(`${schedule} through caravan chaos kills: the fault-free weights, nothing lost or doubled`, async (t) => {
    const out = await caravan(['chaos', '--json', '--schedule', schedule, '--steps', '10', '--stages', '3', '--seq', '32', '--batch', '4', '--microbatches', '3',
      '--checkpoint-every', '2', '--nats-servers', '1', '--kills', '3', '--seed', '5', '--targets', 'forward,backward,checkpoint',
      // Beside the suite's other runs on 2 cores a host that is only slow can miss chaos's 1.5 s heartbeat timeout; lost
      // hosts then use up the standbys and the run waits for a host that never comes (the kills here are SIGKILLs, seen either way).
      '--standbys', '3', '--heartbeat-timeout', '5000']);
    const r = summaryOf(out);
    t.is(r.kills, 3, JSON.stringify(r.kill_log));
    t.is(r.lost_microbatches, 0);
    t.is(r.duplicated_microbatches, 0);
    t.true(r.params_match_reference, `${r.params_sha256} vs the fault-free ${r.reference_params_sha256}`);
  });
}
