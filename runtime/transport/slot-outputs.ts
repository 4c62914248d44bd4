// What a slot's holder publishes: its frames, onto the edge into the next
// stage (activations) or the previous one (gradients), and its reports to the
// coordinator on the control log. Each is signed with the host's key
// (security/), carries the trace context it was sent in, and is stored
// durably under a Nats-Msg-Id, so that whatever a replacement recomputes and
// sends again is stored once.
import { headers, type MsgHdrs } from '@nats-io/transport-node';
import type { Context } from '@opentelemetry/api';
import { encodeJson } from '../../schemas/json-message.ts';
import type { StageReport } from '../../schemas/control-messages.ts';
import { frameMsgId, type FrameKind } from '../../schemas/tensor-frame.ts';
import type { HostKey } from '../security/host-key.ts';
import { SIGNATURE_HEADER, signatureHeader, type SignedKind } from '../security/message-signature.ts';
import { traceHeaders } from '../telemetry/tracing.ts';
import { publishDurable } from './durable-publish.ts';
import type { RunResources } from './run-resources.ts';
import type { SlotHolder } from './slot-reader.ts';

/** A report's own fields; the slot, generation and host are added to it. */
export type ReportBody = Record<string, unknown> & { type: StageReport['type']; step?: number };

/** Where a frame goes: its edge, the stage it goes into, and its step and microbatch. */
export interface FrameAddress {
  readonly kind: FrameKind;
  readonly to: number;
  readonly step: number;
  readonly mb: number;
  /** The step's attempt (0 unless it was redone after a roll-back). */
  readonly attempt: number;
}

export class SlotOutputs {
  constructor(private readonly res: RunResources, private readonly key: HostKey, private readonly holder: SlotHolder) {}

  /** An encoded frame, stored once it resolves. */
  async frame(to: FrameAddress, bytes: Uint8Array, trace: Context | undefined): Promise<void> {
    const { names } = this.res;
    // The generation too: after a rewind a holder keeps its key and recomputes the same bytes, which must be stored again.
    const msgID = `${frameMsgId(names.run, this.holder.replica, to.step, to.mb, to.kind, to.to, to.attempt)}/g${this.holder.generation}`;
    await this.publishSigned('frame', names.edge(to.kind, this.holder.replica, to.to, this.key.publicKey), bytes, msgID, traceHeaders(trace, headers()));
  }

  /** A report to the coordinator, stored once it resolves. */
  async report(r: ReportBody): Promise<void> {
    const { replica, stage, generation, host } = this.holder;
    const body = { ...r, replica, stage, generation, host };
    await this.publishSigned('report', this.res.names.report(replica, stage), encodeJson(body), `${r.type}-${replica}-${stage}-${r.step ?? 'end'}-g${generation}`);
  }

  // The Nats-Msg-Id ends with a piece of the signature, which no other host can produce, so nobody can take an id
  // first and have this holder's message dropped as its duplicate (this holder's own re-sends still are).
  private publishSigned(kind: SignedKind, subject: string, bytes: Uint8Array, msgID: string, h: MsgHdrs = headers()) {
    const sig = signatureHeader(this.key, this.holder.generation, kind, subject, bytes);
    h.set(SIGNATURE_HEADER, sig);
    return publishDurable(this.res.js, subject, bytes, { msgID: `${msgID}/${sig.slice(sig.indexOf('.') + 1, sig.indexOf('.') + 17)}`, headers: h });
  }
}
