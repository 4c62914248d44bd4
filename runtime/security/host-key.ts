// A peer's ed25519 key, in NATS's nkey encoding: the same seed authenticates
// a host to nats-server (`nkeyAuthenticator`) and signs what it publishes, so
// one file is one identity. nkeys (tweetnacl) parses and checks the encoding;
// the signing itself is Node's OpenSSL, because frames are signed and checked
// on the hot path and tweetnacl's pure-JS ed25519 is two orders slower.
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createUser, fromPublic, fromSeed } from '@nats-io/nkeys';

// DER headers that turn a raw 32-byte ed25519 seed or public key into PKCS#8 / SPKI (RFC 8410).
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');
const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 without padding, as nkeys write it. */
function base32Decode(text: string): Uint8Array {
  const out: number[] = [];
  let bits = 0, value = 0;
  for (const ch of text) {
    const v = BASE32.indexOf(ch);
    if (v < 0) throw new Error(`'${ch}' is not a base32 character`);
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return Uint8Array.from(out);
}

export interface HostKey {
  /** The public nkey ('U…'): what the slot table binds a slot to, and the server's user entry. */
  readonly publicKey: string;
  /** The seed ('SU…'), for nkeyAuthenticator. */
  readonly seed: Uint8Array;
  sign(message: Uint8Array): Uint8Array;
}

function hostKeyFromSeed(seedText: string, what: string): HostKey {
  const seed = new TextEncoder().encode(seedText.trim());
  let publicKey: string;
  try {
    publicKey = fromSeed(seed).getPublicKey();
  } catch (err) {
    throw new Error(`${what}: not an nkey seed (${(err as Error).message})`);
  }
  if (!publicKey.startsWith('U')) throw new Error(`${what}: an nkey seed of a user ('SU…') is needed, this one is for '${publicKey[0]}'`);
  // Decoded seed: 2 prefix bytes, the 32-byte ed25519 seed, a CRC-16.
  const raw = base32Decode(seedText.trim()).subarray(2, 34);
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, raw]), format: 'der', type: 'pkcs8' });
  return { publicKey, seed, sign: (message) => sign(null, message, privateKey) };
}

/** A fresh key for a host that was given none (a run without authentication still signs its frames). */
export function newHostKey(): HostKey {
  return hostKeyFromSeed(new TextDecoder().decode(createUser().getSeed()), 'new key');
}

export function parseHostKey(seedText: string, what = 'nkey seed'): HostKey {
  return hostKeyFromSeed(seedText, what);
}

/** Reads an nkey seed file (the first line starting 'SU'), as `caravan creds` writes them. */
export async function readHostKey(file: string): Promise<HostKey> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new Error(`nkey file ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  const line = text.split('\n').map((l) => l.trim()).find((l) => l.startsWith('S'));
  if (!line) throw new Error(`nkey file ${file}: no seed line (one starting 'SU') in it`);
  return hostKeyFromSeed(line, `nkey file ${file}`);
}

const verifiers = new Map<string, KeyObject>();

/** A public nkey as a verifying key (cached: the slot table names few keys, and frames check against them constantly). */
function verifierOf(publicKey: string): KeyObject {
  let key = verifiers.get(publicKey);
  if (!key) {
    try {
      fromPublic(publicKey);
    } catch (err) {
      throw new Error(`'${publicKey.slice(0, 12)}…' is not a public nkey (${(err as Error).message})`);
    }
    if (!publicKey.startsWith('U')) throw new Error(`'${publicKey.slice(0, 12)}…' is not a user's public nkey`);
    const raw = base32Decode(publicKey).subarray(1, 33);
    key = createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: 'der', type: 'spki' });
    if (verifiers.size > 1024) verifiers.clear();
    verifiers.set(publicKey, key);
  }
  return key;
}

export function verifySignature(publicKey: string, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64) return false;
  return verify(null, message, verifierOf(publicKey), signature);
}

/** Whether a string is a well-formed public nkey of a user. */
export function isUserPublicKey(text: unknown): text is string {
  if (typeof text !== 'string' || !text.startsWith('U')) return false;
  try {
    fromPublic(text);
    return true;
  } catch {
    return false;
  }
}
