// Whose step control counts: the coordinator's. Step control (`open`,
// `commit`) changes the weights, so a slot's holder acts on a message of the
// control log only if it came on its own replica's step-control subject and
// carries a signature, over that subject and the body, by a key in the run's
// `coordinator` record (transport/coordinator-record.ts), which hosts cannot
// write. The header names the key by its index there; an index the cache does
// not know yet (a coordinator restarted with a new key) re-reads the record.
// A restarted coordinator checks the log it replays the same way.
import type { CoordinatorRecord } from '../../schemas/run-records.ts';
import { readCoordinatorRecord } from '../transport/coordinator-record.ts';
import type { RunStateBucket } from '../transport/run-resources.ts';
import type { HostKey } from './host-key.ts';
import { verifySignature } from './host-key.ts';
import { parseSignatureHeader, signatureHeader } from './message-signature.ts';

/** The coordinator's signing key and its index in the `coordinator` record. */
export interface ControlSigner {
  readonly key: HostKey;
  readonly index: number;
}

/** The signature header of step control on `subject`. */
export function controlSignature(signer: ControlSigner, subject: string, body: Uint8Array): string {
  return signatureHeader(signer.key, signer.index, 'control', subject, body);
}

export interface ControlMessage {
  readonly subject: string;
  readonly body: Uint8Array;
  readonly header: string | undefined;
  /** The subject it must have come on: the reader's replica's step control. */
  readonly expected: string;
}

export type ControlVerdict = { ok: true } | { ok: false; fault: 'subject' | 'unsigned' | 'signer' | 'signature'; reason: string };

export class CoordinatorKeys {
  private record: CoordinatorRecord | undefined;

  constructor(private readonly kv: RunStateBucket) {}

  async check(m: ControlMessage): Promise<ControlVerdict> {
    if (m.subject !== m.expected) return { ok: false, fault: 'subject', reason: `step control read on ${m.subject}, not ${m.expected}: not this replica's step control` };
    const parsed = parseSignatureHeader(m.header, 'control', m.subject, m.body);
    if (typeof parsed === 'string') return { ok: false, fault: 'unsigned', reason: `step control on ${m.subject}: ${parsed}` };
    let key = this.record?.keys[parsed.generation];
    if (key === undefined) {
      this.record = await readCoordinatorRecord(this.kv);
      key = this.record?.keys[parsed.generation];
    }
    if (key === undefined) return { ok: false, fault: 'signer', reason: `step control on ${m.subject} claims coordinator key ${parsed.generation}, which the run's coordinator record does not list` };
    let good = false;
    try {
      good = verifySignature(key, parsed.message, parsed.signature);
    } catch { /* a key that is no public nkey verifies nothing */ }
    if (!good) return { ok: false, fault: 'signature', reason: `step control on ${m.subject}: the signature does not match coordinator key ${parsed.generation}: not signed by the coordinator, or altered, or moved from another subject` };
    return { ok: true };
  }
}
