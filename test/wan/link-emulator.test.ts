// The userspace link on loopback, against a real echo server: the round trip
// and the rate it imposes match its settings within 20%; a change while a
// connection is open takes effect; a partition delivers nothing and loses
// nothing, and the bytes arrive in order once it heals.
import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { createServer, connect, type Socket } from 'node:net';
import { LinkEmulator, type LinkSettings } from '../../runtime/wan/link-emulator.ts';

async function echoServer(t: { teardown(f: () => void): void }): Promise<number> {
  const server = createServer((s) => s.pipe(s));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  return (server.address() as { port: number }).port;
}

/** Round trip of one small message, ms. */
async function roundTrip(socket: Socket): Promise<number> {
  const t0 = performance.now();
  socket.write('x');
  await once(socket, 'data');
  return performance.now() - t0;
}

/** Sends n bytes and waits for their echo; the one-way rate, Mbit/s. */
async function echoRate(socket: Socket, n: number): Promise<number> {
  let got = 0;
  const t0 = performance.now();
  const done = new Promise<void>((resolve) => {
    const on = (d: Buffer) => { got += d.length; if (got >= n) { socket.off('data', on); resolve(); } };
    socket.on('data', on);
  });
  socket.write(Buffer.alloc(n, 1));
  await done;
  return (n * 8) / ((performance.now() - t0) * 1000);
}

/** An echo server behind a link with these settings each way, and a client connected through it. */
async function throughLink(t: ExecutionContext, forward: LinkSettings, backward: LinkSettings): Promise<{ link: LinkEmulator; socket: Socket }> {
  const port = await echoServer(t);
  const link = new LinkEmulator({ name: 'a-b', listen: { host: '127.0.0.1', port: 0 }, target: { host: '127.0.0.1', port }, forward, backward });
  const listen = await link.start();
  t.teardown(() => link.stop());
  const socket = connect({ host: '127.0.0.1', port: listen, noDelay: true });
  await once(socket, 'connect');
  t.teardown(() => socket.destroy());
  return { link, socket };
}

/** The least of n round trips: other work on the machine only ever adds to one. */
async function leastRoundTrip(socket: Socket, n: number): Promise<number> {
  let least = Infinity;
  for (let i = 0; i < n; i++) least = Math.min(least, await roundTrip(socket));
  return least;
}

test('round trip and rate match the settings within 20%, and follow a change made while the connection is open', async (t) => {
  const { link, socket } = await throughLink(t, { delayMs: 20, jitterMs: 0, rateMbit: 80, up: true }, { delayMs: 20, jitterMs: 0, rateMbit: 0, up: true });

  const rtt = await leastRoundTrip(socket, 5);
  t.true(Math.abs(rtt - 40) <= 8, `RTT ${rtt.toFixed(1)} ms for 2 × 20 ms`);
  // 2 MB at 80 Mbit/s is 200 ms of serialisation, plus the 40 ms round trip. Load only ever slows a transfer: the best of two.
  const rate = Math.max(await echoRate(socket, 2_000_000), await echoRate(socket, 2_000_000));
  const expected = (2_000_000 * 8) / ((2_000_000 * 8) / 80_000 + 40) / 1000;
  t.true(Math.abs(rate - expected) / expected <= 0.2, `rate ${rate.toFixed(1)} Mbit/s, expected ${expected.toFixed(1)}`);

  link.set({ delayMs: 50 });
  const rtt2 = await leastRoundTrip(socket, 3);
  t.true(Math.abs(rtt2 - 100) <= 20, `RTT ${rtt2.toFixed(1)} ms after the change to 2 × 50 ms`);
});

test('a partition delivers nothing and loses nothing; healed, every byte arrives in order', async (t) => {
  const { link, socket } = await throughLink(t, { delayMs: 5, jitterMs: 5, rateMbit: 0, up: true }, { delayMs: 5, jitterMs: 5, rateMbit: 0, up: true });
  const received: Buffer[] = [];
  socket.on('data', (d: Buffer) => received.push(d));

  link.set({ up: false });
  const sent = Buffer.from(Array.from({ length: 5000 }, (_, i) => i % 251));
  for (let i = 0; i < 5; i++) socket.write(sent.subarray(i * 1000, (i + 1) * 1000));
  await new Promise((r) => setTimeout(r, 300));
  t.is(Buffer.concat(received).length, 0, 'nothing crosses a partition');
  link.set({ up: true });
  const t0 = performance.now();
  while (Buffer.concat(received).length < sent.length && performance.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 10));
  t.deepEqual(Buffer.concat(received), sent, 'healed: all of it, in order (jitter never reorders)');
});
