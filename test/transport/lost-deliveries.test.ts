// A delivery that never reached its reader, on a real nats-server. When a
// connection drops (a NATS server killed, the client moving to another),
// what was in flight to the client is gone, while the consumer counts it as
// delivered and would send it again only after ack_wait (ten minutes): a
// 3-server chaos run under load once waited that long for one frame. Here
// the loss is made exactly: another client pulls a message from the holder's
// own consumer before the holder's reader opens, so the consumer has
// delivered one message that the reader will never take. The reader, waiting
// with nothing to take, must find that out from the consumer, make the
// consumer again and receive the message.
import test from 'ava';
import { jetstream } from '@nats-io/jetstream';
import { randomUUID } from 'node:crypto';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { ensureInputStream, openEdgeConsumer, openRunResources } from '../../runtime/transport/run-resources.ts';
import { openEdgeInput } from '../../runtime/transport/slot-inputs.ts';

/** A server, slot 0.1's input stream with holder generation 1's act consumer, and a second client to take its deliveries. */
async function inputWithThief(t: import('ava').ExecutionContext) {
  t.timeout(90_000);  // the fault's own cost is ack_wait: ten minutes
  const server = await startNatsServer();
  const nc = await connectNats(server.url, 'lost-deliveries');
  const thief = await connectNats(server.url, 'lost-deliveries-thief');
  t.teardown(async () => {
    await thief.close().catch(() => {});
    await nc.close().catch(() => {});
    await server.stop();
  });
  const res = await openRunResources(nc, `lost-${randomUUID().slice(0, 8)}`);
  const holder = { replica: 0, stage: 1, generation: 1, host: 'host-a' };
  await ensureInputStream(res, 0, 1);
  const name = await openEdgeConsumer(res, 'act', 0, 1, 1);
  return { res, holder, thief, name };
}

test('a delivery the consumer counts but the reader never took is delivered again, well before ack_wait', async (t) => {
  const { res, holder, thief, name } = await inputWithThief(t);
  await res.js.publish(res.names.edge('act', 0, 1, 'sender-key'), new TextEncoder().encode('frame of step 0, microbatch 0'));

  // The consumer delivers the message to someone who is not the holder's reader, and it stays unacked.
  const stolen = await (await jetstream(thief).consumers.get(res.names.inputStream(0, 1), name)).next({ expires: 5_000 });
  t.truthy(stolen, 'the other client took the delivery');
  const before = await res.jsm.consumers.info(res.names.inputStream(0, 1), name);
  t.is(before.delivered.consumer_seq, 1);
  t.is(before.num_ack_pending, 1);

  const input = await openEdgeInput(res, holder, 'act');
  const deliveries = input[Symbol.asyncIterator]();
  // Ends the reading (done, or still waiting) and the reader, as a holder's loop and close() do.
  t.teardown(async () => { await Promise.all([deliveries.return?.(), input.close()]); });
  // A liveness bound, not a speed claim: a tenth of ack_wait, so the test fails (rather than hangs) without the repair.
  let timer: NodeJS.Timeout | undefined;
  const first = await Promise.race([deliveries.next(), new Promise<'never'>((resolve) => { timer = setTimeout(() => resolve('never'), 60_000); })]);
  clearTimeout(timer);
  if (first === 'never') return t.fail('the lost delivery did not reach the reader within a minute');
  t.false(first.done);
  t.is(new TextDecoder().decode(first.value!.data), 'frame of step 0, microbatch 0', 'the lost delivery reached the reader');
  t.is(first.value!.seq, 1, 'from the start of the stream, as the holder would read it');
});

test('a delivery lost before the next one arrived is taken before that one: the reader sees the gap and reads again from the start, in order', async (t) => {
  const { res, holder, thief, name } = await inputWithThief(t);
  const frame = (i: number) => res.js.publish(res.names.edge('act', 0, 1, 'sender-key'), new TextEncoder().encode(`frame ${i}`));
  await frame(0);
  // Delivery 1 goes to another client; delivery 2, the next frame, will reach the reader: a gap before it.
  t.truthy(await (await jetstream(thief).consumers.get(res.names.inputStream(0, 1), name)).next({ expires: 5_000 }));
  await frame(1);

  const input = await openEdgeInput(res, holder, 'act');
  const deliveries = input[Symbol.asyncIterator]();
  t.teardown(async () => { await Promise.all([deliveries.return?.(), input.close()]); });
  const taken: string[] = [];
  for (let i = 0; i < 2; i++) taken.push(new TextDecoder().decode((await deliveries.next()).value!.data));
  t.deepEqual(taken, ['frame 0', 'frame 1'], 'in stream order, the lost one first');
});
