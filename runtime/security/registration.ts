// A host proves it holds the key it registers with by signing the run and its
// host id; the coordinator checks the proof before it binds a slot to the key.
// (Another host that copied a registration could only register the same
// host id and key, and without the seed it cannot sign a frame for them.)
import { isUserPublicKey, verifySignature, type HostKey } from './host-key.ts';

function registrationMessage(run: string, host: string, publicKey: string): Uint8Array {
  return Buffer.from(`caravan/register/v1\0${run}\0${host}\0${publicKey}`);
}

export function registrationProof(key: HostKey, run: string, host: string): string {
  return Buffer.from(key.sign(registrationMessage(run, host, key.publicKey))).toString('base64url');
}

/** Why a registration's key and proof are not acceptable, or undefined when they are. */
export function checkRegistration(run: string, body: { host?: unknown; key?: unknown; proof?: unknown }): string | undefined {
  if (typeof body.host !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(body.host)) return `host id ${JSON.stringify(body.host)} is not 1-64 letters, digits, '-' or '_'`;
  if (!isUserPublicKey(body.key)) return `host ${body.host}: 'key' is not a user's public nkey`;
  if (typeof body.proof !== 'string' || !/^[A-Za-z0-9_-]{86}$/.test(body.proof)) return `host ${body.host}: 'proof' is not an ed25519 signature in base64url`;
  if (!verifySignature(body.key, registrationMessage(run, body.host, body.key), Buffer.from(body.proof, 'base64url'))) {
    return `host ${body.host}: the proof is not a signature of this registration by key ${body.key.slice(0, 12)}…`;
  }
  return undefined;
}
