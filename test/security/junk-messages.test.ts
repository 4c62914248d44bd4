// Junk on every subject a host of the run may publish to, sent by a peer
// with valid host credentials while a secured run goes on: heartbeats,
// registration, readiness, chaos announcements (core NATS) and frames,
// reports and dead letters (JetStream), and a flood of frames into both slots
// past the edge's per-subject cap (which once refused the real sender's next
// frame and failed the run: now each sender's subject ends with its key, so
// the flood fills only the flooder's), and the holders' consumers deleted
// (which once left a holder pulling from nothing for good: it now makes them
// again). Each is refused where it lands and
// nothing stops reading: a throw inside a subscription callback once left the
// coordinator deaf to every heartbeat, and it declared every host lost. The
// same peer's well-formed announcement that the run failed (`ctl.failed`) is
// refused by the server: only the coordinator announces a failure, and a
// holder that cannot go on says so in a signed report. The run ends with no
// host lost and the weights of the clean run.
import test from 'ava';
import { readHostKey } from '../../runtime/security/host-key.ts';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { connectToRun, type NatsConnection } from '../../runtime/transport/connect.ts';
import { edgeLimits } from '../../runtime/transport/edge-limits.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';

const text = (s: string) => new TextEncoder().encode(s);
/** Not JSON, truncated JSON, JSON of the wrong shape, fields of the wrong type, nothing at all. */
const JUNK = [new Uint8Array([0xff, 0x00, 0x13, 0x37]), text('{"host":"h'), text('[1,2,3]'), text('null'), text('{"host":5,"reason":[],"type":"commit","step":-1}'), new Uint8Array(0)];

test('junk on every subject a host may publish to is refused, every process reads on, and the run ends with the clean weights', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-junk-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const run = 'junk';
  const { authConfig } = await mintCredentials({ dir, run, hosts: 3, observers: 0, shape: { stages: 2, replicas: 1 } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const seed = (name: string) => join(dir, run, `${name}.nk`);
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 6, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 9, checkpointEvery: 2 } } });
  const names = runNames(run);

  let attacker: NatsConnection | undefined;
  let sent: Promise<string[]> | undefined;
  let failure: string | undefined;
  let leave: string | undefined;
  let resplit: string | undefined;
  let floodRefused = 0;
  let consumersDeleted = 0;
  // Everything host-2 (valid credentials, no slot) may publish on, by its permissions.
  const attack = async (nc: NatsConnection): Promise<string[]> => {
    const js = jetstream(nc);
    const replies: string[] = [];
    const own = (await readHostKey(seed('host-2'))).publicKey;  // a host publishes frames and heartbeats under its own key only
    // Not junk: what would end the run, were a host allowed to announce it.
    nc.publish(names.failed, text('{"reason":"x"}'));
    // Nor a 'failed' report it did not sign as the slot's holder: the coordinator refuses it.
    await js.publish(names.report(0, 1), text(JSON.stringify({ type: 'failed', replica: 0, stage: 1, generation: 1, host: 'host-1', reason: 'x' }))).catch(() => {});
    failure = await nc.request(names.failed, text('{"reason":"x"}'), { timeout: 5000 }).then(() => 'answered', (err: Error) => err.message);
    // Nor take a replica out of the run (`caravan leave`).
    leave = await nc.request(names.leave, text('{"replica":0}'), { timeout: 5000 }).then(() => 'answered', (err: Error) => err.message);
    // Nor re-split it (`caravan repartition --live`).
    resplit = await nc.request(names.resplit, text('{"stage_layers":[1,3]}'), { timeout: 5000 }).then(() => 'answered', (err: Error) => err.message);
    for (const body of JUNK) {
      for (const subject of [names.heartbeat('host-x', own), names.heartbeat('host-0', own), names.ready, names.chaosReached]) nc.publish(subject, body);
      replies.push(new TextDecoder().decode((await nc.request(names.register, body, { timeout: 5000 })).data));
      for (const subject of [names.edge('act', 0, 1, own), names.edge('grad', 0, 0, own), names.report(0, 0), names.report(0, 1), names.dead(0, 0, own)]) {
        await js.publish(subject, body).catch(() => {});  // a stream may refuse it (its limits): refused is fine too
      }
    }
    // A flood: frames into both slots past the per-subject cap. It fills only the flooder's own subjects (its
    // credentials publish under its key alone), so the real senders' frames still go in and the run goes on.
    for (const subject of [names.edge('act', 0, 1, own), names.edge('grad', 0, 0, own)]) {
      for (let i = 0; i <= edgeLimits(config).maxFramesPerEdge; i++) {
        await js.publish(subject, JUNK[0]).catch((err: Error) => { if (/maximum messages per subject/.test(err.message)) floodRefused++; });
      }
    }
    // Deleting a holder's consumers (permissions do not follow the slot yet): the holder makes them again and reads on.
    const jsm = await jetstreamManager(nc);
    for (const [stream, consumer] of [[names.inputStream(0, 1), names.consumer('act', 0, 1, 1)], [names.inputStream(0, 0), names.consumer('grad', 0, 0, 1)], [names.controlStream, names.controlConsumer(0, 1, 1)]]) {
      if (await jsm.consumers.delete(stream, consumer).catch(() => false)) consumersDeleted++;
    }
    await nc.flush();
    return replies;
  };
  const summary = await trainDistributed({
    config, nats: server.url, run, log: createLogger('test', 'silent'), heartbeatTimeoutMs: 4000,
    credentials: { coordinator: seed('coordinator'), hosts: [seed('host-0'), seed('host-1')] },
    onReady: async () => { attacker = await connectToRun(server.url, 'attacker', run, seed('host-2')); },
    // Once the run is under way, so the coordinator and both hosts are reading.
    onProgress: (p) => { if (p.step === 0 && attacker) sent ??= attack(attacker); },
  });
  t.teardown(() => attacker?.close());
  t.truthy(sent, 'the junk went out while the run went on');
  const replies = await sent!;
  t.is(replies.length, JUNK.length);
  for (const r of replies) t.regex(r, /"ok":false,"reason":"registration: /, 'a junk registration is answered with why it was refused');
  t.regex(failure ?? '', new RegExp(`Permissions Violation for Publish to "${names.failed.replaceAll('.', '\\.')}"`), 'a host cannot announce the run\'s failure');
  t.regex(leave ?? '', new RegExp(`Permissions Violation for Publish to "${names.leave.replaceAll('.', '\\.')}"`), 'nor take a replica out');
  t.regex(resplit ?? '', new RegExp(`Permissions Violation for Publish to "${names.resplit.replaceAll('.', '\\.')}"`), 'nor re-split the run');
  t.is(summary.recoveries.hosts_lost, 0, 'the coordinator kept hearing every heartbeat');
  t.true(floodRefused >= 2, 'the flood reached the cap of both subjects it filled');
  t.true(consumersDeleted >= 1, 'a holder\'s consumer was deleted while the run went on');
  t.true(summary.dead_letters >= 2 * JUNK.length, 'junk frames were dead-lettered');
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, clean.paramsSha256, 'the junk changes nothing in the result');
});
