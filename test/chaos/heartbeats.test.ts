// Heartbeats come from a thread of their own (runtime/host/heartbeat-thread.ts):
// a host whose event loop is held for longer than the heartbeat timeout is
// slow, not gone, and keeps its slot; one held past the stuck timeout is
// stuck, and its slot goes to a standby. Real processes, a real nats-server,
// the synthetic backend; CARAVAN_CHAOS_BLOCK holds one host's event loop.
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const simulate = ['simulate', '--preset', 'orion-mini', '--steps', '3', '--microbatches', '4', '--time-scale', '10', '--heartbeat-timeout', '1500', '--json'];

test('a host whose event loop is held past the heartbeat timeout is slow, not lost: it keeps its slot', async (t) => {
  // 5 s held against a 1.5 s heartbeat timeout, with a standby there to take the slot if the host were declared lost.
  const out = await caravan([...simulate, '--standbys', '1'], { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_BLOCK: '0/1/1/5000' });
  t.is(out.code, 0, out.stderr.slice(-2000));
  const r = summaryOf(out) as { recoveries: { hosts_lost: number; slots_reassigned: number } };
  t.deepEqual(r.recoveries, { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 }, 'no host lost, no slot handed on');
});

test('a host whose event loop is held past the stuck timeout (10 × the heartbeat timeout) is lost, and a standby takes its slot', async (t) => {
  // 15 s of stuck loop, then the heartbeat timeout of silence: about 16.5 s; the loop is held for 25 s.
  const out = await caravan([...simulate, '--standbys', '1'], { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_BLOCK: '0/1/1/25000' });
  t.is(out.code, 0, out.stderr.slice(-2000));
  const r = summaryOf(out) as { recoveries: { hosts_lost: number; slots_reassigned: number } };
  t.like(r.recoveries, { hosts_lost: 1, slots_reassigned: 1 });
});
