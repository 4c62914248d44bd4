// A run with authentication on, against a real nats-server whose users are
// the ones `caravan creds` minted: a stranger is refused; a host of the run
// cannot write run state, publish step control or touch its streams' config;
// a host of another run can neither read nor write this one; a host with
// valid credentials that signs frames for a slot it does not hold has them
// dead-lettered; and the run ends with the weights of the same run on
// loopback without authentication.
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstream } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { connectNats, connectToRun } from '../../runtime/transport/connect.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { readHostKey } from '../../runtime/security/host-key.ts';
import { SIGNATURE_HEADER, signatureHeader } from '../../runtime/security/message-signature.ts';
import { ensureInputStream, openExistingRun, openRunResources } from '../../runtime/transport/run-resources.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { encodeFrame } from '../../schemas/tensor-frame.ts';
import { caravan } from '../support/caravan-cli.ts';

const VIOLATION = /Permissions Violation for (Publish|Subscription) to/;

test('authenticated run: strangers refused, each role held to its permissions, forged frames dead-lettered, same weights as loopback', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-creds-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Run A: two hosts train, host-2 is a peer with valid credentials that holds no slot. Run B: another run on the same server.
  const minted = await caravan(['creds', '--dir', dir, '--run', 'runa', '--hosts', '3', '--stages', '2', '--replicas', '1', '--json']);
  t.is(minted.code, 0, minted.stderr);
  t.deepEqual(JSON.parse(minted.stdout).users.map((u: { name: string }) => u.name), ['coordinator', 'host-0', 'host-1', 'host-2', 'observer-0']);
  const { authConfig } = await mintCredentials({ dir, run: 'runb', hosts: 1, observers: 0, shape: { stages: 2, replicas: 1 } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const a = (name: string) => join(dir, 'runa', `${name}.nk`);

  await t.throwsAsync(connectNats(server.url, 'stranger'), { message: /Authorization Violation/ }, 'no credentials, no connection');

  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 3, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 5, checkpointEvery: 2 } } });
  const names = runNames('runa');
  const shape = [config.training.batchSize, config.training.seqLen, config.model.dModel];
  const summary = await trainDistributed({
    config, nats: server.url, run: 'runa', log: createLogger('test', 'silent'),
    credentials: { coordinator: a('coordinator'), hosts: [a('host-0'), a('host-1')] },
    onReady: async () => {
      // The run's resources exist (the coordinator's credentials made them); its hosts have not started.
      const intruder = await connectToRun(server.url, 'intruder', 'runa', a('host-2'));
      t.teardown(() => intruder.close());
      const res = await openExistingRun(intruder, 'runa', server.url);
      await t.throwsAsync(res.kv.put('state', new TextEncoder().encode('{"status":"finished"}')), { message: VIOLATION }, 'a host cannot write run state');
      await t.throwsAsync(res.kv.put('slot.0.0', new TextEncoder().encode('{}')), { message: VIOLATION }, 'nor the slot table');
      const js = jetstream(intruder);
      await t.throwsAsync(js.publish(names.stepControl(0), new TextEncoder().encode('{"type":"open","step":0}')), { message: VIOLATION }, 'nor step control');
      await t.throwsAsync(intruder.request(names.finished, new Uint8Array(), { timeout: 2000 }), { message: VIOLATION }, 'nor the coordinator\'s announcements');
      // Stage 1's input stream, made as the coordinator makes it when it assigns the slot (it finds it and keeps it).
      const admin = await connectToRun(server.url, 'coordinator-side', 'runa', a('coordinator'));
      t.teardown(() => admin.close());
      await ensureInputStream(await openRunResources(admin, 'runa'), 0, 1);
      await t.throwsAsync(res.jsm.streams.delete(names.inputStream(0, 1)), { message: VIOLATION }, 'nor delete a stream');
      await t.throwsAsync(res.jsm.streams.purge(names.inputStream(0, 1)), { message: VIOLATION }, 'nor purge one');
      // Frames for stage 1 that claim to come from stage 0's holder: signed with this host's own key, as generation 1 and 2.
      const forged = encodeFrame({ run: 'runa', replica: 0, stage: 1, step: 0, microbatch: 0, kind: 'act', shape, data: new Float32Array(shape[0] * shape[1] * shape[2]).fill(3) });
      const key = await readHostKey(a('host-2'));
      for (const generation of [1, 2]) {
        const h = headers();
        h.set(SIGNATURE_HEADER, signatureHeader(key, generation, 'frame', names.edge('act', 0, 1, key.publicKey), forged));
        await js.publish(names.edge('act', 0, 1, key.publicKey), forged, { headers: h });
      }
      // Under another host's key it may not publish at all: a flood of its own fills only its own subject.
      const someoneElse = (await readHostKey(a('host-0'))).publicKey;
      await t.throwsAsync(js.publish(names.edge('act', 0, 1, someoneElse), forged), { message: VIOLATION }, 'frames only under its own key');

      // A host of run B reaches nothing of run A, and cannot read the replies A's peers get.
      const other = await connectToRun(server.url, 'other-run', 'runb', join(dir, 'runb', 'host-0.nk'));
      t.teardown(() => other.close());
      await t.throwsAsync(openExistingRun(other, 'runa', server.url), { message: /Permissions Violation for Publish to "\$JS\.API\.STREAM\.INFO\.CARAVAN_runa_CTL"/ });
      await t.throwsAsync(other.request(names.register, new Uint8Array(), { timeout: 2000 }), { message: VIOLATION });
      await t.throwsAsync(jetstream(other).publish(names.edge('act', 0, 1, (await readHostKey(join(dir, 'runb', 'host-0.nk'))).publicKey), forged), { message: VIOLATION });
      // Nor, within its own run, the replies another peer gets (JetStream acks, pulled frames): only its own inboxes.
      const host2 = await connectToRun(server.url, 'host-2-side', 'runa', a('host-2'));
      t.teardown(() => host2.close());
      const host0 = (await readHostKey(a('host-0'))).publicKey;
      for (const subject of ['_INBOX.runa.>', `_INBOX.runa.${host0}.>`]) {
        const sub = host2.subscribe(subject);
        const err = await (async () => { try { for await (const _ of sub) { /* nothing may arrive */ } } catch (e) { return e as Error; } })();
        t.regex(err?.message ?? '', VIOLATION, `host-2 subscribing to ${subject} is refused`);
      }
      for (const subject of [`caravan.runa.>`, '_INBOX.>', '_INBOX.runa.>']) {
        const sub = other.subscribe(subject);
        const err = await (async () => { try { for await (const _ of sub) { /* nothing may arrive */ } } catch (e) { return e as Error; } })();
        t.regex(err?.message ?? '', VIOLATION, `subscribing to ${subject} is refused`);
      }
    },
  });
  t.is(summary.dead_letters, 2, 'both forged frames were dead-lettered');
  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, clean.paramsSha256, 'authentication and the forgeries change nothing in the result');

  const status = await caravan(['status', '--nats', server.url, '--run', 'runa', '--nkey', a('observer-0'), '--json']);
  t.is(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout);
  t.deepEqual(s.dead_letters.recent.map((d: { fault: string }) => d.fault).sort(), ['signature', 'signer']);
  t.regex(s.dead_letters.recent.find((d: { fault: string }) => d.fault === 'signer').reason, /claims generation 2, which the slot table does not bind to a key/);
  const holders = await Promise.all([a('host-0'), a('host-1')].map(async (f) => (await readHostKey(f)).publicKey));
  for (const slot of s.slots) t.true(holders.includes(slot.signers[0].key), 'each slot is bound to the key its host registered');

  const observer = await connectToRun(server.url, 'observer', 'runa', a('observer-0'));
  t.teardown(() => observer.close());
  const seen = await openExistingRun(observer, 'runa', server.url);
  await t.throwsAsync(seen.kv.put('state', new Uint8Array([1])), { message: VIOLATION }, 'an observer only reads');
  const unauthenticated = await caravan(['status', '--nats', server.url, '--run', 'runa']);
  t.is(unauthenticated.code, 1);
  t.regex(unauthenticated.stderr, /Authorization Violation/);
});
