// `npm run bench -- transport`: the project's own edge path as hosts run it —
// encode a tensor frame into a buffer used again once stored
// (runtime/host/frame-buffers.ts), sign it, publish it to JetStream with its
// Nats-Msg-Id, consume it through the stage's durable pull consumer, check
// the signature, decode and validate it, ack it — beside the same path
// encoding into a fresh buffer each time (as hosts did before),
// the same JetStream path with raw bytes (what the store itself costs), raw
// bytes into a stream that acknowledges before it writes to disk
// (persist_mode async, nats-server ≥ 2.12, one server only), core NATS
// pub/sub and raw loopback TCP moving the same bytes, alternated in one run on
// one embedded nats-server (fsync on every write, as runs use).
//
// Raw NATS on purpose: this bench measures the client and the server
// themselves, so it publishes, pulls and subscribes with the NATS client
// directly (through the run's resources from runtime/transport, and a bare
// subject for core pub/sub) where runtime code would use the seam's typed
// handles. The seam rule (test/architecture/nats-seam.test.ts) is for runtime/.
import { once } from 'node:events';
import { createServer, connect as tcpConnect, type Socket } from 'node:net';
import { connectNats } from '../runtime/transport/connect.ts';
import { startNatsServer } from '../runtime/nats/nats-server.ts';
import { ensureInputStream, openEdgeConsumer, openRunResources } from '../runtime/transport/run-resources.ts';
import { PersistMode } from '@nats-io/jetstream';
import { decodeFrame, encodeFrame, encodeFrameWithCodecs, frameMsgId } from '../schemas/tensor-frame.ts';
import { FrameBuffers } from '../runtime/host/frame-buffers.ts';
import { newMessageHeaders } from '../runtime/transport/message-headers.ts';
import { newHostKey, verifySignature } from '../runtime/security/host-key.ts';
import { parseSignatureHeader, SIGNATURE_HEADER, signatureHeader } from '../runtime/security/message-signature.ts';

const MiB = 1024 * 1024;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export async function benchTransport(args: string[]): Promise<Record<string, unknown>> {
  const reps = Number(args.find((a) => a.startsWith('--reps='))?.slice(7) ?? 3);
  const perSize = Number(args.find((a) => a.startsWith('--mib='))?.slice(6) ?? 64);  // MiB moved per size per method
  const sizes = [64 * 1024, MiB, 4 * MiB];
  const server = await startNatsServer();
  const nc = await connectNats(server.url, 'bench-transport');
  const run = 'bench';
  const res = await openRunResources(nc, run);
  const d = 256;
  try {
    const methods = ['edge', 'edge_fresh', 'jetstream', 'jetstream_async'] as const;
    const results: Record<string, Record<number, number[]>> = { edge: {}, edge_fresh: {}, jetstream: {}, jetstream_async: {}, core: {}, tcp: {} };
    const buffers = new FrameBuffers(9);
    const key = newHostKey();
    let seq = 0;
    console.log(`transport bench: frames of ${sizes.map((s) => `${s / 1024} KiB`).join(', ')}, ${perSize} MiB each per method, ${reps} reps, nats-server with sync_interval always`);
    for (let rep = 0; rep < reps; rep++) {
      for (const bytes of sizes) {
        const count = Math.max(4, Math.round((perSize * MiB) / bytes));
        const T = bytes / 4 / d;  // [1, T, d] floats
        const data = new Float32Array(bytes / 4).map((_, i) => Math.sin(i));

        // Edge: encode → JetStream publish (8 acks in flight) → durable pull consumer → decode → ack;
        // then the same JetStream path with the raw payload, to separate our costs from the store's.
        const payload = new Uint8Array(data.buffer);
        for (const method of methods) {
          const stage = 1 + (seq++ % 1000);
          await ensureInputStream(res, 0, stage);
          if (method === 'jetstream_async') {
            // Acknowledged before it is on disk: the stream is made again with the one setting changed (R1 only).
            const config = (await res.jsm.streams.info(res.names.inputStream(0, stage))).config;
            await res.jsm.streams.delete(config.name);
            await res.jsm.streams.add({ ...config, persist_mode: PersistMode.Async });
          }
          const consumerName = await openEdgeConsumer(res, 'act', 0, stage, 1);
          const consumer = await res.js.consumers.get(res.names.inputStream(0, stage), consumerName);
          const t0 = performance.now();
          const messages = await consumer.consume({ max_bytes: 32 * MiB });
          const received = (async () => {
            let n = 0;
            for await (const m of messages) {
              if (method === 'edge' || method === 'edge_fresh') {
                const sig = parseSignatureHeader(m.headers?.get(SIGNATURE_HEADER), 'frame', m.subject, m.data);
                if (typeof sig === 'string' || !verifySignature(key.publicKey, sig.message, sig.signature)) throw new Error('a signed frame did not verify');
              }
              if (!method.startsWith('jetstream')) decodeFrame(m.data, { run, replica: 0, stage, kind: 'act', width: d, maxSeqLen: T });
              m.ack();
              if (++n === count) break;
            }
          })();
          const inflight: Promise<unknown>[] = [];
          for (let i = 0; i < count; i++) {
            const content = { run, replica: 0, stage, step: rep, microbatch: i, kind: 'act', shape: [1, T, d], data } as const;
            const body = method.startsWith('jetstream') ? payload
              : method === 'edge' ? encodeFrameWithCodecs(content, [], (n) => buffers.take(n)).bytes : encodeFrame(content);
            const h = method.startsWith('edge') ? newMessageHeaders() : undefined;
            h?.set(SIGNATURE_HEADER, signatureHeader(key, 1, 'frame', res.names.edge('act', 0, stage, key.publicKey), body));
            const stored = res.js.publish(res.names.edge('act', 0, stage, key.publicKey), body, { msgID: frameMsgId(run, 0, rep, i, 'act', stage), headers: h });
            inflight.push(method === 'edge' ? stored.then(() => buffers.give(body)) : stored);
            if (inflight.length >= 8) await inflight.shift();
          }
          await Promise.all(inflight);
          await received;
          (results[method][bytes] ??= []).push((count * bytes) / MiB / ((performance.now() - t0) / 1000));
          await messages.close();
          await res.jsm.streams.delete(res.names.inputStream(0, stage));
        }

        // Core NATS pub/sub of the same payloads.
        const subject = `bench.core.${seq}`;
        const sub = nc.subscribe(subject, { max: count });
        const t1 = performance.now();
        const got = (async () => { for await (const _ of sub) { /* count them */ } })();
        for (let i = 0; i < count; i++) {
          nc.publish(subject, payload);
          if (i % 16 === 15) await nc.flush();
        }
        await got;
        (results.core[bytes] ??= []).push((count * bytes) / MiB / ((performance.now() - t1) / 1000));

        // Raw loopback TCP.
        (results.tcp[bytes] ??= []).push(await tcpThroughput(payload, count));
      }
    }
    const perSizeMedian = (m: string) => sizes.map((s) => +median(results[m][s]).toFixed(1));
    const mean = (xs: number[]) => +(xs.reduce((a, b) => a + b, 0) / xs.length).toFixed(1);
    const edge = perSizeMedian('edge'), fresh = perSizeMedian('edge_fresh'), raw = perSizeMedian('jetstream'), rawAsync = perSizeMedian('jetstream_async');
    const core = perSizeMedian('core'), tcp = perSizeMedian('tcp');
    for (const [i, s] of sizes.entries()) {
      console.log(`${(s / 1024).toString().padStart(5)} KiB: edge ${edge[i]} MB/s, into fresh buffers ${fresh[i]} MB/s, raw JetStream ${raw[i]} MB/s (async persist ${rawAsync[i]}), core NATS ${core[i]} MB/s, TCP ${tcp[i]} MB/s`);
    }
    // The signing and checking alone, per frame, out of the NATS path.
    const signMs = sizes.map((s) => {
      const body = new Uint8Array(s).fill(7);
      const t0 = performance.now();
      for (let i = 0; i < 50; i++) {
        const subject = res.names.edge('act', 0, 1, key.publicKey);
        const sig = parseSignatureHeader(signatureHeader(key, 1, 'frame', subject, body), 'frame', subject, body);
        if (typeof sig === 'string' || !verifySignature(key.publicKey, sig.message, sig.signature)) throw new Error('did not verify');
      }
      return +((performance.now() - t0) / 50).toFixed(3);
    });
    // What the sender spends on a frame before the client takes it (encode and sign), into fresh buffers and into used ones.
    const senderMs = (reuse: boolean) => sizes.map((s) => {
      const data = new Float32Array(s / 4).map((_, i) => Math.sin(i));
      const subject = res.names.edge('act', 0, 1, key.publicKey);
      const pool = new FrameBuffers(2);
      const content = { run, replica: 0, stage: 1, step: 0, microbatch: 0, kind: 'act', shape: [1, s / 4 / d, d], data } as const;
      const n = Math.max(20, Math.round((64 * MiB) / s));
      const t0 = performance.now();
      for (let i = 0; i < n; i++) {
        const body = reuse ? encodeFrameWithCodecs(content, [], (b) => pool.take(b)).bytes : encodeFrame(content);
        signatureHeader(key, 1, 'frame', subject, body);
        if (reuse) pool.give(body);
      }
      return +((performance.now() - t0) / n).toFixed(3);
    });
    const sendFresh = senderMs(false), sendReused = senderMs(true);
    console.log(`encode and sign, ms per frame: fresh buffers ${sendFresh.join(', ')}; used buffers ${sendReused.join(', ')}`);
    return {
      bench: 'transport',
      frame_bytes: sizes,
      edge_MBps: mean(edge),
      edge_fresh_MBps: mean(fresh),
      sign_and_verify_ms_by_size: signMs,
      encode_and_sign_ms_by_size: { fresh_buffers: sendFresh, used_buffers: sendReused },
      core_nats_MBps: mean(core),
      tcp_MBps: mean(tcp),
      edge_vs_core: +(mean(edge) / mean(core)).toFixed(3),
      jetstream_raw_MBps: mean(raw),
      jetstream_async_MBps: mean(rawAsync),
      edge_vs_jetstream: +(mean(edge) / mean(raw)).toFixed(3),
      durability: { edge: 'fsync on every write (sync_interval: always)', jetstream: 'fsync on every write', jetstream_async: 'persist_mode async: acknowledged before written' },
      by_size: { edge, edge_fresh: fresh, jetstream: raw, jetstream_async: rawAsync, core, tcp },
      reps,
      mib_per_size: perSize,
    };
  } finally {
    await nc.close();
    await server.stop();
  }
}

async function tcpThroughput(payload: Uint8Array, count: number): Promise<number> {
  const total = payload.length * count;
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const done = new Promise<void>((resolve) => {
    server.once('connection', (s: Socket) => {
      let n = 0;
      s.on('data', (chunk: Buffer) => { n += chunk.length; if (n >= total) { s.destroy(); resolve(); } });
    });
  });
  const client = tcpConnect(port, '127.0.0.1');
  await once(client, 'connect');
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    if (!client.write(payload)) await once(client, 'drain');
  }
  await done;
  const mbps = total / MiB / ((performance.now() - t0) / 1000);
  client.destroy();
  server.close();
  return mbps;
}
