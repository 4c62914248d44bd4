// The coordinator's reading of the control log survives a delivery that
// never reached it, on a real nats-server. When a NATS server dies, what it
// was sending the coordinator is gone while the coordinator's consumer counts
// it as delivered, and sends it again only after ack_wait (ten minutes): a
// report lost so leaves its step undecided and the run standing still with
// nothing logged (a 3-server chaos run stalled so, right after a server
// kill). Here the loss is made exactly: the coordinator's connection runs
// through a link whose client→server direction is cut, so its pull requests
// wait, and another client takes the next entry from the coordinator's own
// consumer. Healed, the reader has nothing to take; it must find the loss
// from the consumer, make the consumer again after the last entry it took,
// and read the entry, once.
import test from 'ava';
import { jetstream } from '@nats-io/jetstream';
import { randomUUID } from 'node:crypto';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openRunResources } from '../../runtime/transport/run-resources.ts';
import { controlLog } from '../../runtime/transport/control-log.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { LinkEmulator } from '../../runtime/wan/link-emulator.ts';

const OPEN = { delayMs: 0, jitterMs: 0, rateMbit: 0, up: true };
const text = (s: string) => new TextEncoder().encode(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function loseThird(t: import('ava').ExecutionContext, followed: boolean): Promise<void> {
  t.timeout(90_000);
  const server = await startNatsServer();
  const link = new LinkEmulator({ name: 'coordinator → server', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port: Number(new URL(server.url).port) }, forward: OPEN, backward: OPEN });
  await link.start();
  const admin = await connectNats(server.url, 'control-log-admin');
  const coordinator = await connectNats(`nats://127.0.0.1:${link.port}`, 'control-log-coordinator');
  t.teardown(async () => {
    await coordinator.close().catch(() => {});
    await admin.close().catch(() => {});
    await link.stop();
    await server.stop();
  });
  const run = `lostctl-${randomUUID().slice(0, 8)}`;
  const adminRes = await openRunResources(admin, run);
  const res = await openRunResources(coordinator, run);
  const report = (i: number) => adminRes.js.publish(adminRes.names.report(0, 1), text(`report ${i}`));
  await report(1);
  await report(2);

  const reader = await controlLog(res, { key: newHostKey(), index: 0 }).read();
  const entries = reader[Symbol.asyncIterator]();
  t.teardown(async () => { reader.close(); await entries.return?.(undefined); });
  const taken: string[] = [];
  for (let i = 0; i < 2; i++) taken.push(new TextDecoder().decode((await entries.next()).value!.data));
  t.deepEqual(taken, ['report 1', 'report 2']);

  // Its acks of the two are at the server; then its requests stop reaching it, and the ones it made expire there.
  await coordinator.flush();
  link.set({ forward: { up: false } });
  await sleep(1_500);
  const [consumer] = await adminRes.jsm.consumers.list(adminRes.names.controlStream).next();
  t.truthy(consumer, 'the coordinator has a consumer of the log');
  await report(3);
  const stolen = await (await jetstream(admin).consumers.get(adminRes.names.controlStream, consumer.name)).next({ expires: 5_000 });
  t.is(stolen && new TextDecoder().decode(stolen.data), 'report 3', 'another client took the delivery meant for the coordinator');
  t.is((await adminRes.jsm.consumers.info(adminRes.names.controlStream, consumer.name)).num_ack_pending, 1);
  // Followed by another entry, the loss shows as a gap in the delivery sequence; alone, only the consumer knows of it.
  if (followed) await report(4);
  link.set({ forward: { up: true } });

  // A liveness bound, not a speed claim: a tenth of ack_wait, so the test fails (rather than hangs) without the repair.
  let timer: NodeJS.Timeout | undefined;
  const third = await Promise.race([entries.next(), new Promise<'never'>((resolve) => { timer = setTimeout(() => resolve('never'), 60_000); })]);
  clearTimeout(timer);
  if (third === 'never') return t.fail('the lost entry did not reach the coordinator within a minute');
  t.is(new TextDecoder().decode(third.value!.data), 'report 3');
  t.is(third.value!.seq, 3);
  // Read on through the new consumer, and nothing taken twice.
  if (!followed) await report(4);
  const fourth = await entries.next();
  t.is(new TextDecoder().decode(fourth.value!.data), 'report 4');
  t.is(fourth.value!.seq, 4);
  const consumers = [];
  for await (const c of adminRes.jsm.consumers.list(adminRes.names.controlStream)) consumers.push(c.name);
  t.is(consumers.length, 1, `one consumer of the log is left: ${consumers.join(', ')}`);
  t.not(consumers[0], consumer.name, 'the consumer was made again');
}

test('an entry the coordinator consumer counts as delivered but the coordinator never took is read, once, well before ack_wait', (t) => loseThird(t, false));

test('an entry lost before the next one arrived is read before that one, each once: the log stays in order', (t) => loseThird(t, true));
