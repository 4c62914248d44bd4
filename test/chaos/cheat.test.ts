// A dishonest slot holder under `caravan chaos --cheat`: stage 1's holder
// cheats from step 1 on (runtime/host/fault-points.ts: scaled outputs with
// matching digests, a flipped bit its report does not own up to, an update
// left out) and the audits at rate 1 must stop the run blaming slot 0.1 at
// step 1, the first step it got wrong: scale and flip by the frames it sent
// then; skip-update by its checkpoint after step 1 (--checkpoint-every 2
// closes the interval 0–1 there), whose state is not the replay's, a step
// before its outputs would differ. The fault-free reference run, audited
// too, passes every interval. Nothing the chaos run started may outlive the
// command.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const shape = ['chaos', '--json', '--kills', '0', '--nats-servers', '1', '--stages', '3', '--steps', '4', '--seq', '32', '--batch', '4', '--checkpoint-every', '2', '--audit-rate', '1'];

interface Audits { audited: number; skipped: number; failed: unknown[] }

/** The command lines of processes still running that name `run`. */
async function leftRunning(run: string): Promise<string> {
  const { stdout } = await promisify(execFile)('ps', ['-eo', 'args']);
  return stdout.split('\n').filter((line) => line.includes(run)).join('\n');
}

for (const [mode, step] of [['scale', 1], ['flip', 1], ['skip-update', 1]] as const) {
  test.serial(`${mode} from step 1 at slot 0.1: caught and blamed on slot 0.1 at step ${step}`, async (t) => {
    const out = await caravan([...shape, '--cheat', `${mode}/0/1/1`]);
    const r = summaryOf(out);
    t.is(out.code, 0, out.stderr.slice(-2000));
    t.deepEqual(r.cheat, { mode, replica: 0, stage: 1, from: 1 });
    t.true(r.caught);
    const d = r.detected as { replica: number; stage: number; step: number; host: string; what: string };
    t.like(d, { replica: 0, stage: 1, step });
    t.regex(d.host, /\S/);
    t.is(r.detection_lag_steps, step - 1);
    t.regex(r.run_failed as string, new RegExp(`^audit: slot 0\\.1, held by host \\S+ \\(generation 1\\), computed step ${step} wrongly`));
    const ref = r.reference_audits as Audits;
    t.deepEqual(ref.failed, [], 'the honest run passes its audits');
    t.true(ref.audited > 0 && ref.skipped === 0, JSON.stringify(ref));
    t.true((r.audit_overhead as number) > 0, `overhead ${r.audit_overhead}`);
    t.false(r.params_match_reference);
    t.is(await leftRunning(r.run as string), '', 'the coordinator and hosts of the chaos run are gone');
    if (mode === 'skip-update') t.regex(d.what, /its state after step 1/);
    t.log(`${mode}: ${d.what}; audit overhead ${((r.audit_overhead as number) * 100).toFixed(0)}% of the stages' compute`);
  });
}

test('--cheat is refused without --audit-rate, and when it is not mode/replica/stage/step', async (t) => {
  const noRate = await caravan(['chaos', '--kills', '0', '--cheat', 'scale/0/1/1']);
  t.is(noRate.code, 1);
  t.regex(noRate.stderr, /--cheat needs --audit-rate/);
  const bad = await caravan(['chaos', '--kills', '0', '--audit-rate', '1', '--cheat', 'lie/0/1/1']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /cheat "lie\/0\/1\/1": expected <mode>\/<replica>\/<stage>\/<from step> with mode one of scale, flip, skip-update/);
});
