// Whose signatures count for a slot: the slot table's signers (transport/slots.ts),
// cached and kept current by the caller's KV watch, re-read when a message
// names a generation the cache does not know yet (a replacement's first
// frames can beat the watch), and looked up among the slot's retired signers
// when the record no longer lists that generation (a coordinator replaying
// the control log from its start, after many hand-overs).
import { retryTransient } from '../transport/durable-publish.ts';
import type { RunStateBucket } from '../transport/run-resources.ts';
import { readRetiredSigner, readSlot } from '../transport/slots.ts';
import type { SlotRecord, SlotSigner } from '../../schemas/run-records.ts';
import { verifySignature } from './host-key.ts';
import { parseSignatureHeader, type SignedKind } from './message-signature.ts';

export interface SignedMessage {
  readonly kind: SignedKind;
  readonly subject: string;
  readonly body: Uint8Array;
  readonly header: string | undefined;
  /** The sender's slot. */
  readonly replica: number;
  readonly stage: number;
  /** A frame's edge and its sequence in the receiver's input stream: checked against the generation's `until`. */
  readonly edge?: 'act' | 'grad';
  readonly seq?: number;
}

export type SignatureVerdict = { ok: true; generation: number; host: string } | { ok: false; fault: 'unsigned' | 'signer' | 'stale' | 'signature'; reason: string };

export class SlotSigners {
  private readonly records = new Map<string, SlotRecord>();
  /** `${replica}.${stage}.${generation}` → a signer the slot record no longer lists (null: none was ever retired). */
  private readonly retired = new Map<string, SlotSigner | null>();

  constructor(private readonly kv: RunStateBucket) {}

  /** A slot record as the KV watch delivered it. */
  update(record: SlotRecord): void {
    const k = `${record.replica}.${record.stage}`;
    const had = this.records.get(k);
    if (!had || had.generation <= record.generation) this.records.set(k, record);
  }

  async check(m: SignedMessage): Promise<SignatureVerdict> {
    const slot = `replica ${m.replica} stage ${m.stage}`;
    const parsed = parseSignatureHeader(m.header, m.kind, m.subject, m.body);
    if (typeof parsed === 'string') return { ok: false, fault: 'unsigned', reason: `${m.kind} from ${slot}: ${parsed}` };
    let signer = this.signer(m.replica, m.stage, parsed.generation);
    if (!signer) {
      const fresh = await retryTransient(`slot ${m.replica}.${m.stage}`, () => readSlot(this.kv, m.replica, m.stage));
      if (fresh) this.update(fresh.record);
      signer = this.signer(m.replica, m.stage, parsed.generation) ?? await this.retiredSigner(m.replica, m.stage, parsed.generation);
    }
    if (!signer) return { ok: false, fault: 'signer', reason: `${m.kind} from ${slot} claims generation ${parsed.generation}, which the slot table does not bind to a key` };
    const until = m.edge && signer.until?.[m.edge];
    if (m.seq !== undefined && until !== undefined && m.seq > until) {
      return { ok: false, fault: 'stale', reason: `${m.kind} from ${slot} generation ${parsed.generation} (host ${signer.host}) was stored at sequence ${m.seq}, after that generation was replaced (at ${until})` };
    }
    if (!verifySignature(signer.key, parsed.message, parsed.signature)) {
      return { ok: false, fault: 'signature', reason: `${m.kind} from ${slot}: the signature does not match generation ${parsed.generation}'s key (host ${signer.host}): not signed by the slot's holder, or altered` };
    }
    return { ok: true, generation: parsed.generation, host: signer.host };
  }

  /** Only generations older than every one the record lists can have been retired. */
  private async retiredSigner(replica: number, stage: number, generation: number): Promise<SlotSigner | undefined> {
    const oldest = this.records.get(`${replica}.${stage}`)?.signers?.[0]?.generation;
    if (oldest === undefined || generation >= oldest || generation < 1) return undefined;
    const k = `${replica}.${stage}.${generation}`;
    if (!this.retired.has(k)) this.retired.set(k, (await readRetiredSigner(this.kv, replica, stage, generation)) ?? null);
    return this.retired.get(k) ?? undefined;
  }

  private signer(replica: number, stage: number, generation: number) {
    return this.records.get(`${replica}.${stage}`)?.signers?.find((x) => x.generation === generation);
  }
}
