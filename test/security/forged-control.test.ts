// Forged step control, against a real nats-server with the shipped
// permissions: a host of the run cannot publish on `step.<r>`, but it may
// create and delete consumers of the control log and publish reports, which
// the same log holds. A consumer made in advance under a stage's control
// consumer name with a filter for the whole run would deliver a report whose
// body is a `commit` as step control. The stage replaces a consumer it did
// not make as it would (filter, start, acks), and acts only on step control
// the coordinator signed for its replica's subject: a consumer switched under
// it while it reads delivers the forgery, which is dead-lettered (or is
// replaced first: a holder makes a deleted consumer again), and the run ends
// with the weights of the clean run.
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { DEAD_LETTER_HEADERS } from '../../runtime/transport/dead-letters.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';

const RUN = 'ctlrun';
const names = runNames(RUN);
const forgedCommit = (step: number) => new TextEncoder().encode(JSON.stringify({ type: 'commit', step, gradScale: 0.25, gradNorm: 1, loss: 1 }));

/** A consumer of the control log under `name` that delivers everything of the run, as a peer with host credentials can make it. */
async function broadConsumer(jsm: JetStreamManager, name: string, startSeq?: number): Promise<void> {
  await jsm.consumers.add(names.controlStream, {
    durable_name: name, filter_subject: names.all, ack_policy: AckPolicy.Explicit,
    ...(startSeq ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: startSeq } : { deliver_policy: DeliverPolicy.All }),
  });
}

test('a host\'s credentials cannot change the weights through the control log: forged consumers replaced, forged commits refused and dead-lettered', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-creds-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { authConfig } = await mintCredentials({ dir, run: RUN, hosts: 3, observers: 0, shape: { stages: 2, replicas: 1 } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const nk = (name: string) => join(dir, RUN, `${name}.nk`);
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 6, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 5, checkpointEvery: 2 } } });
  const victim = names.controlConsumer(0, 1, 1);  // stage 1's holder, generation 1: the first assignment
  let switched: Promise<number | undefined> = Promise.resolve(undefined);

  const summary = await trainDistributed({
    config, nats: server.url, run: RUN, log: createLogger('test', 'silent'),
    credentials: { coordinator: nk('coordinator'), hosts: [nk('host-0'), nk('host-1')] },
    onReady: async () => {
      // host-2 holds valid credentials and no slot.
      const intruder = await connectToRun(server.url, 'intruder', RUN, nk('host-2'));
      t.teardown(() => intruder.close());
      const jsm = await jetstreamManager(intruder);
      const js = jetstream(intruder);
      // Before the stage starts: its consumer, made in advance for the whole run, and a report whose body is a commit.
      await broadConsumer(jsm, victim);
      await js.publish(names.report(0, 1), forgedCommit(0));
      // While it reads (the stage has replaced the consumer above by one of its own filter, or this never starts):
      // its consumer switched for one that delivers the whole run from where the stage has got to, and a second forgery.
      switched = (async () => {
        const deadline = Date.now() + 120_000;
        while (Date.now() < deadline) {
          const info = await jsm.consumers.info(names.controlStream, victim).catch(() => undefined);
          if (info && info.config.filter_subject === names.stepControl(0) && info.delivered.stream_seq > 0) {
            await jsm.consumers.delete(names.controlStream, victim).catch(() => {});
            // The holder makes a deleted consumer again as soon as it hears of it: the intruder may lose the race, and tries again.
            const made = await broadConsumer(jsm, victim, info.delivered.stream_seq + 1).then(() => true, (err: Error) => { if (/already exists/.test(err.message)) return false; throw err; });
            if (made) return (await js.publish(names.report(0, 1), forgedCommit(info.delivered.consumer_seq))).seq;
          }
          await new Promise((r) => setTimeout(r, 10));
        }
        return undefined;
      })();
    },
  });
  const forgedSeq = await switched;
  t.truthy(forgedSeq, 'the intruder switched the stage\'s consumer while it read');
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, clean.paramsSha256, 'the forged commits changed nothing');

  // What the stage refused is in the dead-letter stream, counted: the forgery among it, by subject.
  const admin = await connectToRun(server.url, 'admin', RUN, nk('coordinator'));
  t.teardown(() => admin.close());
  const jsm = await jetstreamManager(admin);
  const dead = [];
  const { state } = await jsm.streams.info(names.deadStream);
  for (let seq = state.first_seq; seq <= state.last_seq && seq > 0; seq++) {
    const m = await jsm.streams.getMessage(names.deadStream, { seq });
    if (!m) continue;
    dead.push({ data: new TextDecoder().decode(m.data), fault: m.header.get(DEAD_LETTER_HEADERS.fault), subject: m.header.get(DEAD_LETTER_HEADERS.subject), reason: m.header.get(DEAD_LETTER_HEADERS.reason) });
  }
  // The forgery is delivered through the switched consumer and refused, unless the holder replaced that consumer
  // first (it makes one of another config again when it hears its own was deleted); the one before was never delivered.
  const forged = dead.filter((d) => d.data.includes('"gradScale":0.25'));
  t.true(forged.length <= 1, `${forged.length} forgeries dead-lettered`);
  t.true(summary.dead_letters >= forged.length, 'counted');
  for (const f of forged) {
    t.like(f, { fault: 'subject', subject: names.report(0, 1) });
    t.regex(f.reason, /not this replica's step control/);
  }
});
