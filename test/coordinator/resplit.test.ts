// A live re-split's decisions (runtime/coordinator/resplit.ts): the
// successor's run id, the new config checked as any config is, and the runs
// it refuses, each by name.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { resplitConfig, resplitRefusal, successorRunId } from '../../runtime/coordinator/resplit.ts';

test('the successor is <run>-s2, then -s3; a config split anew is checked as a config; the runs that cannot be re-split live say why', async (t) => {
  t.is(successorRunId('run-1'), 'run-1-s2');
  t.is(successorRunId('run-1-s2'), 'run-1-s3');
  t.throws(() => successorRunId('x'.repeat(62)), { message: /invalid run id/ });
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 4 } as never } });
  const next = resplitConfig(config, [2, 1, 1]);
  t.like(typeof next === 'string' ? {} : next.training, { stages: 3, stageLayers: [2, 1, 1] });
  t.regex(resplitConfig(config, [2, 1]) as string, /stageLayers/);
  t.is(resplitRefusal(config, false), undefined);
  t.regex(resplitRefusal(config, true)!, /under credentials/);
  t.regex(resplitRefusal({ ...config, training: { ...config.training, replicas: 2 } }, false)!, /more than one replica/);
  t.regex(resplitRefusal({ ...config, training: { ...config.training, replicas: 2, bridge: { syncEvery: 2 } as never } }, false)!, /the Bridge/);
});
