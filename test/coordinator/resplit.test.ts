// A live re-split's decisions (runtime/coordinator/resplit.ts): the
// successor's run id, the new config checked as any config is, and the runs
// it refuses, each by name.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { resplitConfig, resplitRefusal, successorRunId } from '../../runtime/coordinator/resplit.ts';
import { validateRunConfig, type RunConfig } from '../../schemas/run-config.ts';

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
  const bridged = (payload: string, dModel = 128) => resplitRefusal(withBridge(config, payload, dModel), false);
  t.is(bridged('mxint8'), undefined, 'MX int8 blocks fall alike under any split when every tensor is a multiple of 32');
  t.is(bridged('fp32'), undefined);
  t.regex(bridged('topk')!, /top-k keeps the largest values of each stage/);
  t.regex(bridged('mxint8', 136)!, /not a multiple of 32 \(model\.layers\.0\.\w+\.weight: 136\)/);
  t.is(bridged('fp32', 136), undefined);
  const joinedLater = withBridge(config, 'fp32');
  const successor = resplitConfig({ ...joinedLater, training: { ...joinedLater.training, bridge: { ...joinedLater.training.bridge!, startReplicas: 1 } } }, [3, 1]);
  t.is(typeof successor === 'string' ? successor : successor.training.bridge?.startReplicas, 2, 'the successor starts every replica: all were training');
});

/** `config` as 2 stages × 2 replicas with the Bridge sending `payload`, its model `dModel` wide. */
function withBridge(config: RunConfig, payload: string, dModel = 128): RunConfig {
  return validateRunConfig({ ...config, model: { ...config.model, dModel }, training: { ...config.training, stages: 2, replicas: 2, bridge: { syncEvery: 2, payload } } });
}
