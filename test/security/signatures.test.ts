// Host keys, signatures and the slot table's signers, on a real KV bucket:
// a frame counts only when the holder of the sending slot, under the
// generation it claims, signed exactly these bytes for exactly this subject;
// a generation that was replaced is good for what was stored before the
// replacement and stale after it; registrations prove the key, under
// credentials use a key minted for the run, and hold one live host id per key.
// Step control counts only when a coordinator of the run signed it for the
// reader's replica's subject; a reader's consumer is used only as it would make it.
import test from 'ava';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectNats, connectToRun } from '../../runtime/transport/connect.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { newHostKey, parseHostKey, readHostKey, type HostKey } from '../../runtime/security/host-key.ts';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { runCoordinator } from '../../runtime/coordinator/coordinator-process.ts';
import { Membership } from '../../runtime/coordinator/membership.ts';
import { OrderedWrites } from '../../runtime/coordinator/ordered-writes.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { HOST_KEYS_FILE, readHostKeys } from '../../runtime/security/run-host-keys.ts';
import { runStateStore } from '../../runtime/transport/run-state-store.ts';
import type { Registration, RegistrationReply } from '../../schemas/control-messages.ts';
import { createLogger } from '../../runtime/log.ts';
import { decodeJson, encodeJson } from '../../schemas/json-message.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { signatureHeader } from '../../runtime/security/message-signature.ts';
import { checkRegistration, registrationProof } from '../../runtime/security/registration.ts';
import { SlotSigners } from '../../runtime/security/slot-signers.ts';
import { controlSignature, CoordinatorKeys } from '../../runtime/security/coordinator-keys.ts';
import { addCoordinatorKey, readCoordinatorRecord } from '../../runtime/transport/coordinator-record.ts';
import { consumerMismatch, openExistingRun, openRunResources } from '../../runtime/transport/run-resources.ts';
import { assignSlot, readSlot } from '../../runtime/transport/slots.ts';

test('the slot table binds generations to keys: wrong key, unknown generation, altered bytes, other subject, stale generation, no header', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const nc = await connectNats(server.url, 'signers-test');
  t.teardown(() => nc.close());
  const { kv } = await openRunResources(nc, 'signers');
  const first = newHostKey(), second = newHostKey(), stranger = newHostKey();
  await assignSlot(kv, 0, 0, 'host-a', { key: first.publicKey, until: {} });
  const signers = new SlotSigners(kv);  // learns the slot from KV on its first miss
  const subject = 'caravan.signers.act.0.1';
  const body = new Uint8Array([1, 2, 3, 4]);
  const check = (header: string | undefined, o: { seq?: number; subject?: string; body?: Uint8Array } = {}) =>
    signers.check({ kind: 'frame', subject: o.subject ?? subject, body: o.body ?? body, header, replica: 0, stage: 0, edge: 'act', seq: o.seq ?? 5 });

  t.like(await check(signatureHeader(first, 1, 'frame', subject, body)), { ok: true, generation: 1, host: 'host-a' });
  t.like(await check(signatureHeader(stranger, 1, 'frame', subject, body)), { ok: false, fault: 'signature' });
  t.like(await check(signatureHeader(first, 2, 'frame', subject, body)), { ok: false, fault: 'signer' });
  t.like(await check(signatureHeader(first, 1, 'frame', subject, body), { body: new Uint8Array([1, 2, 3, 5]) }), { ok: false, fault: 'signature' }, 'altered bytes');
  t.like(await check(signatureHeader(first, 1, 'frame', subject, body), { subject: 'caravan.signers.act.1.1' }), { ok: false, fault: 'signature' }, 'replayed onto another edge');
  t.like(await check(signatureHeader(first, 1, 'report', subject, body)), { ok: false, fault: 'signature' }, 'a report signature is not a frame signature');
  t.like(await check(undefined), { ok: false, fault: 'unsigned', reason: 'frame from replica 0 stage 0: no Caravan-Sig header' });
  t.like(await check('1.short'), { ok: false, fault: 'unsigned' });

  // The slot goes to host-b when the input stream host-a sent its activations to ends at sequence 7.
  await assignSlot(kv, 0, 0, 'host-b', { key: second.publicKey, until: { act: 7 } });
  const record = (await readSlot(kv, 0, 0))!.record;
  t.deepEqual(record.signers, [
    { generation: 1, host: 'host-a', key: first.publicKey, until: { act: 7 } },
    { generation: 2, host: 'host-b', key: second.publicKey },
  ]);
  t.like(await check(signatureHeader(second, 2, 'frame', subject, body), { seq: 9 }), { ok: true, generation: 2 }, 'the new generation is learnt on its first frame');
  t.like(await check(signatureHeader(first, 1, 'frame', subject, body), { seq: 7 }), { ok: true, generation: 1 }, 'what generation 1 stored before it was replaced is replayed');
  const stale = await check(signatureHeader(first, 1, 'frame', subject, body), { seq: 8 });
  t.like(stale, { ok: false, fault: 'stale' });
  t.regex((stale as { reason: string }).reason, /generation 1 \(host host-a\) was stored at sequence 8, after that generation was replaced \(at 7\)/);
});

test('host keys: seed files parse, bad ones are refused by name; registrations must prove the key', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-keys-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const key = newHostKey();
  const file = join(dir, 'host.nk');
  await writeFile(file, `# a comment\n${new TextDecoder().decode(key.seed)}\n`);
  t.is((await readHostKey(file)).publicKey, key.publicKey);
  await t.throwsAsync(readHostKey(join(dir, 'missing.nk')), { message: `nkey file ${join(dir, 'missing.nk')}: no such file` });
  await writeFile(join(dir, 'empty.nk'), '# nothing\n');
  await t.throwsAsync(readHostKey(join(dir, 'empty.nk')), { message: /no seed line/ });
  const seed = new TextDecoder().decode(key.seed);
  const flipped = `${seed.slice(0, 20)}${seed[20] === 'A' ? 'B' : 'A'}${seed.slice(21)}`;
  t.throws(() => parseHostKey(flipped), { message: /not an nkey seed/ }, 'a checksum error');

  const proof = registrationProof(key, 'run-1', 'host-x');
  t.is(checkRegistration('run-1', { host: 'host-x', key: key.publicKey, proof }), undefined);
  t.regex(checkRegistration('run-2', { host: 'host-x', key: key.publicKey, proof })!, /the proof is not a signature of this registration/, 'a proof is for one run');
  t.regex(checkRegistration('run-1', { host: 'host-y', key: key.publicKey, proof })!, /the proof is not a signature/, 'and one host id');
  t.regex(checkRegistration('run-1', { host: 'host-x', key: newHostKey().publicKey, proof })!, /the proof is not a signature/, 'and one key');
  t.regex(checkRegistration('run-1', { host: 'host-x', key: 'not-a-key', proof })!, /'key' is not a user's public nkey/);
  t.regex(checkRegistration('run-1', { host: 'a.b', key: key.publicKey, proof })!, /host id "a\.b" is not/);
  t.regex(checkRegistration('run-1', { host: 'host-x', key: key.publicKey })!, /'proof' is not an ed25519 signature/);
});

test('the coordinator admits a registration only with a proof of its key, and keeps a host id bound to its first key', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 2, steps: 1 } } });
  const coordinator = runCoordinator({ nats: server.url, run: 'admit', config, log: createLogger('test', 'silent') });
  const nc = await connectNats(server.url, 'registrant');
  t.teardown(() => nc.close());
  const names = runNames('admit');
  const key = newHostKey();
  const register = async (host: string, k: HostKey, proof = registrationProof(k, 'admit', host)) => {
    for (;;) {
      try {
        return decodeJson<{ ok: boolean; reason?: string }>((await nc.request(names.register, encodeJson({ host, datacenter: 'x', device: 'cpu', key: k.publicKey, proof }), { timeout: 5000 })).data, 'reply');
      } catch (err) {
        if (!/no responders/.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 100));  // the coordinator is still starting
      }
    }
  };
  t.deepEqual(await register('spare-1', key, registrationProof(newHostKey(), 'admit', 'spare-1')),
    { ok: false, reason: `host spare-1: the proof is not a signature of this registration by key ${key.publicKey.slice(0, 12)}…` });
  t.like(await register('spare-1', key), { ok: true });
  t.deepEqual(await register('spare-1', newHostKey()), { ok: false, reason: 'host id spare-1 is registered with another key' });
  t.like(await register('spare-1', key), { ok: true }, 'the same key again is a retry, not an impostor');
  nc.publish(names.failed, encodeJson({ reason: 'test over' }));
  await t.throwsAsync(coordinator, { message: 'test over' });
});

test('under credentials a key must be minted for the run and holds one live host id; once that host is lost it registers again', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-bound-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { authConfig } = await mintCredentials({ dir, run: 'bound', hosts: 2, observers: 0, shape: { stages: 2, replicas: 1 } });
  const seed = (name: string) => join(dir, 'bound', `${name}.nk`);
  const [key0, key1] = await Promise.all([readHostKey(seed('host-0')), readHostKey(seed('host-1'))]);
  t.deepEqual([...(await readHostKeys(join(dir, 'bound', HOST_KEYS_FILE))).entries()], [[key0.publicKey, 'host-0'], [key1.publicKey, 'host-1']], 'caravan creds lists the host keys beside the seeds');
  await rm(seed('host-1'));
  await mintCredentials({ dir, run: 'bound', hosts: 1, observers: 0 });
  t.deepEqual([...(await readHostKeys(join(dir, 'bound', HOST_KEYS_FILE))).keys()], [key0.publicKey], 'a revoked host (its seed deleted) leaves the list');
  // A host minted again (another key), to beat for h-a under its own key below.
  const { authConfig: withHost1 } = await mintCredentials({ dir, run: 'bound', hosts: 2, observers: 0 });

  // A coordinator under credentials does not start without the run's host keys.
  const elsewhere = join(dir, 'elsewhere');
  await mkdir(elsewhere);
  await copyFile(seed('coordinator'), join(elsewhere, 'coordinator.nk'));
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 2, steps: 1 } } });
  const log = createLogger('test', 'silent');
  await t.throwsAsync(runCoordinator({ nats: 'nats://127.0.0.1:1', run: 'bound', config, log, nkey: join(elsewhere, 'coordinator.nk') }),
    { message: /host-keys\.pub: no such file; a coordinator under credentials admits only the run's host keys/ });

  const server = await startNatsServer({ config: [await readFile(withHost1, 'utf8')] });
  t.teardown(() => server.stop());
  const coordinator = runCoordinator({ nats: server.url, run: 'bound', config, log, nkey: seed('coordinator'), heartbeatTimeoutMs: 1000 });
  const nc = await connectToRun(server.url, 'host-0', 'bound', seed('host-0'));
  t.teardown(() => nc.close());
  const names = runNames('bound');
  const register = async (host: string, k: HostKey) => {
    for (;;) {
      try {
        const body = encodeJson({ host, datacenter: 'x', device: 'cpu', key: k.publicKey, proof: registrationProof(k, 'bound', host) });
        return decodeJson<{ ok: boolean; reason?: string }>((await nc.request(names.register, body, { timeout: 5000 })).data, 'reply');
      } catch (err) {
        if (!/no responders/.test((err as Error).message)) throw err;
        await new Promise((r) => setTimeout(r, 100));  // the coordinator is still starting
      }
    }
  };
  const beat = setInterval(() => nc.publish(names.heartbeat('h-a', key0.publicKey), encodeJson({ host: 'h-a', datacenter: 'x', deadLetters: 0 })), 100);
  t.teardown(() => clearInterval(beat));

  t.like(await register('h-a', key0), { ok: true });
  t.deepEqual(await register('h-b', key0), {
    ok: false, reason: `key ${key0.publicKey.slice(0, 12)}… is registered by host h-a, which is live: one key holds one host id at a time (it is free again once h-a is lost)`, retry: true,
  });
  const stranger = newHostKey();
  t.regex((await register('h-c', stranger)).reason ?? '', new RegExp(`^host h-c: key ${stranger.publicKey} is not one of the run's host keys \\(2 in host-keys\\.pub\\)`));
  t.like(await register('h-a', key0), { ok: true }, 'the live host itself may retry');

  // h-a's heartbeats stop: once it is lost, its key registers again under a new host id (a restarted process).
  // Another host's beats for h-a, under its own key (the only one its credentials publish under), do not keep it alive.
  clearInterval(beat);
  const other = await connectToRun(server.url, 'host-1', 'bound', seed('host-1'));
  t.teardown(() => other.close());
  const otherKey = (await readHostKey(seed('host-1'))).publicKey;
  const forged = setInterval(() => other.publish(names.heartbeat('h-a', otherKey), encodeJson({ host: 'h-a', datacenter: 'x', deadLetters: 0 })), 100);
  t.teardown(() => clearInterval(forged));
  const deadline = Date.now() + 10_000;
  let again = await register('h-b', key0);
  while (!again.ok && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    again = await register('h-b', key0);
  }
  t.like(again, { ok: true }, 'h-a was lost though another key kept beating for it');
  clearInterval(forged);

  // A restarted coordinator knows from the KV host records which host holds the key.
  const admin = await connectToRun(server.url, 'coordinator-side', 'bound', seed('coordinator'));
  t.teardown(() => admin.close());
  const store = runStateStore((await openExistingRun(admin, 'bound', server.url)).kv, names);
  while ((await store.readHost('h-a'))?.status !== 'lost' || (await store.readHost('h-b'))?.status !== 'joined') await new Promise((r) => setTimeout(r, 50));
  const restarted = new Membership({
    run: 'bound', store, writes: new OrderedWrites((err) => t.fail(err.message)), log, recoveries: { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 }, send: () => {},
  });
  const replies: RegistrationReply[] = [];
  const registration: Registration = { host: 'h-c', datacenter: 'x', device: 'cpu', key: key0.publicKey, proof: registrationProof(key0, 'bound', 'h-c') };
  await restarted.register(registration, (r) => replies.push(r));
  t.like(replies[0], { ok: false });
  t.regex(replies[0]?.reason ?? '', /is registered by host h-b, which is live/);

  admin.publish(names.failed, encodeJson({ reason: 'test over' }));  // only the coordinator's credentials may announce a failure
  await t.throwsAsync(coordinator, { message: 'test over' });
});

test('step control counts only when a coordinator of the run signed it for this replica\'s subject, under any key it has had', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const nc = await connectNats(server.url, 'control-keys-test');
  t.teardown(() => nc.close());
  const { kv } = await openRunResources(nc, 'ctlkeys');
  const names = runNames('ctlkeys');
  // A coordinator, then the same one restarted without a seed (a new key): both stay listed, each once.
  const first = newHostKey(), restarted = newHostKey(), host = newHostKey();
  t.is(await addCoordinatorKey(kv, first.publicKey), 0);
  const keys = new CoordinatorKeys(kv);  // reads the record on its first miss
  t.is(await addCoordinatorKey(kv, restarted.publicKey), 1);
  t.is(await addCoordinatorKey(kv, first.publicKey), 0, 'a key already listed keeps its index');
  t.deepEqual((await readCoordinatorRecord(kv))?.keys, [first.publicKey, restarted.publicKey]);

  const mine = names.stepControl(0), other = names.stepControl(1);
  const body = encodeJson({ type: 'commit', step: 3, gradScale: 0.5, gradNorm: 2, loss: 2.1 });
  const check = (header: string | undefined, o: { subject?: string; body?: Uint8Array } = {}) =>
    keys.check({ subject: o.subject ?? mine, body: o.body ?? body, header, expected: mine });

  t.deepEqual(await check(controlSignature({ key: first, index: 0 }, mine, body)), { ok: true });
  t.deepEqual(await check(controlSignature({ key: restarted, index: 1 }, mine, body)), { ok: true }, 'a later key is learnt from the record');
  // Signed by the coordinator for replica 1, delivered to replica 0's holder: on its own subject, or claimed as replica 0's.
  const forOther = controlSignature({ key: first, index: 0 }, other, body);
  t.like(await check(forOther, { subject: other }), { ok: false, fault: 'subject' }, 'another replica\'s subject is not this slot\'s step control');
  t.like(await check(forOther), { ok: false, fault: 'signature' }, 'the signature covers the subject: moved onto this replica\'s, it fails');
  t.like(await keys.check({ subject: other, body, header: forOther, expected: other }), { ok: true }, 'where it belongs it is good');
  t.like(await check(controlSignature({ key: first, index: 0 }, mine, body), { body: encodeJson({ type: 'commit', step: 3, gradScale: 0.25, gradNorm: 2, loss: 2.1 }) }), { ok: false, fault: 'signature' }, 'another gradScale');
  t.like(await check(controlSignature({ key: host, index: 0 }, mine, body)), { ok: false, fault: 'signature' }, 'a host\'s key');
  t.like(await check(controlSignature({ key: first, index: 2 }, mine, body)), { ok: false, fault: 'signer' }, 'a key the record does not list');
  t.like(await check(signatureHeader(first, 0, 'report', mine, body)), { ok: false, fault: 'signature' }, 'a report signature is not a control signature');
  t.like(await check(undefined), { ok: false, fault: 'unsigned' });
  t.like(await check(signatureHeader(host, 1, 'report', names.report(0, 1), body), { subject: names.report(0, 1) }), { ok: false, fault: 'subject' }, 'a report delivered as step control');
});

test('a reader consumer is used only as its reader would make it: filter, deliver policy and start, ack policy', (t) => {
  const want = { filter_subject: 'caravan.r.step.0', deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: 7, ack_policy: AckPolicy.Explicit };
  t.is(consumerMismatch({ ...want }, want), undefined);
  t.is(consumerMismatch({ ...want, filter_subject: undefined, filter_subjects: ['caravan.r.step.0'] }, want), undefined, 'one filter, either field');
  t.is(consumerMismatch({ ...want, filter_subject: 'caravan.r.>' }, want), 'filter ["caravan.r.>"], not ["caravan.r.step.0"]');
  t.regex(consumerMismatch({ ...want, filter_subject: undefined, filter_subjects: ['caravan.r.step.0', 'caravan.r.report.>'] }, want)!, /^filter/);
  t.regex(consumerMismatch({ ...want, filter_subject: undefined }, want)!, /^filter \[\]/, 'no filter: the whole stream');
  t.is(consumerMismatch({ ...want, deliver_policy: DeliverPolicy.All, opt_start_seq: undefined }, want), 'deliver policy all, not by_start_sequence');
  t.is(consumerMismatch({ ...want, opt_start_seq: 1 }, want), 'start sequence 1, not 7');
  t.is(consumerMismatch({ ...want, ack_policy: AckPolicy.None }, want), 'ack policy none, not explicit');
});
