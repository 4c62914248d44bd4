// A caravan command as a child process — the coordinator or a host, exactly
// as it would run on its own machine — with the tail of its stderr kept for
// the one-line reason when it fails.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { prettyLine } from '../log.ts';

const BIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'bin.ts');
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface CaravanChild {
  readonly name: string;
  readonly process: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** The last line the child wrote on stderr, or the `msg` of it when it is a pino line. */
  lastLine(): string;
}

/** `prefix`: a command the child runs under, e.g. `ip netns exec <namespace>` for a host in an emulated datacenter. */
export function spawnCaravan(name: string, args: string[], o: { env?: Record<string, string>; logLevel?: string; echo?: boolean; prefix?: readonly string[] } = {}): CaravanChild {
  const command = [...(o.prefix ?? []), process.execPath, '--import', 'tsx', BIN, ...args];
  const child = spawn(command[0], command.slice(1), {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, CARAVAN_LOG_LEVEL: o.logLevel ?? 'warn', CARAVAN_ERROR_FRAMES: '1', ...o.env },
  });
  let tail = '';
  let partial = '';  // an echoed line not yet ended
  const pretty = Boolean(process.stderr.isTTY) && process.env.CARAVAN_LOG_FORMAT !== 'json';
  child.stderr!.on('data', (d: Buffer) => {
    const text = d.toString();
    tail = (tail + text).slice(-2000);
    if (!o.echo) return;
    if (!pretty) { process.stderr.write(text); return; }
    const lines = (partial + text).split('\n');
    partial = lines.pop()!;
    for (const line of lines) if (line) process.stderr.write(`${prettyLine(line, true)}\n`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return {
    name,
    process: child,
    exited,
    lastLine: () => {
      const last = tail.trim().split('\n').pop() ?? '';
      try { return JSON.parse(last).msg ?? last; } catch { return last; }
    },
  };
}

export function isRunning(c: CaravanChild): boolean {
  return c.process.exitCode === null && c.process.signalCode === null;
}

/** Whether the child is stopped (SIGSTOP: state T in /proc/<pid>/stat; Linux). False where that cannot be read. */
export function isStopped(c: CaravanChild): boolean {
  try {
    const stat = readFileSync(`/proc/${c.process.pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'T';
  } catch {
    return false;
  }
}
