// Audits by exact replay (runtime/coordinator/audits.ts): an honest run
// audited at rate 1 passes every interval (a zero-bubble schedule with
// roll-backs, 1F1B, checkpoints and the final interval alike) and ends with
// the weights of the same run without audits; a host that cheats from step k
// (CARAVAN_CHAOS_CHEAT, as in test/chaos/cheat.test.ts through `caravan
// chaos`) is caught naming its slot, its host and the step, banned, and its
// replica trained again: the run ends with the honest weights; the draw
// audits the rate's fraction of intervals; bad settings are refused by name.
import test from 'ava';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { formatStatus } from '../../runtime/cli/status-command.ts';
import { auditDrawn } from '../../runtime/coordinator/audits.ts';
import { parseCheat } from '../../runtime/host/fault-points.ts';
import { PRESETS } from '../../runtime/config/presets.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const shape = ['train', '--stages', '3', '--steps', '5', '--seed', '7', '--seq', '32', '--batch', '4', '--microbatches', '3', '--checkpoint-every', '2', '--json'];

for (const schedule of ['zb-h2', '1f1b'] as const) {
  // One after another: each pair is four runs whose coordinator replays beside them, heavy on 2 cores.
  test.serial(`${schedule}: an honest run audited at rate 1 passes every interval and keeps its weights`, async (t) => {
    const plain = summaryOf(await caravan([...shape, '--schedule', schedule]));
    const audited = summaryOf(await caravan([...shape, '--schedule', schedule, '--audit-rate', '1']));
    t.is(audited.params_sha256, plain.params_sha256, 'auditing changes nothing');
    const a = audited.audits as { audited: number; skipped: number; steps_replayed: number; failed: unknown[] };
    // 3 stages × intervals (0–1), (2–3) and the final (4): every step of every slot replayed once.
    t.deepEqual({ audited: a.audited, skipped: a.skipped, steps: a.steps_replayed, failed: a.failed }, { audited: 9, skipped: 0, steps: 15, failed: [] });
    t.is(plain.audits, undefined, 'no audits unless asked for');
  });
}

test.serial('a cheater is caught at the step it starts, by name; banned, its replica trained again, and the run ends with the honest weights', async (t) => {
  const plain = summaryOf(await caravan(shape));
  const r = await caravan([...shape, '--audit-rate', '1', '--standbys', '1'], { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_CHEAT: 'scale/0/1/2' });
  t.is(r.code, 0, r.stderr.slice(-2000));
  const summary = summaryOf(r);
  const audits = summary.audits as { failed: Array<{ replica: number; stage: number; step: number; host: string; what: string }>; rewinds: Array<{ replica: number; epoch: number; banned: string }> };
  t.like(audits.failed[0], { replica: 0, stage: 1, step: 2 });
  t.regex(audits.failed[0].what, /^the act frames it reported sending at step 2 \(digest [0-9a-f]{12}…\) are not what its inputs and state give/);
  t.like(audits.rewinds, [{ replica: 0, epoch: 1, banned: audits.failed[0].host }]);
  t.is(summary.params_sha256, plain.params_sha256, 'the weights of the run without a cheater');
  t.deepEqual(summary.losses, plain.losses, 'and its losses, step by step');
});

test('the draw audits about the rate\'s fraction of intervals, the same in every process', (t) => {
  for (const rate of [0.05, 0.25, 0.5]) {
    let drawn = 0;
    const n = 20_000;
    for (let i = 0; i < n; i++) if (auditDrawn(11, rate, i % 3, Math.floor(i / 3) % 16, i)) drawn++;
    t.true(Math.abs(drawn / n - rate) < 0.02, `rate ${rate}: drew ${drawn / n}`);
  }
  t.is(auditDrawn(1, 0.5, 0, 2, 7), auditDrawn(1, 0.5, 0, 2, 7));
  t.true(auditDrawn(1, 1, 0, 0, 0), 'rate 1 draws every interval');
});

test('bad audit settings are refused by name', (t) => {
  const tiny = PRESETS.tiny;
  const withAudit = (audit: unknown, more: Record<string, unknown> = {}) => () => validateRunConfig({ ...tiny, training: { ...tiny.training, audit, ...more } });
  t.throws(withAudit({ rate: 0 }), { message: /training\.audit\.rate must be in \(0, 1\], got 0/ });
  t.throws(withAudit({ rate: 1.5 }), { message: /training\.audit\.rate must be in \(0, 1\]/ });
  t.throws(withAudit({ rate: 0.5, seed: -1 }), { message: /training\.audit\.seed must be a non-negative integer/ });
  t.throws(withAudit('often'), { message: /training\.audit must be an object/ });
  t.throws(withAudit({ rate: 0.5 }, { synthetic: { device: 'A100', peakTflops: 312, efficiency: 0.5, timeScale: 1, frameBytes: 1024 } }), { message: /training\.audit needs real compute/ });
  t.throws(withAudit({ rate: 0.5 }, { replicas: 2, bridge: { syncEvery: 2 } }), { message: /not built for runs with a Bridge/ });
  t.notThrows(withAudit({ rate: 0.5 }));
  t.throws(() => parseCheat('lie/0/1/2'), { message: /cheat "lie\/0\/1\/2": expected <mode>\/<replica>\/<stage>\/<from step> with mode one of scale, flip, skip-update/ });
  t.throws(() => parseCheat('scale/0/1'), { message: /expected <mode>/ });
});

test('--audit-rate outside (0, 1] is refused before anything starts', async (t) => {
  const r = await caravan([...shape, '--audit-rate', '2']);
  t.is(r.code, 1);
  t.regex(r.stderr, /--audit-rate must be a fraction in \(0, 1\], got '2'/);
});

test('status shows the audits: intervals passed and skipped, and the difference that failed the run', (t) => {
  const text = formatStatus({
    run: 'r1', hosts: [], slots: [], summary: null, dead_letters: { count: 0, recent: [] }, bridge: [],
    state: {
      status: 'failed', step: 3, loss: 2.5, tokens_per_s: 100, started_at: null, updated: '', reason: 'audit: …',
      audits: { rate: 0.5, audited: 4, skipped: 1, steps_replayed: 8, replay_ms: 2345, failed: [{ replica: 0, stage: 1, step: 2, host: 'vm-7', what: 'the act frames it reported sending at step 2 …' }] },
    },
  });
  t.regex(text, /^audits \(rate 0\.5\): 4 intervals passed \(8 slot-steps replayed in 2\.3 s\), 1 skipped, 1 failed$/m);
  t.regex(text, /^ {2}slot 0\.1 step 2 \(host vm-7\): the act frames it reported sending at step 2 …$/m);
});
