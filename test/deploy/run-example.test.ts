// deploy/run.example.yaml, the config docs/operations.md starts a run with,
// loads and validates as the coordinator would load it.
import test from 'ava';
import { fileURLToPath } from 'node:url';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';

const example = fileURLToPath(new URL('../../deploy/run.example.yaml', import.meta.url));

test('deploy/run.example.yaml is a valid run config: 4 stages, 1 replica', async (t) => {
  const config = await loadRunConfig({ file: example });
  t.is(config.training.stages, 4);
  t.is(config.training.replicas, 1);
  t.is(config.training.steps, 200);
  t.is(config.optim.totalSteps, 200, 'the schedule ends with the run');
});
