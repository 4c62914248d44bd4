// The control log's snapshot in a real nats-server: written as an object
// that the `control-snapshot` KV record names and vouches for by SHA-256,
// read back as written, the one before dropped when a newer one is written;
// and refused by name when its object was overwritten, is missing, or says a
// schema version this coordinator does not know (the replay then reads the
// whole log: control-log-snapshots.ts).
import test from 'ava';
import { createHash, randomUUID } from 'node:crypto';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openRunResources, type RunResources } from '../../runtime/transport/run-resources.ts';
import { controlLog, type ControlLog, type ControlLogEntry } from '../../runtime/transport/control-log.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { CONTROL_SNAPSHOT_VERSION, type ControlSnapshot } from '../../schemas/control-snapshot.ts';
import { encodeJson } from '../../schemas/json-message.ts';

async function openLog(t: import('ava').ExecutionContext): Promise<{ res: RunResources; log: ControlLog }> {
  const server = await startNatsServer();
  const nc = await connectNats(server.url, 'control-snapshot');
  t.teardown(async () => {
    await nc.close().catch(() => {});
    await server.stop();
  });
  const res = await openRunResources(nc, `snap-${randomUUID().slice(0, 8)}`);
  return { res, log: controlLog(res, { key: newHostKey(), index: 0 }) };
}

function snapshotAt(log: ControlLog, res: RunResources, seq: number): ControlSnapshot {
  const entry: ControlLogEntry = {
    seq: seq - 1, subject: res.names.stepControl(0), data: new TextEncoder().encode('{"type":"open","step":4}'), signature: 'k0.c2lnbmF0dXJl',
    source: { kind: 'step', replica: 0 },
  };
  return {
    version: CONTROL_SNAPSHOT_VERSION, seq,
    replicas: [{ first_step: 3, losses: [5.5, null, 4.25], skipped: [1], rolled_back: [] }],
    entries: [log.toSnapshotEntry(entry)],
  };
}

test('a snapshot is read back as written, with its entries as they were logged; a newer one replaces it', async (t) => {
  const { res, log } = await openLog(t);
  t.is(await log.readSnapshot(), undefined, 'none before the first is written');
  const first = snapshotAt(log, res, 40);
  const pointer = await log.writeSnapshot(first);
  t.is(pointer.object, res.names.controlSnapshot(40));
  t.deepEqual(await log.readSnapshot(), first);
  const entry = log.fromSnapshotEntry(first.entries[0]);
  t.deepEqual(entry.source, { kind: 'step', replica: 0 });
  t.is(new TextDecoder().decode(entry.data), '{"type":"open","step":4}');
  t.is(entry.signature, 'k0.c2lnbmF0dXJl');

  const second = snapshotAt(log, res, 90);
  await log.writeSnapshot(second);
  t.deepEqual(await log.readSnapshot(), second);
  t.is(await res.objects.getBlob(res.names.controlSnapshot(40)), null, 'the snapshot before is dropped');
});

test('an overwritten, missing or unknown-version snapshot is refused by name', async (t) => {
  const { res, log } = await openLog(t);
  await log.writeSnapshot(snapshotAt(log, res, 40));
  const name = res.names.controlSnapshot(40);

  await res.objects.putBlob({ name }, encodeJson({ ...snapshotAt(log, res, 40), replicas: [] }));
  await t.throwsAsync(log.readSnapshot(), { message: new RegExp(`control snapshot ${name.replace(/[.]/g, '\\.')}: its sha256 is .* it was overwritten in the object store`) });

  // A body whose digest the record vouches for, but of a version this coordinator does not read.
  const future = encodeJson({ ...snapshotAt(log, res, 40), version: 2 });
  await res.objects.putBlob({ name }, future);
  await res.kv.put(res.names.controlSnapshotKey, encodeJson({ seq: 40, object: name, sha256: createHash('sha256').update(future).digest('hex'), bytes: future.byteLength }));
  await t.throwsAsync(log.readSnapshot(), { message: /control snapshot .*version/ });

  await res.objects.delete(name);
  await t.throwsAsync(log.readSnapshot(), { message: /control snapshot control\/snapshot-40\.json \(log sequence 40\) is missing from the object store/ });
});
