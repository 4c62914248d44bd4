// `caravan simulate` end to end on a small shape: real coordinator and host
// processes over NATS with synthetic compute. The final line has every field
// the issue names, consistent with itself: the bound is the schedule's (zb-h2
// by default, which without a flush allows more than 1F1B's M/(M+S−1)), the ratio
// is utilization over it, and the bytes that cross datacenters are whole
// microbatches of whole frames. The pipeline keeps the stages busy for a
// good part of the bound (a loose floor: 2 cores run the hosts here, beside
// other tests, so the time scale leaves each forward 290 ms of compute).
import test from 'ava';
import { scheduleUse } from '../../runtime/config/run-schedule.ts';
import { SIMULATE_PRESETS, splitStages, type LayerSplit } from '../../runtime/synthetic/simulate-presets.ts';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { caravan } from '../support/caravan-cli.ts';

test('caravan simulate --preset orion-mini: utilization against the schedule\'s bound, tokens/s, MFU and WAN bytes', async (t) => {
  const r = await caravan(['simulate', '--preset', 'orion-mini', '--steps', '2', '--microbatches', '4', '--time-scale', '10', '--json']);
  t.is(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.like(line, { bench: 'simulate', preset: 'orion-mini', stages: 4, replicas: 1, datacenters: 2, microbatches: 4, steps: 2, time_scale: 10 });
  t.is(line.schedule, 'zb-h2');
  t.true(line.schedule_bound > 4 / 7 && line.schedule_bound <= 1, `zb-h2 allows more than 1F1B's 4/7 (${line.schedule_bound})`);
  t.is(line.peak_stash_bytes_by_stage.length, 4);
  t.true(line.peak_stash_bytes_by_stage.every((n: number) => n > 0), 'every stage stashed activations');
  t.true(Math.abs(line.ratio_to_bound - line.utilization / line.schedule_bound) < 1e-3);
  t.true(line.utilization > 0.2 && line.ratio_to_bound <= 1.05, `utilization ${line.utilization}, ratio ${line.ratio_to_bound}`);
  t.true(line.tokens_per_s > 0 && line.mfu_pct > 0 && line.mfu_pct < 50);
  t.true(line.frame_bytes >= 2_359_296 && line.frame_bytes < 2_359_296 + 4096, `frame ${line.frame_bytes} bytes`);
  const crossings = line.wan_bytes_per_step / (2 * 4 * line.frame_bytes);
  t.true(Math.abs(crossings - Math.round(crossings)) < 0.01, `whole microbatches of whole frames (${crossings} boundaries)`);
  t.is(Math.round(crossings), 1, 'two datacenters, hosts grouped by datacenter: one boundary crosses');
  t.log(r.stdout.trim());
});

test('caravan simulate with two replicas joined by the Bridge every step, four hosts to a process: each host whole on the wire, every outer step synced and timed', async (t) => {
  const r = await caravan(['simulate', '--preset', 'orion-mini', '--replicas', '2', '--sync-every', '1', '--hosts-per-process', '4', '--steps', '2', '--microbatches', '4', '--time-scale', '10', '--json']);
  t.is(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout.trim().split('\n').pop()!);
  // Eight slots, each held by a host of its own (a host holds one slot): eight hosts registered from two processes.
  t.like(line, { stages: 4, replicas: 2, hosts: 8, host_processes: 2, recoveries: { hosts_lost: 0, slots_reassigned: 0 } });
  t.is(line.bridge.outer_steps, 2, JSON.stringify(line.bridge));
  t.true(line.bridge.sync_s_median > 0 && line.bridge.sync_s_max >= line.bridge.sync_s_median, JSON.stringify(line.bridge));
  // The real model's pseudo-gradient in MX int8: a byte per parameter and a byte of scale per 32 (101.7B parameters).
  t.true(Math.abs(line.bridge.payload_bytes_per_replica / (101.7e9 * 33 / 32) - 1) < 0.01, `${line.bridge.payload_bytes_per_replica} bytes`);
  t.true(line.utilization > 0.1, `utilization ${line.utilization}`);
  // One seed file is one host's identity: hosts sharing a process cannot share it.
  const shared = await caravan(['host', '--nats', 'nats://127.0.0.1:1', '--run', 'r', '--count', '2', '--nkey', 'host.seed']);
  t.is(shared.code, 1);
  t.regex(shared.stderr, /--count with --nkey/);
});

test('caravan simulate --kill 1: a stage host is SIGKILLed after the first step, a standby takes its slot, the run completes and says how long it stood still', async (t) => {
  const r = await caravan(['simulate', '--preset', 'orion-mini', '--steps', '3', '--microbatches', '4', '--time-scale', '10', '--kill', '1', '--heartbeat-timeout', '5000', '--json']);
  t.is(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.is(line.faults.length, 1);
  t.like(line.faults[0], { fault: 'kill', after_step: 0 });
  t.regex(line.faults[0].detail, /^slot 0\.1 \(host .+\)$/);
  t.true(line.faults[0].stall_s >= 5, `the pipeline stood still until the heartbeat timeout at least (${line.faults[0].stall_s} s)`);
  t.like(line.recoveries, { hosts_lost: 1, slots_reassigned: 1 });
});

test('caravan simulate refuses faults it cannot carry out, saying why', async (t) => {
  const tooFew = await caravan(['simulate', '--preset', 'orion-mini', '--kill', '2', '--standbys', '1']);
  t.is(tooFew.code, 1);
  t.regex(tooFew.stderr, /2 kills need at least 2 standbys/);
  const noWan = await caravan(['simulate', '--preset', 'orion-mini', '--partition', 'us-east:5']);
  t.is(noWan.code, 1);
  t.regex(noWan.stderr, /--partition need --wan PROFILE/);
  const bad = await caravan(['simulate', '--preset', 'orion-mini', '--wan', 'us5', '--partition', 'us-east']);
  t.not(bad.code, 0);
  t.regex(bad.stderr, /--partition takes <datacenter>:<seconds>/);
  const shared = await caravan(['simulate', '--preset', 'orion-mini', '--kill', '1', '--hosts-per-process', '2']);
  t.is(shared.code, 1);
  t.regex(shared.stderr, /--kill strikes a host's process: hosts that share one would all go with it/);
});

test('caravan simulate --preset mixed-7b --split speed: each stage on its own device, the faster ones with more layers, and a higher schedule bound than the even split\'s', async (t) => {
  const r = await caravan(['simulate', '--preset', 'mixed-7b', '--split', 'speed', '--steps', '1', '--microbatches', '4', '--time-scale', '8', '--json']);
  t.is(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout.trim().split('\n').pop()!);
  t.deepEqual(line.devices_by_stage, ['H100 SXM', 'A100 80GB', 'RTX 4090', 'RTX 3090']);
  const preset = SIMULATE_PRESETS['mixed-7b'];
  const t0 = preset.config.training;
  const config = (split: LayerSplit) => validateRunConfig({ ...preset.config, training: { ...t0, microbatches: 4, ...splitStages(preset, t0.synthetic!, 4, split) } });
  t.deepEqual(line.layers_by_stage, config('speed').training.stageLayers);
  t.true(line.layers_by_stage[0] > line.layers_by_stage[1] && line.layers_by_stage[1] > line.layers_by_stage[2], `${line.layers_by_stage}`);
  // The bound comes from the config alone (each stage's FLOPs at its device's pace), not from the timing of a run.
  const even = scheduleUse(config('even')).bound;
  t.is(line.schedule_bound, +scheduleUse(config('speed')).bound.toFixed(4));
  t.true(line.schedule_bound > 1.5 * even, `bound ${line.schedule_bound} against the even split's ${even}`);
  t.log(`layers ${line.layers_by_stage}, bound ${line.schedule_bound} (even: ${even.toFixed(4)}), ${line.tokens_per_s} tokens/s`);
});
