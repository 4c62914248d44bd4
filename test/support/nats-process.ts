// Real nats-server processes for the deployment tests: the binary setup.sh
// installs (or one on the PATH), started from a config file, killed with
// SIGKILL, waited on until healthy, and retried operations while a cluster
// elects leaders.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

export function natsServer(): string {
  const local = join(root, '.deps/bin/nats-server');
  if (existsSync(local)) return local;
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const candidate = join(dir, 'nats-server');
    if (dir && existsSync(candidate)) return candidate;
  }
  throw new Error('no nats-server: run scripts/setup.sh (puts one in .deps/bin) or install nats-server >= 2.10 on the PATH');
}

export type NatsProcess = { name: string; proc: ChildProcess; log: () => string; exited: Promise<void> };

export function start(conf: string, name: string, env: Record<string, string> = {}): NatsProcess {
  const proc = spawn(natsServer(), ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let log = '';
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  return { name, proc, log: () => log, exited };
}

export async function kill(server: NatsProcess): Promise<void> {
  if (server.proc.exitCode === null && server.proc.signalCode === null) server.proc.kill('SIGKILL');
  await server.exited;
}

// /healthz answers 200 once the server's JetStream is up (in a cluster: once
// it has a meta leader and is current).
export async function healthy(server: NatsProcess, httpPort: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (server.proc.exitCode !== null) throw new Error(`${server.name} exited:\n${server.log()}`);
    try {
      const res = await fetch(`http://127.0.0.1:${httpPort}/healthz`);
      last = `${res.status} ${await res.text()}`;
      if (res.ok) return;
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${server.name} not healthy after ${timeoutMs} ms (last: ${last}):\n${server.log()}`);
}

// Retries op until it succeeds or the deadline passes: after a node dies the
// surviving two elect new RAFT leaders, during which writes time out.
export async function eventually<T>(op: () => Promise<T>, timeoutMs: number): Promise<{ value: T; ms: number }> {
  const began = Date.now();
  let lastErr: unknown;
  while (Date.now() - began < timeoutMs) {
    try {
      return { value: await op(), ms: Date.now() - began };
    } catch (err) {
      lastErr = err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  throw new Error(`still failing after ${timeoutMs} ms: ${lastErr instanceof Error ? lastErr.message : String(lastErr)}`);
}

