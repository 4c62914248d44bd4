// Slot records fence a replaced host, on a real nats-server: assigning a slot
// to another host bumps its generation and keeps the last checkpoint pointer;
// assigning it again to the same host (a retried request) changes nothing; the
// holder records checkpoints by compare-and-set on the revision it holds, and
// once the slot went to another host the old holder's write fails with
// SlotLostError and does not land. Per-holder edge consumers: opening a
// generation's consumer deletes the earlier generation's consumer of that edge
// only, and starts at the given sequence of the slot's input stream.
// Input streams go to the servers tagged with the holder's datacenter, or
// anywhere when none is.
import test, { type ExecutionContext } from 'ava';
import { randomUUID } from 'node:crypto';
import { connectNats, type NatsConnection } from '../../runtime/transport/connect.ts';
import { startNatsServer, type NatsServerHandle } from '../../runtime/nats/nats-server.ts';
import { ensureInputStream, openEdgeConsumer, openRunResources, ReaderReplacedError, type RunResources } from '../../runtime/transport/run-resources.ts';
import { assignSlot, readRetiredSigner, readSlot, recordCheckpoint, SlotLostError } from '../../runtime/transport/slots.ts';
import { SlotSigners } from '../../runtime/security/slot-signers.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { signatureHeader } from '../../runtime/security/message-signature.ts';
import type { CheckpointPointer } from '../../schemas/control-messages.ts';

/** A fresh nats-server and run per test, stopped in teardown. */
async function freshRun(t: ExecutionContext): Promise<RunResources> {
  let server: NatsServerHandle | undefined;
  let nc: NatsConnection | undefined;
  t.teardown(async () => {
    await nc?.close().catch(() => {});
    await server?.stop();
  });
  server = await startNatsServer();
  nc = await connectNats(server.url, 'slots-test');
  return openRunResources(nc, `slots-${randomUUID().slice(0, 8)}`);
}

/** As the KV holds it: JSON, where a slot without a checkpoint has no `checkpoint` key at all. */
const stored = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;

const pointer = (step: number, generation: number): CheckpointPointer => ({
  step,
  object: `ckpt/replica-0/stage-0-2/step-${step}-g${generation}.safetensors`,
  resume: { act: 10 * step, control: 3 * step },
});

test('assignSlot creates generation 1, then a different host gets the next generation and the last checkpoint pointer', async (t) => {
  const { kv } = await freshRun(t);

  const first = await assignSlot(kv, 1, 2, 'host-a');
  t.deepEqual(stored(first.record), { replica: 1, stage: 2, host: 'host-a', generation: 1 });
  t.deepEqual(await readSlot(kv, 1, 2), { record: { replica: 1, stage: 2, host: 'host-a', generation: 1 }, revision: first.revision });

  const checkpointed = await recordCheckpoint(kv, first, pointer(3, 1));
  const second = await assignSlot(kv, 1, 2, 'host-b');
  t.is(second.record.host, 'host-b');
  t.is(second.record.generation, 2);
  t.deepEqual(second.record.checkpoint, pointer(3, 1), "the new holder resumes from the old holder's checkpoint");
  t.true(second.revision > checkpointed.revision);
  t.deepEqual(await readSlot(kv, 1, 2), second);

  const third = await assignSlot(kv, 1, 2, 'host-c');
  t.is(third.record.generation, 3);
  t.deepEqual(third.record.checkpoint, pointer(3, 1));
  t.is((await assignSlot(kv, 1, 3, 'host-c')).record.generation, 1, 'another slot keeps its own generations');
});

test('assigning a slot again to the host that holds it returns the existing record without bumping the generation', async (t) => {
  const { kv } = await freshRun(t);
  await assignSlot(kv, 0, 0, 'host-a');
  const held = await assignSlot(kv, 0, 0, 'host-b');
  const retried = await assignSlot(kv, 0, 0, 'host-b');
  t.deepEqual(retried, stored(held));
  t.is(retried.record.generation, 2);
  t.deepEqual(await readSlot(kv, 0, 0), stored(held), 'nothing was written');
});

test('the current holder records checkpoints, each time with the entry the last one returned', async (t) => {
  const { kv } = await freshRun(t);
  const held = await assignSlot(kv, 0, 1, 'host-a');

  const once = await recordCheckpoint(kv, held, pointer(2, 1));
  t.true(once.revision > held.revision);
  t.deepEqual(once.record, { ...held.record, checkpoint: pointer(2, 1) });
  t.deepEqual(await readSlot(kv, 0, 1), once);

  const twice = await recordCheckpoint(kv, once, pointer(4, 1));
  t.true(twice.revision > once.revision);
  t.deepEqual(await readSlot(kv, 0, 1), { record: { ...held.record, checkpoint: pointer(4, 1) }, revision: twice.revision });
});

test("after the slot went to another host, the old holder's checkpoint fails with SlotLostError and does not land", async (t) => {
  const { kv } = await freshRun(t);
  const oldHeld = await recordCheckpoint(kv, await assignSlot(kv, 1, 0, 'host-a'), pointer(2, 1));
  const replacement = await assignSlot(kv, 1, 0, 'host-b');

  const err = await t.throwsAsync(recordCheckpoint(kv, oldHeld, pointer(4, 1)), { instanceOf: SlotLostError });
  t.regex(err!.message, /replaced/);
  t.regex(err!.message, /host host-b \(generation 2\)/);
  t.is(err!.name, 'SlotLostError');
  t.like(err, { replica: 1, stage: 0, host: 'host-a' });
  t.deepEqual(err!.holder, replacement.record);

  t.deepEqual(await readSlot(kv, 1, 0), replacement, 'the record still names host-b with the checkpoint it was given');

  // The new holder is unaffected.
  const next = await recordCheckpoint(kv, replacement, pointer(6, 2));
  t.deepEqual(next.record, { ...replacement.record, checkpoint: pointer(6, 2) });
});

test('a host given its slot back under a newer generation still cannot write with its old entry', async (t) => {
  const { kv } = await freshRun(t);
  const stale = await assignSlot(kv, 0, 0, 'host-a');
  await assignSlot(kv, 0, 0, 'host-b');
  const back = await assignSlot(kv, 0, 0, 'host-a');
  t.is(back.record.generation, 3);

  const err = await t.throwsAsync(recordCheckpoint(kv, stale, pointer(2, 1)), { instanceOf: SlotLostError });
  t.regex(err!.message, /replaced: replica 0 stage 0 now belongs to host host-a \(generation 3\)/);
  t.deepEqual(await readSlot(kv, 0, 0), stored(back));
});

test('readSlot of a slot never assigned is undefined', async (t) => {
  const { kv } = await freshRun(t);
  t.is(await readSlot(kv, 0, 0), undefined);
  await assignSlot(kv, 0, 0, 'host-a');
  t.is(await readSlot(kv, 0, 1), undefined);
  t.is(await readSlot(kv, 1, 0), undefined);
});

test("opening generation 2's edge consumer deletes generation 1's of that edge only, and starts at the given sequence", async (t) => {
  const res = await freshRun(t);
  for (const [replica, stage] of [[0, 1], [0, 2], [0, 10], [1, 1]]) await ensureInputStream(res, replica, stage);
  const stream = res.names.inputStream(0, 1);
  const listConsumers = async () => {
    const names: string[] = [];
    for (const [replica, stage] of [[0, 1], [0, 2], [0, 10], [1, 1]]) {
      for await (const c of res.jsm.consumers.list(res.names.inputStream(replica, stage))) names.push(c.name);
    }
    return names.sort();
  };

  // Frames on act 0.1, with gradients into the same slot in between, all from one sender (its key ends the subject).
  const SENDER = 'USENDER';
  const seqOf: number[] = [];
  for (let i = 1; i <= 5; i++) {
    seqOf[i] = (await res.js.publish(res.names.edge('act', 0, 1, SENDER), new Uint8Array([i]))).seq;
    await res.js.publish(res.names.edge('grad', 0, 1, SENDER), new Uint8Array([50 + i]));
    await res.js.publish(res.names.edge('act', 0, 2, SENDER), new Uint8Array([100 + i]));
  }

  for (const [kind, replica, stage] of [['act', 0, 1], ['act', 0, 2], ['grad', 0, 1], ['act', 0, 10], ['act', 1, 1]] as const) {
    t.is(await openEdgeConsumer(res, kind, replica, stage, 1), res.names.consumer(kind, replica, stage, 1));
  }
  t.deepEqual(await listConsumers(), ['act-0-1-g1', 'act-0-10-g1', 'act-0-2-g1', 'act-1-1-g1', 'grad-0-1-g1']);

  const startSeq = seqOf[3];
  const name = await openEdgeConsumer(res, 'act', 0, 1, 2, startSeq);
  t.is(name, 'act-0-1-g2');
  t.deepEqual(await listConsumers(), ['act-0-1-g2', 'act-0-10-g1', 'act-0-2-g1', 'act-1-1-g1', 'grad-0-1-g1']);

  const consumer = await res.js.consumers.get(stream, name);
  const got: Array<{ seq: number; byte: number; subject: string }> = [];
  for await (const m of await consumer.fetch({ max_messages: 3, expires: 2000 })) {
    got.push({ seq: m.seq, byte: m.data[0], subject: m.subject });
    m.ack();
  }
  t.deepEqual(got, [3, 4, 5].map((i) => ({ seq: seqOf[i], byte: i, subject: res.names.edge('act', 0, 1, SENDER) })),
    `from stream sequence ${startSeq} on, this edge's frames only`);
  t.is((await consumer.info()).num_pending, 0, 'and nothing else');

  // Without a start sequence a holder reads the edge from its beginning.
  const fromStart = await res.js.consumers.get(res.names.inputStream(0, 2), await openEdgeConsumer(res, 'act', 0, 2, 2));
  const bytes: number[] = [];
  for await (const m of await fromStart.fetch({ max_messages: 5, expires: 2000 })) bytes.push(m.data[0]);
  t.deepEqual(bytes, [101, 102, 103, 104, 105]);
  t.is((await fromStart.info()).num_pending, 0);
  t.deepEqual(await listConsumers(), ['act-0-1-g2', 'act-0-10-g1', 'act-0-2-g2', 'act-1-1-g1', 'grad-0-1-g1']);
});

test("a replaced holder that opens its consumer late gets an error and leaves the newer holder's consumer alone", async (t) => {
  const res = await freshRun(t);
  await ensureInputStream(res, 0, 1);
  await openEdgeConsumer(res, 'act', 0, 1, 1);
  await openEdgeConsumer(res, 'act', 0, 1, 2);
  await t.throwsAsync(openEdgeConsumer(res, 'act', 0, 1, 1), { instanceOf: ReaderReplacedError, message: /replaced: consumer act-0-1-g2 of a later holder exists/ });
  const names: string[] = [];
  for await (const c of res.jsm.consumers.list(res.names.inputStream(0, 1))) names.push(c.name);
  t.deepEqual(names, ['act-0-1-g2']);
});

test('signers the slot record no longer lists stay checkable: a report of generation 1 still verifies after 20 hand-overs', async (t) => {
  const res = await freshRun(t);
  const keys = Array.from({ length: 21 }, () => newHostKey());
  for (let g = 1; g <= keys.length; g++) await assignSlot(res.kv, 0, 1, `host-${g}`, { key: keys[g - 1].publicKey, until: { act: g } });
  const record = (await readSlot(res.kv, 0, 1))!.record;
  t.is(record.generation, 21);
  t.is(record.signers![0].generation, 6, 'the record lists the last 16 generations');
  const retired = await readRetiredSigner(res.kv, 0, 1, 1);
  t.deepEqual(retired, { generation: 1, host: 'host-1', key: keys[0].publicKey, until: { act: 2 } }, 'generation 1 kept what it signed with, and where its frames end');

  const signers = new SlotSigners(res.kv);
  signers.update(record);
  const subject = res.names.report(0, 1);
  const body = new TextEncoder().encode('{"type":"stepped","step":0}');
  const report = (generation: number, key = keys[generation - 1]) => ({ kind: 'report' as const, subject, body, header: signatureHeader(key, generation, 'report', subject, body), replica: 0, stage: 1 });
  t.like(await signers.check(report(1)), { ok: true, generation: 1, host: 'host-1' });
  t.like(await signers.check(report(5)), { ok: true, generation: 5, host: 'host-5' });
  t.like(await signers.check(report(21)), { ok: true, generation: 21 });
  // A retired generation's key still signs only for itself, and a generation that never held the slot has no signer.
  t.like(await signers.check(report(1, keys[2])), { ok: false, fault: 'signature' });
  t.like(await signers.check(report(22, keys[0])), { ok: false, fault: 'signer' });
});
