// The public keys of a run's host users: `caravan creds` writes them to
// <dir>/<run>/host-keys.pub beside the seeds, and a coordinator under credentials
// admits registrations only with one of them. The file holds no secret (the
// server's auth.conf lists the same keys), so it can be copied to wherever
// the coordinator runs.
//
//   # caravan creds: the host keys of run orion-r1 …
//   host-0 UA…
//   host-1 UB…
//
// The coordinator reads it again at every registration: hosts added or keys
// rotated with `caravan creds` are admitted without restarting it.
import { readFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { isUserPublicKey } from './host-key.ts';

export const HOST_KEYS_FILE = 'host-keys.pub';

/** The file's text for these host users (name and public key each). */
export function formatHostKeys(run: string, hosts: ReadonlyArray<{ readonly name: string; readonly publicKey: string }>): string {
  const lines = hosts.map((h) => `${h.name} ${h.publicKey}\n`);
  return `# caravan creds: the host keys of run ${run}; its coordinator admits registrations only with these. Rewritten by every 'caravan creds'.\n${lines.join('')}`;
}

/** Public key → host user name, from a host-keys.pub file; a line that is not `name key` is refused by number. */
export async function readHostKeys(file: string): Promise<ReadonlyMap<string, string>> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`host keys ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  const keys = new Map<string, string>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const [name, key, ...rest] = line.split(/\s+/);
    if (rest.length > 0 || !isUserPublicKey(key)) throw new Error(`host keys ${file}, line ${i + 1}: expected '<name> <public user nkey>', got '${line.slice(0, 80)}'`);
    keys.set(key, name!);
  });
  return keys;
}

/** Where a coordinator finds its run's host keys: --host-keys, else host-keys.pub beside its seed; none without credentials. */
export function hostKeysFileFor(o: { readonly hostKeys?: string; readonly nkey?: string }): string | undefined {
  if (o.hostKeys) return o.hostKeys;
  return o.nkey ? join(dirname(o.nkey), HOST_KEYS_FILE) : undefined;
}

/** A check of registration keys against the file, read afresh each time; a file that cannot be read admits no one. */
export function hostKeysCheck(file: string): (key: string) => Promise<string | undefined> {
  return async (key) => {
    let keys: ReadonlyMap<string, string>;
    try {
      keys = await readHostKeys(file);
    } catch (err) {
      return `${(err as Error).message}: no registration is admitted without the run's host keys`;
    }
    return keys.has(key) ? undefined : `key ${key} is not one of the run's host keys (${keys.size} in ${basename(file)}); mint it with 'caravan creds'`;
  };
}
