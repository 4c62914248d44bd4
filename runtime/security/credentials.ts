// `caravan creds`: nkey users per run and role in a folder, and the
// nats-server authorization block they imply.
//
//   <dir>/<run>/coordinator.nk, host-<i>.nk, observer-<i>.nk   seeds (0600)
//   <dir>/<run>/shape.json                                    stages and replicas: the run's input streams are named in the permissions
//   <dir>/<run>/host-keys.pub                                 the host users' public keys: the only keys the coordinator admits
//   <dir>/auth.conf                                           every user of every run, with its permissions
//
// The server includes auth.conf; after a change it reloads it
// (`nats-server --signal reload`, or SIGHUP): new users are let in, removed
// ones are disconnected. Seeds never leave the host they are given to; the
// server only ever sees public keys.
import { chmod, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createUser } from '@nats-io/nkeys';
import { validateRunId } from '../transport/subjects.ts';
import { readHostKey } from './host-key.ts';
import { permissionsFor, type Role, type RunShape } from './permissions.ts';
import { formatHostKeys, HOST_KEYS_FILE } from './run-host-keys.ts';

export interface CredentialUser {
  readonly run: string;
  readonly role: Role;
  /** File name without '.nk': 'coordinator', 'host-3', 'observer-0'. */
  readonly name: string;
  readonly file: string;
  readonly publicKey: string;
  readonly shape: RunShape;
}

const SHAPE_FILE = 'shape.json';
const USER_FILE = /^(coordinator|host-\d+|observer-\d+)\.nk$/;

function roleOf(name: string): Role {
  return name === 'coordinator' ? 'coordinator' : name.startsWith('host-') ? 'host' : 'observer';
}

async function writeSeed(file: string, run: string, name: string): Promise<void> {
  const kp = createUser();
  const text = `# caravan ${roleOf(name)} '${name}' of run ${run}: ${kp.getPublicKey()}\n${new TextDecoder().decode(kp.getSeed())}\n`;
  const tmp = `${file}.tmp`;
  await writeFile(tmp, text, { mode: 0o600 });
  await chmod(tmp, 0o600);
  await rename(tmp, file);
}

export interface MintOptions {
  readonly dir: string;
  readonly run: string;
  readonly hosts: number;
  readonly observers: number;
  /** User names whose keys are replaced by new ones. */
  readonly rotate?: readonly string[];
  /** The run's stages and replicas: needed the first time, kept in the folder after that. */
  readonly shape?: RunShape;
}

/** Creates what is missing of the run's users (existing seeds are kept), replaces the rotated ones, and rewrites auth.conf. */
export async function mintCredentials(o: MintOptions): Promise<{ users: CredentialUser[]; authConfig: string; hostKeys: string }> {
  validateRunId(o.run);
  const runDir = join(o.dir, o.run);
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  if (o.shape) {
    for (const [k, v] of Object.entries(o.shape)) if (!Number.isInteger(v) || v < 1) throw new Error(`run ${o.run}: ${k} must be a whole number ≥ 1, not ${v}`);
    await writeFile(join(runDir, SHAPE_FILE), `${JSON.stringify({ stages: o.shape.stages, replicas: o.shape.replicas })}\n`);
  } else {
    await readShape(runDir, o.run);  // fails, saying what to pass, the first time
  }
  const names = ['coordinator', ...Array.from({ length: o.hosts }, (_, i) => `host-${i}`), ...Array.from({ length: o.observers }, (_, i) => `observer-${i}`)];
  const present = new Set((await readdir(runDir)).filter((f) => USER_FILE.test(f)).map((f) => f.slice(0, -3)));
  for (const name of o.rotate ?? []) {
    if (!present.has(name)) throw new Error(`--rotate ${name}: run ${o.run} has no user '${name}' in ${runDir}`);
    await rm(join(runDir, `${name}.nk`));
    present.delete(name);
  }
  for (const name of names) if (!present.has(name)) await writeSeed(join(runDir, `${name}.nk`), o.run, name);
  for (const name of o.rotate ?? []) if (!names.includes(name)) await writeSeed(join(runDir, `${name}.nk`), o.run, name);
  const users = await readUsers(o.dir);
  const authConfig = join(o.dir, 'auth.conf');
  await writeFile(authConfig, authorizationBlock(users));
  // Like auth.conf, every run's key list follows the seed files present (a deleted seed is a revoked host).
  for (const run of new Set(users.map((u) => u.run))) {
    await writeFile(join(o.dir, run, HOST_KEYS_FILE), formatHostKeys(run, users.filter((u) => u.run === run && u.role === 'host')));
  }
  return { users: users.filter((u) => u.run === o.run), authConfig, hostKeys: join(runDir, HOST_KEYS_FILE) };
}

async function readShape(runDir: string, run: string): Promise<RunShape> {
  const text = await readFile(join(runDir, SHAPE_FILE), 'utf8').catch(() => undefined);
  if (text === undefined) throw new Error(`run ${run} has no ${join(runDir, SHAPE_FILE)}: give its stages and replicas (--stages, --replicas) the first time its credentials are minted`);
  const shape = JSON.parse(text) as Partial<RunShape>;
  if (!Number.isInteger(shape.stages) || !Number.isInteger(shape.replicas)) throw new Error(`${join(runDir, SHAPE_FILE)}: expected {"stages": n, "replicas": n}, got ${text.trim()}`);
  return shape as RunShape;
}

/** Every user in the folder, run by run. */
export async function readUsers(dir: string): Promise<CredentialUser[]> {
  const users: CredentialUser[] = [];
  for (const entry of (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).sort((a, b) => a.name.localeCompare(b.name))) {
    const run = entry.name;
    const shape = await readShape(join(dir, run), run);
    for (const f of (await readdir(join(dir, run))).filter((x) => USER_FILE.test(x)).sort()) {
      const file = join(dir, run, f);
      const name = f.slice(0, -3);
      users.push({ run, role: roleOf(name), name, file, publicKey: (await readHostKey(file)).publicKey, shape });
    }
  }
  return users;
}

/** The nats-server `authorization` block for these users (nats-server's config accepts JSON values). */
export function authorizationBlock(users: readonly CredentialUser[]): string {
  const lines = users.map((u) => `    # run ${u.run}: ${u.name}\n    ${JSON.stringify({ nkey: u.publicKey, permissions: permissionsFor(u.role, u.run, u.shape, u.publicKey) })}`);
  return `# Written by 'caravan creds': ${users.length} users. Include it from the server config and reload the server after a change.\nauthorization {\n  users = [\n${lines.join(',\n')}\n  ]\n}\n`;
}
