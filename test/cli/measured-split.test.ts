// The split `caravan status` proposes from the slot holders' measured speeds
// (a stage's speed is its slowest replica's holder): the speed-aware split
// (config/speed-split.ts) of those speeds, and how much faster its slowest
// stage is than the run's own split's; nothing while a holder has not
// measured. Pure: records as the coordinator writes them.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { formatStatus } from '../../runtime/cli/status-command.ts';
import { measuredSplit, slowestStageTime, speedAwareLayers } from '../../runtime/config/speed-split.ts';
import type { HostEntry, SlotRecord } from '../../schemas/run-records.ts';

const host = (name: string, tflops?: number): HostEntry => ({ host: name, datacenter: 'dc', status: 'assigned', joined: '', ...(tflops !== undefined ? { tflops } : {}) });
const slot = (replica: number, stage: number, name: string): SlotRecord => ({ replica, stage, host: name, generation: 1 });

test('slow holders get fewer layers: the speed-aware split of the stages\' slowest holders, and its gain over the run\'s split', async (t) => {
  const config = await loadRunConfig({ preset: 'bench', overrides: { training: { stages: 3, replicas: 2 } } });
  // Stage 2's replica-1 holder is four times slower than everyone else: it sets stage 2's speed.
  const hosts = [host('a', 2), host('b', 2), host('c', 2), host('d', 2), host('e', 2), host('f', 0.5)];
  const slots = [slot(0, 0, 'a'), slot(0, 1, 'b'), slot(0, 2, 'c'), slot(1, 0, 'd'), slot(1, 1, 'e'), slot(1, 2, 'f')];
  const m = measuredSplit(config, hosts, slots);
  if (!m) return t.fail('no split proposed');
  t.deepEqual(m.layers, [2, 2, 2], 'the run splits 6 layers evenly');
  t.deepEqual(m.stage_tflops, [2, 2, 0.5]);
  t.deepEqual(m.by_speed, speedAwareLayers(config.model, config.training.seqLen, [2, 2, 0.5]));
  t.is(m.by_speed.reduce((a, b) => a + b, 0), 6);
  t.true(m.by_speed[2] < 2, `the slow stage gets fewer layers: ${m.by_speed}`);
  const pace = (split: number[]) => slowestStageTime(config.model, config.training.seqLen, split, [2, 2, 0.5]);
  t.is(m.pace_gain, pace([2, 2, 2]) / pace(m.by_speed));
  t.true(m.pace_gain > 1.5, `gain ${m.pace_gain}`);
  const text = formatStatus({ run: 'r', state: null, hosts, slots, dead_letters: { count: 0, recent: [] }, summary: null, bridge: [], split: m });
  t.regex(text, new RegExp(`^split by the holders' measured speeds \\(2\\.00 TFLOP/s, 2\\.00 TFLOP/s, 500 GFLOP/s by stage\\): ${m.by_speed.join(',')} layers would make the slowest stage ${m.pace_gain.toFixed(2)}× faster than 2,2,2 `, 'm'));
});

test('equal holders keep the run\'s split; a holder that did not measure means no proposal', async (t) => {
  const config = await loadRunConfig({ preset: 'bench', overrides: { training: { stages: 2 } } });
  const even = measuredSplit(config, [host('a', 1), host('b', 1)], [slot(0, 0, 'a'), slot(0, 1, 'b')]);
  // The last stage carries the LM head: even an equal pair may move a layer off it.
  t.deepEqual(even?.by_speed, speedAwareLayers(config.model, config.training.seqLen, [1, 1]));
  t.true(even!.pace_gain >= 1);
  t.is(measuredSplit(config, [host('a', 1), host('b')], [slot(0, 0, 'a'), slot(0, 1, 'b')]), undefined);
});
