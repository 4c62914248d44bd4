// `npm run bench -- audit`: what audits by exact replay cost and catch.
// Cost: the tiny preset over NATS (embedded server, 4 host processes,
// checkpoints every 2 steps) without audits and audited at rates 1 and 0.25,
// alternated; medians of tokens/s, and the replays' time per slot-step.
// Catch: a replay is exact, so an audited interval in which a slot cheated
// always finds it (test/security/audit.test.ts, test/chaos/cheat.test.ts);
// whether a cheater is caught within n of its intervals is then the draw's
// alone. Measured over simulated cheaters (a seed, a slot, a first interval
// each) with the coordinator's own draw, beside 1 − (1 − rate)^n.
import { loadRunConfig } from '../runtime/config/load-run-config.ts';
import { auditDrawn } from '../runtime/coordinator/audits.ts';
import { createLogger } from '../runtime/log.ts';
import { trainDistributed } from '../runtime/train/train-distributed.ts';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const arg = (args: string[], name: string, fallback: number) => Number(args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback);

export async function benchAudit(args: string[]): Promise<Record<string, unknown>> {
  const reps = arg(args, 'reps', 3);
  const steps = arg(args, 'steps', 12);
  const cost = await auditCost(reps, steps);
  const detection = detectionByRate([0.01, 0.05, 0.1, 0.25, 0.5], [1, 5, 20], arg(args, 'cheaters', 20_000));
  for (const d of detection) console.log(`rate ${d.rate}: caught within 1/5/20 intervals ${d.measured.map((p) => p.toFixed(3)).join(' / ')} (1 − (1 − r)^n: ${d.expected.map((p) => p.toFixed(3)).join(' / ')})`);
  return { bench: 'audit', steps, reps, ...cost, detection };
}

async function auditCost(reps: number, steps: number) {
  const rates = [0, 1, 0.25];
  const tokS = new Map<number, number[]>(rates.map((r) => [r, []]));
  const replay = new Map<number, { ms: number; slotSteps: number }>(rates.map((r) => [r, { ms: 0, slotSteps: 0 }]));
  console.log(`audit bench: tiny preset, 4 stages over NATS, ${steps} steps, checkpoints every 2, ${reps} alternated reps of rates ${rates.join(', ')}`);
  for (let rep = 0; rep < reps; rep++) {
    for (const rate of rates) {
      const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps, stages: 4, checkpointEvery: 2, ...(rate ? { audit: { rate } } : {}) } } });
      const summary = await trainDistributed({ config, log: createLogger('bench', 'silent') });
      if (summary.audits?.failed.length) throw new Error(`an honest run failed its audit: ${summary.audits.failed[0].what}`);
      tokS.get(rate)!.push(summary.tokens_per_s);
      const r = replay.get(rate)!;
      r.ms += summary.audits?.replay_ms ?? 0;
      r.slotSteps += summary.audits?.steps_replayed ?? 0;
      console.log(`rep ${rep} rate ${rate}: ${Math.round(summary.tokens_per_s)} tok/s, ${summary.audits?.steps_replayed ?? 0} slot-steps replayed in ${summary.audits?.replay_ms ?? 0} ms`);
    }
  }
  const off = median(tokS.get(0)!);
  const at = (rate: number) => ({
    tok_s: Math.round(median(tokS.get(rate)!)),
    tok_s_vs_off: +(median(tokS.get(rate)!) / off).toFixed(3),
    replay_ms_per_slot_step: +(replay.get(rate)!.ms / Math.max(1, replay.get(rate)!.slotSteps)).toFixed(1),
    slot_steps_replayed_per_run: Math.round(replay.get(rate)!.slotSteps / reps),
  });
  return { tok_s_off: Math.round(off), rate_1: at(1), rate_0_25: at(0.25) };
}

/** For each rate, the fraction of simulated cheaters caught within n of their intervals: measured with the draw, and the formula. */
function detectionByRate(rates: number[], within: number[], cheaters: number) {
  const longest = Math.max(...within);
  return rates.map((rate) => {
    const caughtBy = within.map(() => 0);
    for (let c = 0; c < cheaters; c++) {
      const seed = 1000 + c, replica = c % 3, stage = (c * 7) % 16, first = (c * 13) % 50;
      let at = -1;
      for (let i = 0; i < longest && at < 0; i++) if (auditDrawn(seed, rate, replica, stage, first + i)) at = i;
      within.forEach((n, k) => { if (at >= 0 && at < n) caughtBy[k]++; });
    }
    return { rate, within, measured: caughtBy.map((n) => +(n / cheaters).toFixed(4)), expected: within.map((n) => +(1 - (1 - rate) ** n).toFixed(4)), cheaters };
  });
}
