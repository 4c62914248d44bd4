// Where a slot's holder puts a frame it refuses (a bad signature, a frame
// that does not decode or has the wrong shape): the run's dead-letter stream,
// with the fault, the reason, the subject it came on and the host that
// refused it in its headers. The frame is acked once it is there: moved, not
// lost.
import { headers } from '@nats-io/transport-node';
import { publishDurable } from './durable-publish.ts';
import type { RunResources } from './run-resources.ts';
import type { SlotHolder } from './slot-reader.ts';
import type { EdgeDelivery } from './slot-inputs.ts';

export async function moveToDeadLetters(res: RunResources, holder: SlotHolder, d: EdgeDelivery, fault: string, reason: string): Promise<void> {
  const h = headers();
  h.set('Caravan-Fault', fault);
  h.set('Caravan-Reason', reason.slice(0, 1000));
  h.set('Caravan-Subject', d.subject);
  h.set('Caravan-Host', holder.host);
  await publishDurable(res.js, res.names.dead(holder.replica, holder.stage), d.data, { msgID: `dead-${d.stream}-${d.seq}`, headers: h });
  d.ack();
}
