// What a host signs: a domain label, the subject it publishes on, and the
// SHA-256 of the body, so a signature is good for that body on that subject
// only (a frame cannot be replayed onto another edge, nor a report onto
// another slot's subject, nor step control onto another replica's). The
// signature travels in a NATS header with the generation of the slot the
// signer holds, or for the coordinator's step control ('control') the index
// of its key in the run's `coordinator` record:
//
//   Caravan-Sig: <generation>.<base64url ed25519 signature>
//
// Hashing first keeps the ed25519 work at 32 bytes whatever the frame size;
// SHA-256 runs at memory speed in OpenSSL.
import { createHash } from 'node:crypto';
import type { HostKey } from './host-key.ts';

export const SIGNATURE_HEADER = 'Caravan-Sig';

export type SignedKind = 'frame' | 'report' | 'control';

/** SHA-256 of a stored object, hex: what a signed report vouches for (checkpoints, final states). */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function signedBytes(kind: SignedKind, subject: string, body: Uint8Array): Uint8Array {
  const digest = createHash('sha256').update(body).digest();
  return Buffer.concat([Buffer.from(`caravan/${kind}/v1\0${subject}\0`), digest]);
}

export function signatureHeader(key: HostKey, generation: number, kind: SignedKind, subject: string, body: Uint8Array): string {
  return `${generation}.${Buffer.from(key.sign(signedBytes(kind, subject, body))).toString('base64url')}`;
}

export interface ParsedSignature {
  readonly generation: number;
  readonly signature: Uint8Array;
  /** What the signature must be over. */
  readonly message: Uint8Array;
}

/** The header's parts, or a reason it cannot be one. */
export function parseSignatureHeader(value: string | undefined, kind: SignedKind, subject: string, body: Uint8Array): ParsedSignature | string {
  if (!value) return `no ${SIGNATURE_HEADER} header`;
  const m = /^(\d{1,9})\.([A-Za-z0-9_-]{86})$/.exec(value);
  if (!m) return `${SIGNATURE_HEADER} header is not '<generation>.<86 base64url characters>'`;
  return { generation: Number(m[1]), signature: Buffer.from(m[2], 'base64url'), message: signedBytes(kind, subject, body) };
}
