// Two datacenters as a NATS super-cluster on loopback (one server each,
// joined by gateways, tagged dc:<name>): hosts connect to their own
// datacenter's server, each slot's input stream is created on the server of
// its holder's datacenter, and the run gives the loopback result bit for bit.
// A stream for a datacenter no server is tagged with goes anywhere. The run
// lets stage 0 keep one more microbatch in flight than 1F1B's S−s
// (training.extraInFlight), which changes timing, never the bits.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { freeLoopbackPorts } from '../../runtime/nats/nats-cluster.ts';
import { startSupercluster, type SuperclusterDatacenter } from '../../runtime/nats/nats-supercluster.ts';
import { ensureInputStream, openExistingRun, openRunResources } from '../../runtime/transport/run-resources.ts';
import { slotPlacements, type SlotPlacement } from '../../runtime/transport/slot-placement.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';

async function loopbackSupercluster(names: string[]) {
  const ports = await freeLoopbackPorts(3 * names.length);
  const at = (i: number, k: number) => `127.0.0.1:${ports[3 * i + k]}`;
  const datacenters: SuperclusterDatacenter[] = names.map((name, i) => ({
    name, clientListen: at(i, 0), clusterListen: at(i, 1), gatewayListen: at(i, 2),
    gateways: Object.fromEntries(names.map((other, j) => [other, at(j, 2)]).filter(([other]) => other !== name)),
  }));
  return startSupercluster({ datacenters });
}

test('a pipeline over a 2-datacenter super-cluster: input streams live in their holders\' datacenters, same bits as loopback', async (t) => {
  const sc = await loopbackSupercluster(['dc-a', 'dc-b']);
  t.teardown(() => sc.stop());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 3, stages: 2, seqLen: 32, batchSize: 4, microbatches: 4, seed: 11, extraInFlight: 1 } } });
  const dcs = ['dc-a', 'dc-b'];
  let placed: SlotPlacement[] = [];
  const summary = await trainDistributed({
    config, nats: sc.urls['dc-a'], log: createLogger('test', 'silent'),
    placement: { coordinator: { nats: sc.urls['dc-a'] }, host: (i) => ({ nats: sc.urls[dcs[i]], datacenter: dcs[i] }) },
    onFinished: async ({ url, run }) => {
      const nc = await connectNats(url, 'inspect');
      try {
        placed = (await slotPlacements(await openExistingRun(nc, run, url), 1, 2))[0];
      } finally {
        await nc.close();
      }
    },
  });
  t.deepEqual(placed.map((p) => p.datacenter).sort(), dcs, 'one stage in each datacenter');
  for (const p of placed) t.is(p.stream, p.datacenter, `slot 0.${p.stage}'s input stream is in its holder's datacenter`);
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, clean.paramsSha256, 'the topology changes timing, never results');
});

test('an input stream for a datacenter no server is tagged with is placed anyway', async (t) => {
  const sc = await loopbackSupercluster(['dc-a', 'dc-b']);
  t.teardown(() => sc.stop());
  const nc = await connectNats(sc.urls['dc-b'], 'placement');
  t.teardown(() => nc.close());
  const res = await openRunResources(nc, 'placement');
  t.is(await ensureInputStream(res, 0, 0, 'dc-a'), 'dc-a', 'asked from dc-b, placed in dc-a');
  t.truthy(await ensureInputStream(res, 0, 1, 'elsewhere'));
  t.deepEqual([...res.streams.untagged], ['elsewhere'], 'learnt once');
  t.is(await ensureInputStream(res, 0, 0, 'dc-b'), 'dc-a', 'an existing stream stays where it is');
});
