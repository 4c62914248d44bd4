// A dishonest slot holder under `caravan chaos --cheat`: stage 1's first
// holder cheats from step 1 on (runtime/host/fault-points.ts: scaled outputs
// with matching digests, a flipped bit its report does not own up to, an
// update left out) and the audits at rate 1 must blame slot 0.1 at step 1,
// the first step it got wrong: scale and flip by the frames it sent then;
// skip-update by its checkpoint after step 1 (--checkpoint-every 2 closes the
// interval 0–1 there), whose state is not the replay's, a step before its
// outputs would differ. Caught, the cheater's key is banned, a standby takes
// its slot and the replica trains again from its start
// (runtime/coordinator/rewinds.ts): the run must end with the fault-free
// run's weights. The fault-free reference run, audited too, passes every
// interval. A coordinator killed while an audit it drew is not done replays
// that audit after its restart, so the catch is still at step 1. Nothing the
// chaos run started may outlive the command.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const shape = ['chaos', '--json', '--kills', '0', '--nats-servers', '1', '--stages', '3', '--steps', '4', '--seq', '32', '--batch', '4', '--checkpoint-every', '2', '--audit-rate', '1'];

/** `args` with the values of some flags replaced. */
function withFlags(args: readonly string[], values: Record<string, string>): string[] {
  return args.map((a, i) => (i > 0 && args[i - 1] in values ? values[args[i - 1]] : a));
}

interface Audits { audited: number; skipped: number; failed: unknown[] }

/** The command lines of processes still running that name `run`. */
async function leftRunning(run: string): Promise<string> {
  const { stdout } = await promisify(execFile)('ps', ['-eo', 'args']);
  return stdout.split('\n').filter((line) => line.includes(run)).join('\n');
}

for (const [mode, step] of [['scale', 1], ['flip', 1], ['skip-update', 1]] as const) {
  test.serial(`${mode} from step 1 at slot 0.1: caught, blamed on slot 0.1 at step ${step}, banned, and the run ends with the honest weights`, async (t) => {
    const out = await caravan([...shape, '--cheat', `${mode}/0/1/1`]);
    const r = summaryOf(out);
    t.is(out.code, 0, out.stderr.slice(-2000));
    t.deepEqual(r.cheat, { mode, replica: 0, stage: 1, from: 1 });
    t.true(r.caught);
    const d = r.detected as { replica: number; stage: number; step: number; host: string; what: string };
    t.like(d, { replica: 0, stage: 1, step });
    t.regex(d.host, /\S/);
    t.is(r.detection_lag_steps, step - 1);
    t.is(r.run_failed, null, 'the run goes on after the catch');
    const rewinds = r.rewinds as Array<{ replica: number; epoch: number; discarded_steps: number; banned: string }>;
    t.is(rewinds.length, 1, JSON.stringify(rewinds));
    t.like(rewinds[0], { replica: 0, epoch: 1, banned: d.host });
    const ref = r.reference_audits as Audits;
    t.deepEqual(ref.failed, [], 'the honest run passes its audits');
    t.true(ref.audited > 0 && ref.skipped === 0, JSON.stringify(ref));
    t.true((r.audit_overhead as number) > 0, `overhead ${r.audit_overhead}`);
    t.true(r.params_match_reference, `the run ends with the honest weights: ${r.params_sha256} vs ${r.reference_params_sha256}`);
    t.is(await leftRunning(r.run as string), '', 'the coordinator and hosts of the chaos run are gone');
    if (mode === 'skip-update') t.regex(d.what, /its state after step 1/);
    t.log(`${mode}: ${d.what}; audit overhead ${((r.audit_overhead as number) * 100).toFixed(0)}% of the stages' compute`);
  });
}

test.serial('the coordinator killed twice around a catch, once mid-audit: the audit, the catch, the ban and the rewind hold across its restarts from control-log snapshots, and the run ends with the honest weights', async (t) => {
  // A snapshot every 8 entries: the restarts replay from one, keeping what the audits and the rewind need.
  const out = await caravan([...withFlags(shape, { '--kills': '2', '--steps': '6' }), '--targets', 'coordinator-audit,coordinator', '--seed', '3', '--cheat', 'scale/0/1/1', '--snapshot-every', '8']);
  const r = summaryOf(out);
  t.is(out.code, 0, out.stderr.slice(-2000));
  const kills = r.kill_log as Array<{ target: string; detail: string }>;
  t.deepEqual(kills.map((k) => k.target).sort(), ['coordinator', 'coordinator-audit']);
  t.log(kills.map((k) => k.detail).join('; '));
  t.true(r.caught);
  t.like(r.detected, { replica: 0, stage: 1, step: 1 });
  t.is((r.rewinds as unknown[]).length, 1, 'one rewind, not one per restart');
  t.true(r.params_match_reference, `${r.params_sha256} vs ${r.reference_params_sha256}`);
  const replays = r.control_replays as Array<{ snapshot_seq: number | null }>;
  t.true(replays.some((x) => x.snapshot_seq !== null), `a restart replayed from a snapshot: ${JSON.stringify(replays)}`);
  t.is(await leftRunning(r.run as string), '');
});

test('--cheat is refused without --audit-rate, and when it is not mode/replica/stage/step', async (t) => {
  const noRate = await caravan(['chaos', '--kills', '0', '--cheat', 'scale/0/1/1']);
  t.is(noRate.code, 1);
  t.regex(noRate.stderr, /--cheat needs --audit-rate/);
  const bad = await caravan(['chaos', '--kills', '0', '--audit-rate', '1', '--cheat', 'lie/0/1/1']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /cheat "lie\/0\/1\/1": expected <mode>\/<replica>\/<stage>\/<from step> with mode one of scale, flip, skip-update/);
});
