// Reading an object whole, on a real server: the bytes as put, null for a
// name that is not there, and a read whose server stops sending chunks (the
// server SIGSTOPped mid-read, as a killed or paused one looks to the client)
// abandoned after the stall limit with a transient `timeout` instead of
// waiting for the client's 30 s idle heartbeats; read again once the server
// is back, it is whole.
import test from 'ava';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { isTransient } from '../../runtime/transport/durable-publish.ts';
import { readObject } from '../../runtime/transport/object-reads.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openRunResources } from '../../runtime/transport/run-resources.ts';

test('an object is read whole; a read its server stops feeding is abandoned after the stall limit, transiently, and read again later', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => { server.process.kill('SIGCONT'); return server.stop(); });
  const nc = await connectNats(server.url, 'object-reads-test');
  t.teardown(() => nc.close());
  const { objects } = await openRunResources(nc, 'objreads');
  const blob = Uint8Array.from({ length: 24 << 20 }, (_, i) => (i * 2654435761) >>> 24);  // 24 MiB: 192 chunks
  await objects.putBlob({ name: 'big' }, blob);
  const same = (bytes: Uint8Array | null) => bytes !== null && Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).equals(blob);
  t.true(same(await readObject(objects, 'big')));
  t.is(await readObject(objects, 'absent'), null);

  // Stopped once the first chunk is in: the read is under way.
  let stopped = false;
  const reading = readObject(objects, 'big', { stallMs: 1500, progress: () => { if (!stopped) { stopped = true; server.process.kill('SIGSTOP'); } } });
  const err = await t.throwsAsync(reading, { message: /^timeout: no chunk of object big for 1\.5 s/ });
  t.true(isTransient(err), 'the callers retry it');
  server.process.kill('SIGCONT');
  t.true(same(await readObject(objects, 'big')), 'whole once its server is back');
});

test('an object whose stored chunks do not match its digest is read again, then called corrupt by name, not retried as transient', async (t) => {
  const server = await startNatsServer();
  t.teardown(() => server.stop());
  const nc = await connectNats(server.url, 'object-reads-test');
  t.teardown(() => nc.close());
  const { objects } = await openRunResources(nc, 'objcorrupt');
  await objects.putBlob({ name: 'state' }, new Uint8Array(1000).fill(7));
  const info = await objects.info('state');
  // One more chunk on the object's chunk subject: stored as if it were its own, so every read of it sums wrong.
  nc.publish(`$O.${info!.bucket}.C.${info!.nuid}`, new Uint8Array([1, 2, 3]));
  await nc.flush();
  let reads = 0;
  const err = await t.throwsAsync(readObject(objects, 'state', { progress: (bytes) => { if (bytes === 1000) reads++; } }), { message: /^object state is corrupt: its bytes did not match its SHA-256 digest in 3 whole reads$/ });
  t.false(isTransient(err));
  t.is(reads, 3, 'read whole three times');
});
