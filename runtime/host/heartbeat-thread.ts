// A host's heartbeats, from a thread of its own with its own NATS
// connection (the host's user, where it has credentials): a computation,
// a checkpoint's hashing or anything else that holds the host's event loop
// for longer than the coordinator's heartbeat timeout does not make a live
// host look lost. Each heartbeat says how long ago the event loop last
// turned (`loop_lag_ms`, from the ticks the host's thread posts every
// period), so the coordinator can still tell a host that is slow from one
// whose event loop is stuck for good (--stuck-timeout). A process that is
// gone, or stopped (SIGSTOP), sends nothing: its threads stop with it.
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { encodeJson } from '../../schemas/json-message.ts';
import { connectNats, type NatsCredentials } from '../transport/connect.ts';

interface HeartbeatSpec {
  readonly kind: 'caravan-heartbeat';
  readonly url: string;
  readonly run: string;
  readonly name: string;
  readonly subject: string;
  readonly host: string;
  readonly datacenter: string;
  readonly periodMs: number;
  readonly credentials: NatsCredentials | undefined;
}

/** What the host's thread tells the heartbeat thread each period. */
type Tick = { readonly deadLetters: number } | { readonly stop: true };
/** What the heartbeat thread tells the host's: connected, or why not. */
type Status = { readonly ok: true } | { readonly ok: false; readonly error: string };

export interface HeartbeatOptions extends Omit<HeartbeatSpec, 'kind'> {
  /** The host's count of refused frames, which each heartbeat carries. */
  readonly deadLetters: { readonly count: number };
}

export class HeartbeatThread {
  private constructor(private readonly worker: Worker, private readonly ticker: NodeJS.Timeout) {}

  /** Starts the thread; resolves once its connection is up, rejects with the reason it could not connect. */
  static async start(o: HeartbeatOptions): Promise<HeartbeatThread> {
    const { deadLetters, ...spec } = o;
    const worker = new Worker(threadEntry(), { eval: true, workerData: { kind: 'caravan-heartbeat', ...spec } satisfies HeartbeatSpec });
    const status = await new Promise<Status>((resolve) => {
      worker.once('message', resolve);
      worker.once('error', (err) => resolve({ ok: false, error: err.message }));
      worker.once('exit', (code) => resolve({ ok: false, error: `the heartbeat thread exited (${code})` }));
    });
    if (!status.ok) {
      await worker.terminate();
      throw new Error(`heartbeats: ${status.error}`);
    }
    // The ticks are the event loop's pulse: when the loop is held, they stop, and the heartbeats say for how long.
    const ticker = setInterval(() => worker.postMessage({ deadLetters: deadLetters.count } satisfies Tick), o.periodMs);
    return new HeartbeatThread(worker, ticker);
  }

  /** Stops the heartbeats and the thread. */
  async stop(): Promise<void> {
    clearInterval(this.ticker);
    const exited = new Promise<void>((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.postMessage({ stop: true } satisfies Tick);
    // The thread closes its connection and exits; one that does not within 5 s is terminated.
    const timer = setTimeout(() => void this.worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
  }
}

/**
 * The thread's first code: this module, loaded through tsx's loader where it
 * runs from TypeScript source (a worker does not inherit the loader of the
 * thread that starts it).
 */
function threadEntry(): string {
  const self = JSON.stringify(import.meta.url);
  if (!import.meta.url.endsWith('.ts')) return `import(${self})`;
  return `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then(({ register }) => { register(); return import(${self}); })`;
}

/** The thread's side: connect, then publish a heartbeat every period until told to stop. */
async function beat(spec: HeartbeatSpec): Promise<void> {
  const port = parentPort!;
  let nc;
  try {
    nc = await connectNats(spec.url, spec.name, { run: spec.run, ...(spec.credentials ? { credentials: spec.credentials } : {}) });
  } catch (err) {
    port.postMessage({ ok: false, error: (err as Error).message } satisfies Status);
    return;
  }
  let lastTick = Date.now();
  let deadLetters = 0;
  const send = () => nc.publish(spec.subject, encodeJson({ host: spec.host, datacenter: spec.datacenter, deadLetters, loop_lag_ms: Date.now() - lastTick }));
  const timer = setInterval(send, spec.periodMs);
  send();
  port.on('message', (tick: Tick) => {
    if ('stop' in tick) {
      clearInterval(timer);
      port.close();
      void nc.drain().catch(() => nc.close());
      return;
    }
    lastTick = Date.now();
    deadLetters = tick.deadLetters;
  });
  port.postMessage({ ok: true } satisfies Status);
}

if (!isMainThread && (workerData as HeartbeatSpec | undefined)?.kind === 'caravan-heartbeat') void beat(workerData as HeartbeatSpec);
