// Starts a private nats-server with JetStream: a random loopback port, a
// temporary store, fsync on every write, 8 MiB payloads. Used by embedded
// runs (`caravan train` without --nats) and by the tests, which always talk
// to a real server.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const EMBEDDED_MAX_PAYLOAD = 8 * 1024 * 1024;

export interface NatsServerHandle {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  readonly process: ChildProcess;
  stop(): Promise<void>;
}

/** The nats-server binary: $CARAVAN_NATS_SERVER, the one set-up placed in .deps/, or the PATH. */
export function natsServerBinary(): string {
  if (process.env.CARAVAN_NATS_SERVER) return process.env.CARAVAN_NATS_SERVER;
  const local = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '.deps', 'bin', 'nats-server');
  return existsSync(local) ? local : 'nats-server';
}

/**
 * `config`: more lines for the server's config file (the authorization block `caravan creds` writes, say);
 * `listen`: host:port (default a free loopback port); `prefix`: a command to run it under (`ip netns exec <ns>`).
 */
export async function startNatsServer(options: { timeoutMs?: number; config?: readonly string[]; listen?: string; prefix?: readonly string[] } = {}): Promise<NatsServerHandle> {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-nats-'));
  const storeDir = join(dir, 'store');
  const config = join(dir, 'nats.conf');
  await writeFile(
    config,
    [
      `listen: ${options.listen ?? '127.0.0.1:-1'}`,
      `max_payload: ${EMBEDDED_MAX_PAYLOAD}`,
    // As deploy/nats/*.conf: room for a host whose pulls wait while a computation holds its thread.
    'max_pending: 256MB',
      // Acknowledged must mean persisted: fsync each write (nats-server >= 2.10).
      `jetstream { store_dir: "${storeDir}", sync_interval: always }`,
      `ports_file_dir: "${dir}"`,
      ...(options.config ?? []),
    ].join('\n'),
  );
  const command = [...(options.prefix ?? []), natsServerBinary(), '-c', config];
  const child = spawn(command[0], command.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  while (Date.now() < deadline) {
    const failed = await Promise.race([spawnError, exited.then(() => undefined), new Promise<null>((r) => setTimeout(() => r(null), 25))]);
    if (failed instanceof Error) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`cannot start nats-server (${natsServerBinary()}): ${failed.message}; run 'bash scripts/setup.sh' or set CARAVAN_NATS_SERVER`);
    }
    if (child.exitCode !== null) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(`nats-server exited with code ${child.exitCode}: ${stderr.trim().split('\n').pop()}`);
    }
    const portsFile = (await readdir(dir)).find((f) => f.endsWith('.ports'));
    // The server creates the file, then writes it: on a loaded machine it can be read empty or half written.
    const ports = portsFile ? parsedPorts(await readFile(join(dir, portsFile), 'utf8')) : undefined;
    if (ports) {
      const url = ports.nats[0].replace(/^nats:\/\//, 'nats://');
      const port = Number(new URL(url).port);
      return { url, port, storeDir, process: child, stop };
    }
  }
  await stop();
  throw new Error(`nats-server did not report its port within ${options.timeoutMs ?? 10_000} ms`);
}

/** The ports file's contents, or undefined while it is not yet whole. */
function parsedPorts(text: string): { nats: string[] } | undefined {
  try {
    const ports = JSON.parse(text) as { nats?: unknown };
    return Array.isArray(ports.nats) && typeof ports.nats[0] === 'string' ? (ports as { nats: string[] }) : undefined;
  } catch {
    return undefined;
  }
}
