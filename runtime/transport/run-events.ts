// What the coordinator tells a run's clients on core NATS: each step a
// replica commits (`ctl.progress`), the summary when the run has finished
// (`ctl.finished`), the reason when it failed (`ctl.failed`). `caravan train`
// and `caravan chaos` follow a run by them. They are about now, not history:
// a client that subscribes late misses what came before.
import { decodeProgress, decodeRunFailure, type Progress, type RunFailure } from '../../schemas/control-messages.ts';
import { decodeRunSummary, type RunSummary } from '../../schemas/run-records.ts';
import type { NatsConnection } from './connect.ts';
import type { RunNames } from './subjects.ts';
import { survivable, type OnRefused } from './survivable-callback.ts';

export interface RunEventHandlers {
  progress?(p: Progress): void;
  finished?(summary: RunSummary): void;
  failed?(failure: RunFailure): void;
  /** An event that does not decode, or whose handler threw: the subscription reads on. Ignored unless given. */
  refused?: OnRefused;
}

export interface RunEventSubscription {
  close(): void;
}

/** Subscribes to the events there are handlers for; resolves once the server has the subscriptions, so nothing published after that is missed. */
export async function followRunEvents(nc: NatsConnection, names: RunNames, on: RunEventHandlers): Promise<RunEventSubscription> {
  const refused = on.refused ?? (() => {});
  const subs = [
    on.progress && nc.subscribe(names.progress, { callback: survivable(refused, (m) => on.progress!(decodeProgress(m.data))) }),
    on.finished && nc.subscribe(names.finished, { callback: survivable(refused, (m) => on.finished!(decodeRunSummary(m.data))) }),
    on.failed && nc.subscribe(names.failed, { callback: survivable(refused, (m) => on.failed!(decodeRunFailure(m.data))) }),
  ];
  await nc.flush();
  return { close: () => { for (const s of subs) s?.unsubscribe(); } };
}
