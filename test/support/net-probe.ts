// A network probe to run inside a namespace (`ip netns exec NS node --import tsx net-probe.ts …`):
//   server HOST PORT          echoes each 1-byte ping; after "up N\n", counts N bytes and answers "k"
//   client HOST PORT rtt      prints {"rtt_ms": the least of 9 pings (queueing only ever adds)}
//   client HOST PORT up N     prints {"mbit": N bytes sent, over the time until the answer less one round trip}
import { once } from 'node:events';
import { connect, createServer } from 'node:net';

const [mode, host, portText, what, nText] = process.argv.slice(2);
const port = Number(portText);
if (mode === 'server') {
  createServer({ noDelay: true }, (s) => {
    let counting = -1;
    let header = '';
    s.on('data', (d: Buffer) => {
      if (counting > 0) { counting -= d.length; if (counting <= 0) s.write('k'); return; }
      header += d.toString('latin1');
      if (header.startsWith('up ')) {
        const nl = header.indexOf('\n');
        if (nl < 0) return;
        counting = Number(header.slice(3, nl)) - (header.length - nl - 1);
        header = '';
        if (counting <= 0) s.write('k');
        return;
      }
      s.write(header);  // pings
      header = '';
    });
    s.on('error', () => {});
  }).listen(port, host, () => process.stdout.write('listening\n'));
} else {
  const s = connect({ host, port, noDelay: true });
  await once(s, 'connect');
  const ping = async () => { const t0 = performance.now(); s.write('p'); await once(s, 'data'); return performance.now() - t0; };
  const rtts: number[] = [];
  for (let i = 0; i < 9; i++) rtts.push(await ping());
  const rtt = Math.min(...rtts);
  if (what === 'rtt') process.stdout.write(`${JSON.stringify({ rtt_ms: rtt })}\n`);
  else {
    const n = Number(nText);
    const t0 = performance.now();
    s.write(`up ${n}\n`);
    const chunk = Buffer.alloc(64 * 1024, 7);
    for (let sent = 0; sent < n; sent += chunk.length) if (!s.write(chunk.subarray(0, Math.min(chunk.length, n - sent)))) await once(s, 'drain');
    await once(s, 'data');
    process.stdout.write(`${JSON.stringify({ mbit: (n * 8) / ((performance.now() - t0 - rtt) * 1000), rtt_ms: rtt })}\n`);
  }
  s.destroy();
}
