// Compare-and-set of a run's KV record on a real nats-server: a change made
// while another writer keeps changing the record lands once the other stops,
// on top of the other's last write. A 3-server chaos run once failed a run on
// 21 conflicts in a row, all within a fraction of a second, after a server's
// routes healed: reads may lag the writes they must see for seconds.
import test from 'ava';
import { randomUUID } from 'node:crypto';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openRunResources } from '../../runtime/transport/run-resources.ts';
import { changeKvRecord, readKvRecord } from '../../runtime/transport/kv-record.ts';

const decode = (bytes: Uint8Array) => JSON.parse(new TextDecoder().decode(bytes)) as { writes: number; by: string[] };

test('a change that keeps meeting another writer for 2 s still lands, after the other stops, on top of its last write', async (t) => {
  const server = await startNatsServer();
  const nc = await connectNats(server.url, 'kv-record');
  t.teardown(async () => { await nc.close().catch(() => {}); await server.stop(); });
  const { kv } = await openRunResources(nc, `cas-${randomUUID().slice(0, 8)}`);
  await kv.put('record', JSON.stringify({ writes: 0, by: [] }));

  // The other writer changes the record every few ms for 2 s, each time between our read and our write.
  let conflicts = 0;
  const otherUntil = Date.now() + 2_000;
  let other = 0;
  const ours = await changeKvRecord(kv, 'record', decode, (current) => {
    if (Date.now() < otherUntil) {
      conflicts++;
      other++;
      void kv.put('record', JSON.stringify({ writes: current!.writes + 1, by: [...current!.by, `other-${other}`] }));
    }
    return { writes: current!.writes + 1, by: [...current!.by, 'ours'] };
  });
  t.true(conflicts >= 3 && Date.now() >= otherUntil, `met the other writer ${conflicts} times, over 2 s`);
  const stored = await readKvRecord(kv, 'record', decode);
  t.deepEqual(stored, ours);
  t.is(stored!.by.at(-1), 'ours');
  t.is(stored!.by.filter((b) => b === 'ours').length, 1, 'written once');
  t.is(stored!.writes, stored!.by.length, 'on top of every write before it');
});
