// The chaos driver's end of fault injection (host/fault-points.ts is the
// host's): it tells a host started with CARAVAN_CHAOS=1 to stop at the Nth
// time it reaches a point of its work, and hears when one got there.
import { decodeFaultReached, decodeFaultReply, type FaultReached, type FaultReply, type FaultRequest } from '../../schemas/control-messages.ts';
import { encodeJson } from '../../schemas/json-message.ts';
import type { NatsConnection } from './connect.ts';
import type { RunEventSubscription } from './run-events.ts';
import type { RunNames } from './subjects.ts';
import { RefusalCount, survivable } from './survivable-callback.ts';

export class FaultInjection {
  /** Announcements that did not decode (anyone of the run may publish there). */
  readonly refusals = new RefusalCount();

  constructor(private readonly nc: NatsConnection, private readonly names: RunNames) {}

  /** Arms `host`: its answer says whether it took the request. */
  async arm(host: string, request: FaultRequest): Promise<FaultReply> {
    return decodeFaultReply((await this.nc.request(this.names.chaos(host), encodeJson(request), { timeout: 5000 })).data);
  }

  /** Calls `reached` each time a host says it got to its point (it then stops itself). */
  onReached(reached: (r: FaultReached) => void): RunEventSubscription {
    const sub = this.nc.subscribe(this.names.chaosReached, { callback: survivable(this.refusals.refused, (m) => reached(decodeFaultReached(m.data))) });
    return { close: () => sub.unsubscribe() };
  }
}
