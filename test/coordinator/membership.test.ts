// A restarted coordinator and the standbys its predecessor declared lost, on a
// real KV bucket: a host heard again whose record says it was lost holding
// nothing, under the key it beats with, is a standby again; one lost holding a
// slot, one beating under another key, and one whose key a live host holds now
// are not. Before, only the process that declared a standby lost could take it
// back, and a coordinator restarted after a server fault kept its standbys lost.
import test from 'ava';
import type { CoordinatorEvent } from '../../actors/coordinator-machine.ts';
import { Membership } from '../../runtime/coordinator/membership.ts';
import { OrderedWrites } from '../../runtime/coordinator/ordered-writes.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openRunResources } from '../../runtime/transport/run-resources.ts';
import { runStateStore } from '../../runtime/transport/run-state-store.ts';
import { runNames } from '../../runtime/transport/subjects.ts';

test('a coordinator restarted after its predecessor declared a standby lost takes it back when it is heard, and nothing else', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const nc = await connectNats(server.url, 'membership-test');
  t.teardown(() => nc.close());
  const { kv } = await openRunResources(nc, 'members');
  const store = runStateStore(kv, runNames('members'));
  const standby = newHostKey(), holder = newHostKey(), taken = newHostKey(), stranger = newHostKey();
  const joined = '2026-12-01T00:00:00.000Z';
  // What the coordinator before the restart left: three hosts lost, one live host under the third one's key.
  await store.updateHost('h-standby', () => ({ host: 'h-standby', datacenter: 'dc-b', status: 'lost', joined, key: standby.publicKey, slot: null }));
  await store.updateHost('h-holder', () => ({ host: 'h-holder', datacenter: 'dc-a', status: 'lost', joined, key: holder.publicKey, slot: { replica: 0, stage: 1 } }));
  await store.updateHost('h-old', () => ({ host: 'h-old', datacenter: 'dc-a', status: 'lost', joined, key: taken.publicKey, slot: null }));
  await store.updateHost('h-new', () => ({ host: 'h-new', datacenter: 'dc-a', status: 'standby', joined, key: taken.publicKey }));

  const sent: CoordinatorEvent[] = [];
  const writes = new OrderedWrites((err) => t.fail(err.message));
  /** A coordinator's Membership as it starts: it knows no host but by its KV record. */
  const restart = () => new Membership({
    run: 'members', store, writes, log: createLogger('test', 'silent'), recoveries: { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 },
    send: (e) => sent.push(e),
  });
  const restarted = restart();
  restarted.heardAgain('h-holder', holder.publicKey);
  restarted.heardAgain('h-old', taken.publicKey);
  restarted.heardAgain('h-standby', stranger.publicKey);
  restarted.heardAgain('h-standby', standby.publicKey);  // looked up once: the stranger's beat above was the look-up
  const settle = async () => { for (let i = 0; i < 20; i++) { await new Promise((r) => setTimeout(r, 25)); await writes.drained(); } };
  await settle();
  t.deepEqual(sent, [], 'a beat under another key is not the standby: nothing taken back yet');

  const again = restart();
  again.heardAgain('h-holder', holder.publicKey);
  again.heardAgain('h-old', taken.publicKey);
  again.heardAgain('h-standby', standby.publicKey);
  again.heardAgain('h-standby', standby.publicKey);
  await settle();
  t.deepEqual(sent, [{ type: 'HOST_JOINED', host: 'h-standby', datacenter: 'dc-b' }], 'the lost standby alone, once');
  t.like(await store.readHost('h-standby'), { status: 'joined', key: standby.publicKey, joined });
  t.like(await store.readHost('h-holder'), { status: 'lost', slot: { replica: 0, stage: 1 } }, 'a lost holder stays lost: its slot went on');
  t.like(await store.readHost('h-old'), { status: 'lost' }, 'a key a live host holds now is not taken back');
  t.true(again.heartbeatCounts('h-standby', standby.publicKey) && !again.heartbeatCounts('h-standby', stranger.publicKey), 'bound to its key again');
});
