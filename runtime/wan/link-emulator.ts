// A WAN link in userspace, because the kernel here has no netem: a TCP proxy
// that delivers each direction's bytes after the link's one-way delay (plus
// jitter), no faster than its rate, and not at all while the link is down.
// Everything can be changed while connections are open (chaos).
//
// Per direction, a chunk that arrives at t is serialised after what is ahead
// of it (the link is busy until `busyUntil`, each chunk taking bytes·8/rate),
// then propagates for delay + a jitter draw; deliveries never overtake each
// other (TCP is a byte stream). While the link is down nothing is delivered
// and nothing is dropped: connections stall as in a real partition, and the
// peers' own timeouts decide what happens. A direction with more than
// HIGH_WATER bytes queued pauses its source, so a slow link pushes back
// instead of buffering without bound.
import { createServer, connect, type Server, type Socket } from 'node:net';

export interface LinkSettings {
  /** One-way delay, ms. */
  readonly delayMs: number;
  /** Up to this much more, drawn uniformly per chunk, ms. */
  readonly jitterMs: number;
  /** Mbit/s; 0 for no limit. */
  readonly rateMbit: number;
  readonly up: boolean;
}

const HIGH_WATER = 4 * 1024 * 1024;

interface Pending { readonly data: Buffer; due: number }

/** One direction of one proxied connection. */
class Direction {
  private readonly queue: Pending[] = [];
  private queued = 0;
  private busyUntil = 0;
  private lastDue = 0;
  private timer: NodeJS.Timeout | undefined;
  /** The source has ended: end the destination once the queue is delivered. */
  private ended = false;

  constructor(private readonly from: Socket, private readonly to: Socket, private readonly link: () => LinkSettings, private readonly random: () => number) {
    from.on('data', (chunk: Buffer) => this.take(chunk));
  }

  private take(chunk: Buffer): void {
    const s = this.link();
    const now = performance.now();
    const serialised = s.rateMbit > 0 ? (chunk.length * 8) / (s.rateMbit * 1000) : 0;  // ms
    this.busyUntil = Math.max(this.busyUntil, now) + serialised;
    const due = Math.max(this.lastDue, this.busyUntil + s.delayMs + s.jitterMs * this.random());
    this.lastDue = due;
    this.queue.push({ data: chunk, due });
    this.queued += chunk.length;
    if (this.queued > HIGH_WATER) this.from.pause();
    this.schedule();
  }

  /** Delivers what is due, and sets a timer for the next; called again when the link comes back up. */
  schedule(): void {
    if (this.timer) return;
    if (!this.link().up) return;
    const now = performance.now();
    while (this.queue.length && this.queue[0].due <= now + 0.5) {
      const { data } = this.queue.shift()!;
      this.queued -= data.length;
      if (!this.to.destroyed) this.to.write(data);
    }
    if (this.queued <= HIGH_WATER / 2 && this.from.isPaused()) this.from.resume();
    if (this.queue.length) {
      this.timer = setTimeout(() => { this.timer = undefined; this.schedule(); }, Math.max(0, this.queue[0].due - now));
    } else if (this.ended) this.to.end();
  }

  end(): void {
    this.ended = true;
    if (!this.queue.length) this.to.end();
  }

  /** A link that was down: what waited is delivered from now, in order, at the link's pace. */
  resumeFrom(now: number): void {
    let t = now;
    for (const p of this.queue) p.due = t = Math.max(t, p.due);
    this.busyUntil = Math.max(this.busyUntil, now);
    this.lastDue = Math.max(this.lastDue, t);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export interface LinkEmulatorOptions {
  readonly name: string;
  /** Where it listens, and where it connects to. */
  readonly listen: { host: string; port: number };
  readonly target: { host: string; port: number };
  /** Client → target, and target → client. */
  readonly forward: LinkSettings;
  readonly backward: LinkSettings;
  /** For jitter draws (seeded in tests); Math.random by default. */
  readonly random?: () => number;
}

export class LinkEmulator {
  private server: Server | undefined;
  private readonly connections = new Set<{ a: Socket; b: Socket; dirs: Direction[] }>();
  private settings: { forward: LinkSettings; backward: LinkSettings };
  port = 0;

  constructor(private readonly o: LinkEmulatorOptions) {
    this.settings = { forward: o.forward, backward: o.backward };
  }

  get name(): string { return this.o.name; }
  get current(): { forward: LinkSettings; backward: LinkSettings } { return this.settings; }

  async start(): Promise<number> {
    const random = this.o.random ?? Math.random;
    this.server = createServer({ noDelay: true }, (client) => {
      const upstream = connect({ host: this.o.target.host, port: this.o.target.port, noDelay: true });
      const dirs = [
        new Direction(client, upstream, () => this.settings.forward, random),
        new Direction(upstream, client, () => this.settings.backward, random),
      ];
      const entry = { a: client, b: upstream, dirs };
      this.connections.add(entry);
      client.on('end', () => dirs[0].end());
      upstream.on('end', () => dirs[1].end());
      const close = () => {
        for (const d of dirs) d.stop();
        client.destroy();
        upstream.destroy();
        this.connections.delete(entry);
      };
      client.on('error', close);
      upstream.on('error', close);
      client.on('close', close);
      upstream.on('close', close);
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.o.listen.port, this.o.listen.host, () => resolve());
    });
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  /** Changes the link while it runs; `up: false` partitions it, `up: true` heals it. */
  set(change: { forward?: Partial<LinkSettings>; backward?: Partial<LinkSettings> } & Partial<LinkSettings>): void {
    const { forward, backward, ...both } = change;
    const wasUp = [this.settings.forward.up, this.settings.backward.up];
    this.settings = {
      forward: { ...this.settings.forward, ...both, ...forward },
      backward: { ...this.settings.backward, ...both, ...backward },
    };
    const now = performance.now();
    for (const c of this.connections) {
      c.dirs.forEach((d, i) => {
        const up = i === 0 ? this.settings.forward.up : this.settings.backward.up;
        if (!wasUp[i] && up) { d.resumeFrom(now); d.schedule(); }
        if (!up) d.stop();
      });
    }
  }

  async stop(): Promise<void> {
    for (const c of this.connections) { for (const d of c.dirs) d.stop(); c.a.destroy(); c.b.destroy(); }
    this.connections.clear();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
