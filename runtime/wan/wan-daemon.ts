// `caravan wan serve`: holds a WAN up (namespaces and link emulators) for as
// long as it runs, and takes changes over a unix socket, one JSON request a
// line: {"op":"links"} or {"op":"set","datacenter":"us-west","change":{"up":false}}.
// It writes <dir>/<id>.json (its pid, the plan, the socket) once everything
// is up, and on SIGTERM or SIGINT tears everything down and removes it.
import { createConnection, createServer } from 'node:net';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startWan, type LinkChange } from './wan-network.ts';
import type { WanPlan } from './wan-profile.ts';

export interface WanState {
  readonly pid: number;
  readonly plan: WanPlan;
  readonly socket: string;
}

export const defaultWanDir = (): string => process.env.CARAVAN_WAN_DIR ?? '/run/caravan-wan';

export const statePath = (dir: string, id: string): string => join(dir, `${id}.json`);

export async function readWanState(dir: string, id: string): Promise<WanState | undefined> {
  try {
    return JSON.parse(await readFile(statePath(dir, id), 'utf8')) as WanState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`WAN state ${statePath(dir, id)}: ${(err as Error).message}`);
  }
}

export async function serveWan(plan: WanPlan, dir: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const socket = join(dir, `${plan.id}.sock`);
  await rm(socket, { force: true });
  const wan = await startWan(plan);
  const server = createServer((conn) => {
    let buffer = '';
    conn.on('data', (d) => {
      buffer += d.toString();
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        let reply: unknown;
        try {
          const req = JSON.parse(line) as { op: string; datacenter?: string; change?: LinkChange };
          if (req.op === 'set') wan.set(String(req.datacenter), req.change ?? {});
          else if (req.op !== 'links') throw new Error(`unknown op ${JSON.stringify(req.op)}: use 'links' or 'set'`);
          reply = { ok: true, links: wan.links() };
        } catch (err) {
          reply = { ok: false, error: (err as Error).message };
        }
        conn.write(`${JSON.stringify(reply)}\n`);
      }
    });
    conn.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  const state: WanState = { pid: process.pid, plan, socket };
  await writeFile(statePath(dir, plan.id), JSON.stringify(state));
  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  server.close();
  await wan.stop();
  await rm(socket, { force: true });
  await rm(statePath(dir, plan.id), { force: true });
}

/** One request to a running `caravan wan serve`. */
export async function askWan(state: WanState, request: Record<string, unknown>): Promise<{ ok: boolean; error?: string; links?: unknown[] }> {
  return new Promise((resolve, reject) => {
    const conn = createConnection(state.socket);
    let buffer = '';
    conn.on('connect', () => conn.write(`${JSON.stringify(request)}\n`));
    conn.on('data', (d) => {
      buffer += d.toString();
      const nl = buffer.indexOf('\n');
      if (nl >= 0) { conn.end(); resolve(JSON.parse(buffer.slice(0, nl))); }
    });
    conn.on('error', (err) => reject(new Error(`the WAN daemon (pid ${state.pid}) does not answer on ${state.socket}: ${err.message}`)));
  });
}
