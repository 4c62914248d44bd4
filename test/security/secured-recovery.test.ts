// Recovery under `caravan creds`: a run whose every process holds only its
// role's permissions loses a stage host (SIGKILL, a real process) right after
// it stored a checkpoint of several MiB; a standby, with host credentials,
// must read that checkpoint back from the Object Store, and the run must end
// with the weights of the in-process run. Then an observer reads the final
// states, as `caravan export --nkey` does. Reads that large need JetStream
// flow control (the server stops pushing an object's chunks until the reader
// answers on `$JS.FC.<stream>.…`): without the permission to answer, the
// restore and the export never finish, so each is given a bound and fails
// with a reason instead of hanging.
import test from 'ava';
import { jetstream } from '@nats-io/jetstream';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { hashStageStates } from '../../runtime/coordinator/run-summary.ts';
import { statesFromRun } from '../../runtime/export/run-stage-states.ts';
import { RunWatch } from '../../runtime/dashboard/run-watch.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { permissionsFor } from '../../runtime/security/permissions.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { openExistingRun } from '../../runtime/transport/run-resources.ts';
import { readSlot } from '../../runtime/transport/slots.ts';
import { jetStreamApi, runNames } from '../../runtime/transport/subjects.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';

const RUN = 'secured-recovery';
/** The run takes about half a minute on 2 cores; a restore that cannot finish is called a failure after this. */
const RUN_BOUND_MS = 150_000;
const EXPORT_BOUND_MS = 60_000;

function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms); });
  return Promise.race([p, bound]).finally(() => clearTimeout(timer));
}

test('hosts and observers may answer flow control on the KV and object streams of their run, and on nothing else', (t) => {
  const n = runNames(RUN);
  const key = newHostKey().publicKey;
  const answers = (role: 'host' | 'observer' | 'coordinator') => permissionsFor(role, RUN, { stages: 2, replicas: 1 }, key).publish.allow.filter((s) => s.startsWith('$JS.FC.'));
  for (const role of ['host', 'observer'] as const) t.deepEqual(answers(role), [jetStreamApi.flowControlReplies(n.kvStream), jetStreamApi.flowControlReplies(n.objectStream)], role);
  t.deepEqual(answers('coordinator'), [], 'the coordinator answers through allow_responses');
  t.true(permissionsFor('coordinator', RUN, { stages: 2, replicas: 1 }).allow_responses);
});

test.serial('under caravan creds, a standby restores a multi-MiB checkpoint and an observer exports the final states: the weights of the in-process run', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-secured-recovery-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Two stages and a standby: host-2 takes the slot of the host that is killed.
  const { authConfig } = await mintCredentials({ dir, run: RUN, hosts: 3, observers: 1, shape: { stages: 2, replicas: 1 } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const creds = (name: string) => join(dir, RUN, `${name}.nk`);

  // The tiny model in two stages: each stage's state (parameters and Adam moments, fp32) is several MiB.
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 6, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 9, checkpointEvery: 2 } } });
  let killed = '';
  let checkpoint = { object: '', size: 0 };
  const run = trainDistributed({
    config, nats: server.url, run: RUN, log: createLogger('test', 'silent'), standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'warn',
    credentials: { coordinator: creds('coordinator'), hosts: [creds('host-0'), creds('host-1'), creds('host-2')] },
    onReady: async () => {
      // Watching with the coordinator's credentials (an observer may not subscribe to the run's subjects):
      // when stage 1's holder reports its first checkpoint, it is killed, and its replacement must restore that.
      const nc = await connectToRun(server.url, 'killer', RUN, creds('coordinator'));
      t.teardown(() => nc.close());
      const res = await openExistingRun(nc, RUN, server.url);
      const sub = nc.subscribe(res.names.report(0, 1), {
        callback: (_e, m) => {
          const r = m.json() as { type: string; checkpoint?: { object: string } };
          if (killed || r.type !== 'checkpoint') return;
          killed = 'pending';
          sub.unsubscribe();
          void (async () => {
            const slot = await readSlot(res.kv, 0, 1);
            process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
            killed = slot!.record.host;
            const info = await res.objects.info(r.checkpoint!.object);
            checkpoint = { object: r.checkpoint!.object, size: info?.size ?? 0 };
          })();
        },
      });
    },
  });
  // A restore that hangs would hold the run forever: past the bound, the run is failed (as a host would fail it), which stops every process.
  const watchdog = setTimeout(() => {
    void (async () => {
      const nc = await connectToRun(server.url, 'watchdog', RUN, creds('coordinator'));
      nc.publish(runNames(RUN).failed, JSON.stringify({ reason: `not finished within ${RUN_BOUND_MS / 1000} s (killed ${killed || 'nothing'})` }));
      await nc.flush();
      await nc.close();
    })();
  }, RUN_BOUND_MS);
  t.teardown(() => clearTimeout(watchdog));
  const summary = await run;
  clearTimeout(watchdog);

  t.regex(killed, /-\d+$/, 'stage 1\'s host was killed');
  t.log(`checkpoint ${checkpoint.object}: ${checkpoint.size} bytes`);
  t.true(checkpoint.size > 4 * 1024 * 1024, `the checkpoint the standby restored (${checkpoint.object}) is ${checkpoint.size} bytes: more than flow control lets through unanswered`);
  t.true(summary.recoveries.slots_reassigned >= 1, JSON.stringify(summary.recoveries));
  const reference = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, reference.paramsSha256, 'the restored run ends with the in-process run\'s weights');

  // `caravan export --nkey observer-0.nk`: the final states, read with an observer's credentials.
  const { blobs } = await within(EXPORT_BOUND_MS, 'reading the final states as an observer', statesFromRun(server.url, RUN, 0, creds('observer-0')));
  t.true(blobs.every((b) => b.bytes.length > 4 * 1024 * 1024), `final states of ${blobs.map((b) => b.bytes.length).join(', ')} bytes`);
  t.is(hashStageStates(blobs.map((b) => b.bytes)), summary.params_sha256, 'the observer reads the weights the run reported');

  // `caravan dashboard --nkey observer-0.nk`: the run's records and its step control, and validation loss from the multi-MiB final states.
  const watch = new RunWatch({ nats: server.url, run: RUN, nkey: creds('observer-0'), log: createLogger('test', 'silent'), validateBatches: 1, timeline: false });
  watch.start();
  t.teardown(() => watch.stop());
  let watching = true;
  t.teardown(() => { watching = false; });
  const seen = await within(EXPORT_BOUND_MS, 'the dashboard reading the run as an observer', (async () => {
    while (watching) {
      const s = watch.snapshot();
      if (s.losses.length === config.training.steps && s.validation.points.some((p) => p.step === config.training.steps) && s.events.some((e) => e.kind === 'host_lost')) return s;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error('stopped');
  })());
  t.deepEqual(seen.losses.map((p) => p.loss), summary.losses, 'every commit, read as an observer');
  t.is(seen.validation.error, null);
  t.true(seen.events.some((e) => e.kind === 'slot_reassigned' && e.text.includes('slot 0.1')), JSON.stringify(seen.events));
  // The stages' reports are not the observer's to read: a consumer filtered on them is refused.
  const observer = await connectToRun(server.url, 'observer', RUN, creds('observer-0'));
  t.teardown(() => observer.close());
  const n = runNames(RUN);
  await t.throwsAsync(async () => {
    const reports = await jetstream(observer).consumers.get(n.controlStream, { filter_subjects: n.reports });
    await reports.next({ expires: 2000 });
  }, { message: /permission/i });
});
