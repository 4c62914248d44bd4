// Limits a sender cannot pass, enforced by a real nats-server on the run's
// streams: a frame larger than the run's largest is refused; a sender that
// floods its edge is refused once it has more outstanding than a slot can
// legitimately have, and the other edges are untouched; the dead-letter
// stream is bounded in messages and bytes.
import test from 'ava';
import { jetstream } from '@nats-io/jetstream';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { edgeLimits } from '../../runtime/transport/edge-limits.ts';
import { ensureInputStream, openRunResources } from '../../runtime/transport/run-resources.ts';

test('oversized frames and floods are refused by the server; the dead-letter stream is bounded', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const nc = await connectNats(server.url, 'limits-test');
  t.teardown(() => nc.close());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, checkpointEvery: 1 } } });
  const limits = edgeLimits(config);
  // (K + 2) steps held twice, and under zb-h2 (the default) ⌈(K + 2)/2⌉ steps redone after roll-backs, of M frames each.
  t.deepEqual(limits, { maxFrameBytes: 4 * 32 * 128 * 4 + 65536, maxFramesPerEdge: (2 * 3 + 2) * 2 + 16 });
  t.is(edgeLimits({ ...config, training: { ...config.training, schedule: '1f1b' } }).maxFramesPerEdge, 2 * 3 * 2 + 16);
  // Audited: two intervals more (3K + 2 steps), which audits waiting for the slot hold back from the purge.
  t.is(edgeLimits({ ...config, training: { ...config.training, schedule: '1f1b', audit: { rate: 0.5 } } }).maxFramesPerEdge, 2 * 5 * 2 + 16);
  const res = await openRunResources(nc, 'limits', { limits });
  for (const stage of [0, 1]) await ensureInputStream(res, 0, stage);
  const js = jetstream(nc);

  // Senders publish under their own key (the subject's last token; credentials allow no other): a flooder and the real sender.
  const flooder = res.names.edge('act', 0, 1, 'UFLOODER'), sender = res.names.edge('act', 0, 1, 'USENDER');
  await t.throwsAsync(js.publish(flooder, new Uint8Array(limits.maxFrameBytes + 1)), { message: /message size exceeds maximum allowed/ });
  await js.publish(flooder, new Uint8Array(limits.maxFrameBytes));  // the largest legitimate frame passes

  for (let i = 1; i < limits.maxFramesPerEdge; i++) await js.publish(flooder, new Uint8Array(8));
  await t.throwsAsync(js.publish(flooder, new Uint8Array(8)), { message: /maximum messages per subject exceeded/ }, 'the flooder\'s subject is full');
  // The cap counts each sender alone: the real sender's frames into the same slot still go in (a flood was a kill switch).
  for (let i = 0; i < 3; i++) await js.publish(sender, new Uint8Array(8));
  await js.publish(res.names.edge('grad', 0, 0, 'USENDER'), new Uint8Array(8));  // other edges still take frames
  t.is((await res.jsm.streams.info(res.names.inputStream(0, 1))).state.messages, limits.maxFramesPerEdge + 3, 'nothing of the flooder past its limit was stored');
  t.is((await res.jsm.streams.info(res.names.inputStream(0, 0))).state.messages, 1);

  const dead = (await res.jsm.streams.info(res.names.deadStream)).config;
  // Full, it refuses new letters and keeps the old (nobody flushes the evidence), and each writer has its share.
  t.like(dead, { max_msgs: 10_000, max_bytes: 256 * 1024 * 1024, discard: 'new', max_msgs_per_subject: 1000, discard_new_per_subject: true });
  await t.throwsAsync(js.publish(res.names.report(0, 0), new Uint8Array(256 * 1024 + 1)), { message: /message size exceeds maximum allowed/ }, 'reports are small');
});
