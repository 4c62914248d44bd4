// Whether this process can hear NATS at all, so that it blames its own link
// and not its peers when everything goes quiet. A server that is paused (a
// GC or disk stall, SIGSTOP) or cut off keeps the TCP connection open, and
// the client notices only when its pings go unanswered (minutes, by the
// client's defaults). Meanwhile every heartbeat stops arriving at once, and a
// coordinator that took that for the hosts' fault would declare every one of
// them lost and hand every slot to a standby. So the server is pinged every
// `periodMs`; with no answer for `silentMs` the link counts as lost until
// the next answer.
import type { NatsConnection } from './connect.ts';

export interface LinkWatch {
  stop(): void;
}

export function watchLink(nc: NatsConnection, o: { periodMs: number; silentMs: number; changed: (up: boolean) => void }): LinkWatch {
  let lastAnswer = performance.now();
  let up = true;
  let probing = false;
  let stopped = false;
  const set = (now: boolean) => {
    if (now === up || stopped) return;
    up = now;
    o.changed(now);
  };
  const timer = setInterval(() => {
    if (performance.now() - lastAnswer > o.silentMs) set(false);
    if (probing || nc.isClosed()) return;
    probing = true;
    // rtt() is a PING answered by the server's PONG.
    nc.rtt().then(() => {
      lastAnswer = performance.now();
      set(true);
    }, () => { /* closed or disconnected: no answer, which the silence says */ }).finally(() => { probing = false; });
  }, o.periodMs);
  return {
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
