// Bad input on the wire: a malformed CBOR frame, a wrong shape, an unknown
// schema version, a frame for another run and one in a codec the receiver
// lacks are each dead-lettered with a reason and counted, and the run ends
// exactly as a clean run does. Each is signed twice, by each host's key as
// the holder of the sending slot, so one copy passes the signature check and
// reaches the decoder, and the other is refused for its signature; an
// unsigned frame is refused too.
import test from 'ava';
import { decode as decodeCbor, Encoder } from 'cbor-x';
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { ensureInputStream, openRunResources } from '../../runtime/transport/run-resources.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { encodeFrame } from '../../schemas/tensor-frame.ts';
import { headers } from '@nats-io/transport-node';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { SIGNATURE_HEADER, signatureHeader } from '../../runtime/security/message-signature.ts';
import { caravan } from '../support/caravan-cli.ts';

test('bad frames are dead-lettered, counted in status, and nothing else is lost', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 3, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 3 } } });
  const { model, training } = config;
  const run = 'badframes';
  const names = runNames(run);
  const shape = [training.batchSize, training.seqLen, model.dModel];
  const good = new Float32Array(shape[0] * shape[1] * shape[2]).fill(0.25);
  // Both hosts' keys: whichever holds stage 0 (generation 1) signs its copy rightly.
  const keys = [newHostKey(), newHostKey()];
  const dir = await mkdtemp(join(tmpdir(), 'caravan-keys-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const files = await Promise.all(keys.map(async (k, i) => {
    const file = join(dir, `host-${i}.nk`);
    await writeFile(file, new TextDecoder().decode(k.seed));
    return file;
  }));

  const summary = await trainDistributed({
    config, nats: server.url, run, log: createLogger('test', 'silent'), credentials: { hosts: files },
    onReady: async () => {
      // Published before any host starts: they are the first things stage 1 reads. Its input stream is made here as
      // the coordinator makes it when it assigns the slot (it finds the stream and keeps it).
      const nc = await connect({ servers: server.url });
      await ensureInputStream(await openRunResources(nc, run), 0, 1);
      const js = jetstream(nc);
      const publish = async (bytes: Uint8Array) => {
        for (const key of keys) {
          const subject = names.edge('act', 0, 1, key.publicKey);
          const h = headers();
          h.set(SIGNATURE_HEADER, signatureHeader(key, 1, 'frame', subject, bytes));
          await js.publish(subject, bytes, { headers: h });
        }
      };
      await publish(new Uint8Array([0xa5, 0x01, 0x02, 0xff, 0x00]));  // not a CBOR frame
      await publish(encodeFrame({ run, replica: 0, stage: 1, step: 0, microbatch: 0, kind: 'act', shape: [shape[0], shape[1], model.dModel / 2], data: new Float32Array(good.length / 2) }));
      const future = new Encoder({ useRecords: false }).encode({ d: new Uint8Array(8), v: 7, run, r: 0, s: 1, t: 0, mb: 0, k: 'act' });
      await publish(future);
      await publish(encodeFrame({ run: 'another-run', replica: 0, stage: 1, step: 0, microbatch: 0, kind: 'act', shape, data: good }));
      const zstd = decodeCbor(encodeFrame({ run, replica: 0, stage: 1, step: 0, microbatch: 0, kind: 'act', shape, data: good })) as Record<string, unknown>;
      await publish(new Encoder({ useRecords: false }).encode({ ...zstd, cx: ['zstd'] }));
      await js.publish(names.edge('act', 0, 1, keys[0].publicKey), encodeFrame({ run, replica: 0, stage: 1, step: 0, microbatch: 1, kind: 'act', shape, data: good }));  // unsigned
      await nc.close();
    },
  });
  t.is(summary.dead_letters, 11);

  const clean = await trainLocal({ ...config, valBatches: 1 });
  t.deepEqual(summary.losses, clean.losses, 'the run is the clean run: nothing else was lost');
  t.is(summary.params_sha256, clean.paramsSha256);

  const status = await caravan(['status', '--nats', server.url, '--run', run, '--json']);
  t.is(status.code, 0, status.stderr);
  const s = JSON.parse(status.stdout);
  t.is(s.dead_letters.count, 11);
  t.deepEqual(s.dead_letters.recent.map((d: { fault: string }) => d.fault).sort(),
    ['codec', 'malformed', 'run', 'shape', 'signature', 'signature', 'signature', 'signature', 'signature', 'unsigned', 'version']);
  t.regex(s.dead_letters.recent.find((d: { fault: string }) => d.fault === 'signature').reason, /frame from replica 0 stage 0: the signature does not match generation 1's key \(host [\w-]+\)/);
  t.regex(s.dead_letters.recent.find((d: { fault: string }) => d.fault === 'unsigned').reason, /no Caravan-Sig header/);
  for (const d of s.dead_letters.recent) t.true(d.reason.length > 10, `a reason is recorded: ${d.reason}`);
  t.regex(s.dead_letters.recent.find((d: { fault: string }) => d.fault === 'codec').reason, /frame uses codec "zstd", which this receiver lacks \(it has: mxint8, lz4\)/);
  t.is(s.state.status, 'finished');
  t.is(s.slots.length, config.training.stages * config.training.replicas, 'every slot has its record');
  for (const slot of s.slots) t.is(slot.generation, 1, 'nobody was replaced');
  const text = await caravan(['status', '--nats', server.url, '--run', run]);
  t.regex(text.stdout, /dead-lettered frames: 11/);
  t.regex(text.stdout, /frames between stages: \d+, [\d.]+ MB as fp32, [\d.]+ MB on the wire/);
  t.regex(text.stdout, /stages busy \(replica 0, whole run\): [\d.]+% [\d.]+%; bubble [\d.]+% \(zb-h2 bound [\d.]+%\); peak activation stash by stage [\d.]+ MB [\d.]+ MB; MFU [\d.]+%/);
  t.regex(text.stdout, /recovery: 0 hosts lost, 0 slots handed to standbys, 0 coordinator restarts/);
  t.regex(text.stdout, /replica 0 stage 0 .* generation 1 {2}checkpoint /);
});

test('an unreachable NATS URL and a bad config each exit non-zero with one clear line', async (t) => {
  const unreachable = await caravan(['train', '--nats', 'nats://127.0.0.1:1', '--steps', '1']);
  t.is(unreachable.code, 1);
  t.regex(unreachable.stderr.trim().split('\n').pop()!, /^caravan: cannot reach NATS at nats:\/\/127\.0\.0\.1:1: /);
  const missing = await caravan(['train', '--config', '/nonexistent/run.yaml']);
  t.is(missing.code, 1);
  t.regex(missing.stderr.trim(), /^caravan: cannot read config \/nonexistent\/run\.yaml: ENOENT$/);
});
