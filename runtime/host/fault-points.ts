// Fault injection for `caravan chaos` and the chaos tests: a host started with
// CARAVAN_CHAOS=1 listens on its chaos subject for "stop at the Nth time you
// reach point P". When it gets there it says so and stops itself with
// SIGSTOP, so the chaos driver can SIGKILL it at exactly that instant: after a
// forward or a backward is computed but before its output is published, just
// after an output is published (stored, its effect not yet recorded), or
// while a checkpoint is uploaded but not yet recorded. Off by default: a
// production host ignores the subject entirely.
//
// The same switch lets a host play a peer that sends poison:
// CARAVAN_CHAOS_POISON=<kind>/<replica>/<stage>/<step>/<mb> makes the holder
// of that slot put a NaN in that output frame (the non-finite tests).
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeFaultRequest, FAULT_POINTS, type FaultPoint, type FaultReached } from '../../schemas/control-messages.ts';
import type { CoreSubscription, RunConnection } from '../transport/run-connection.ts';
import type { OnRefused } from '../transport/survivable-callback.ts';

export class FaultPoints {
  private armed: { point: FaultPoint; left: number } | undefined;
  private readonly sub: CoreSubscription | undefined;
  /** Outputs to poison, as `<kind>/<replica>/<stage>/<step>/<mb>`: read once, at start. */
  private readonly poison: ReadonlySet<string>;

  constructor(private readonly conn: RunConnection, private readonly host: string, subject: string, private readonly reachedSubject: string, refused: OnRefused, enabled = process.env.CARAVAN_CHAOS === '1') {
    this.poison = new Set(enabled && process.env.CARAVAN_CHAOS_POISON ? process.env.CARAVAN_CHAOS_POISON.split(',') : []);
    if (!enabled) return;
    this.sub = conn.subscribe(subject, (m) => {
      const req = decodeFaultRequest(m.data);
      if (!FAULT_POINTS.includes(req.point) || !(req.after >= 1)) {
        m.respond(encodeJson({ ok: false, error: `unknown fault point ${JSON.stringify(req.point)} or count ${req.after}` }));
        return;
      }
      this.armed = { point: req.point, left: req.after };
      m.respond(encodeJson({ ok: true }));
    }, refused);
  }

  /** Called by the stage at each point; returns at once unless this is where the host was told to stop. */
  async reach(point: FaultPoint): Promise<void> {
    if (!this.armed || this.armed.point !== point || --this.armed.left > 0) return;
    this.armed = undefined;
    const reached: FaultReached = { host: this.host, pid: process.pid, point };
    this.conn.publish(this.reachedSubject, encodeJson(reached));
    await this.conn.flush();
    process.kill(process.pid, 'SIGSTOP');
  }

  /** Whether this output frame is one CARAVAN_CHAOS_POISON names (only with CARAVAN_CHAOS=1). */
  poisons(kind: string, replica: number, stage: number, step: number, mb: number): boolean {
    return this.poison.size > 0 && this.poison.has(`${kind}/${replica}/${stage}/${step}/${mb}`);
  }

  close(): void {
    this.sub?.unsubscribe();
  }
}
