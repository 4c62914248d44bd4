// The coordinator's core-NATS side of a run (`ctl.*` and heartbeats: about
// now, not history). It answers registrations (request/reply), hears
// heartbeats, hosts' word that their slot is ready, an operator's request
// that a replica leave (`ctl.leave`), and word that the run failed
// (`ctl.failed`: only the coordinator's credentials may publish on either,
// as an operator's watchdog does; a host reports its failure in a signed
// stage report instead), each decoded before the caller sees it; and it
// announces progress, the summary at the end, or the failure.
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeHostAnnouncement, decodeLeaveReply, decodeLeaveRequest, decodeRegistration, decodeResplitReply, decodeResplitRequest, decodeRunFailure, type LeaveReply, type LeaveRequest, type ResplitReply, type ResplitRequest, type Progress, type Registration, type RegistrationReply } from '../../schemas/control-messages.ts';
import type { RunSummary } from '../../schemas/run-records.ts';
import type { RunNames } from './subjects.ts';
import { survivable, type OnRefused } from './survivable-callback.ts';

/** What hosts say, decoded. A registration that does not decode is refused here, with the reason. */
export interface HostMessages {
  register(registration: Registration, respond: (reply: RegistrationReply) => void): Promise<void>;
  /**
   * A heartbeat of `host`, published under `key` (its subject's last token, which a host's credentials bind to its own
   * key), with how long ago the host's event loop last turned where it says (its heartbeats come from a thread of their own).
   */
  heartbeat(host: string, key: string, loopLagMs: number | undefined): void;
  ready(host: string): void;
  failed(reason: string): void;
  /** An operator's request that a replica leave the run (`ctl.leave`: the coordinator's credentials only). */
  leave(request: LeaveRequest, respond: (reply: LeaveReply) => void): void;
  /** An operator's request that the run go on with another split (`ctl.resplit`: the coordinator's credentials only). */
  resplit(request: ResplitRequest, respond: (reply: ResplitReply) => void): void;
  /** A message on one of these subjects that does not decode, or whose handling failed: the channel reads on. */
  refused: OnRefused;
}

export interface CoordinatorChannel {
  /** Starts hearing hosts; returns how to stop. */
  listen(hosts: HostMessages): { close(): void };
  progress(p: Progress): void;
  failed(reason: string): void;
  finished(summary: RunSummary): void;
}

/**
 * A request/reply subscription's callback: the request decoded and handed on with a way to answer it; one that does
 * not decode is answered `{ ok: false, reason }` and refused.
 */
function answering<T, R extends { ok: boolean; reason?: string }>(
  refused: OnRefused, decode: (bytes: Uint8Array) => T, handle: (msg: T, respond: (reply: R) => void) => void | Promise<void>,
): (err: Error | null, m: Msg) => void {
  return survivable(refused, (m) => {
    const respond = (reply: R) => m.respond(encodeJson(reply));
    let msg;
    try {
      msg = decode(m.data);
    } catch (err) {
      respond({ ok: false, reason: (err as Error).message } as R);
      throw err;
    }
    return handle(msg, respond);
  });
}

/** `alsoProgress`: more runs' names whose progress subject hears this run's progress too (its predecessors). */
export function coordinatorChannel(nc: NatsConnection, names: RunNames, alsoProgress: readonly RunNames[] = []): CoordinatorChannel {
  const progressSubjects = [names, ...alsoProgress].map((n) => n.progress);
  return {
    listen: (h) => {
      const subs = [
        nc.subscribe(names.register, { callback: answering(h.refused, decodeRegistration, (msg, respond: (r: RegistrationReply) => void) => h.register(msg, respond)) }),
        nc.subscribe(names.heartbeats, { callback: survivable(h.refused, (m) => {
          const { host, key } = names.heartbeatOf(m.subject);
          const beat = decodeHostAnnouncement(m.data, 'heartbeat');
          if (beat.host !== host) throw new Error(`a heartbeat on ${m.subject} names another host`);
          h.heartbeat(host, key, beat.loop_lag_ms);
        }) }),
        nc.subscribe(names.ready, { callback: survivable(h.refused, (m) => h.ready(decodeHostAnnouncement(m.data, 'ready').host)) }),
        nc.subscribe(names.failed, { callback: survivable(h.refused, (m) => h.failed(decodeRunFailure(m.data).reason)) }),
        nc.subscribe(names.leave, { callback: answering(h.refused, decodeLeaveRequest, (msg, respond: (r: LeaveReply) => void) => h.leave(msg, respond)) }),
        nc.subscribe(names.resplit, { callback: answering(h.refused, decodeResplitRequest, (msg, respond: (r: ResplitReply) => void) => h.resplit(msg, respond)) }),
      ];
      return { close: () => { for (const s of subs) s.unsubscribe(); } };
    },
    progress: (p) => {
      const bytes = encodeJson(p);
      for (const subject of progressSubjects) nc.publish(subject, bytes);
    },
    failed: (reason) => nc.publish(names.failed, encodeJson({ reason })),
    finished: (summary) => nc.publish(names.finished, encodeJson(summary)),
  };
}

/** Asks the run's coordinator that `replica` leave (`caravan leave`); its answer, decoded. */
export async function requestLeave(nc: NatsConnection, names: RunNames, replica: number, timeoutMs = 10_000): Promise<LeaveReply> {
  return decodeLeaveReply(await askCoordinator(nc, names.leave, { replica }, timeoutMs));
}

/** Asks the run's coordinator that the run go on with `stageLayers` (`caravan repartition --live`); its answer, decoded. */
export async function requestResplit(nc: NatsConnection, names: RunNames, stageLayers: number[], timeoutMs = 10_000): Promise<ResplitReply> {
  return decodeResplitReply(await askCoordinator(nc, names.resplit, { stage_layers: stageLayers }, timeoutMs));
}

async function askCoordinator(nc: NatsConnection, subject: string, body: unknown, timeoutMs: number): Promise<Uint8Array> {
  try {
    return (await nc.request(subject, encodeJson(body), { timeout: timeoutMs })).data;
  } catch (err) {
    throw new Error(`no answer from the run's coordinator on ${subject} (${(err as Error).message}): is the run going on, and are these the coordinator's credentials?`);
  }
}
