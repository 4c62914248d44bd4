// Fault injection for `caravan chaos` and the chaos tests: a host started with
// CARAVAN_CHAOS=1 listens on its chaos subject for "stop at the Nth time you
// reach point P". When it gets there it says so and stops itself with
// SIGSTOP, so the chaos driver can SIGKILL it at exactly that instant: after a
// forward or a backward is computed but before its output is published, just
// after an output is published (stored, its effect not yet recorded), or
// while a checkpoint is uploaded but not yet recorded, or once its Bridge
// contribution is reported and before the outer step it joins is stored. Off by default: a
// production host ignores the subject entirely.
//
// The same switch lets a host play a peer that sends poison:
// CARAVAN_CHAOS_POISON=<kind>/<replica>/<stage>/<step>/<mb> makes the holder
// of that slot put a NaN in that output frame (the non-finite tests), and
// CARAVAN_CHAOS_CHEAT=<mode>/<replica>/<stage>/<from step> makes the slot's
// first holder cheat from that step on, as a dishonest peer would, for the audits to catch: 'scale'
// multiplies every output by 1 + 1e-3 (and reports the digests of what it
// sent), 'flip' flips the lowest bit of each output's first value after
// digesting the honest frame (so its report and its frames disagree), and
// 'skip-update' leaves its weights as they were instead of updating them.
// CARAVAN_CHAOS_BLOCK=<replica>/<stage>/<step>/<ms> makes the first holder
// of that slot (generation 1) hold its event loop (a blocking wait) for that
// long when it starts that step's first forward, once: a host that is slow,
// not gone, whose heartbeats come from a thread of their own
// (heartbeat-thread.ts).
import { encodeJson } from '../../schemas/json-message.ts';
import { decodeFaultRequest, FAULT_POINTS, type FaultPoint, type FaultReached } from '../../schemas/control-messages.ts';
import type { CoreSubscription, RunConnection } from '../transport/run-connection.ts';
import type { OnRefused } from '../transport/survivable-callback.ts';

export class FaultPoints {
  private armed: { point: FaultPoint; left: number } | undefined;
  private readonly sub: CoreSubscription | undefined;
  /** Outputs to poison, as `<kind>/<replica>/<stage>/<step>/<mb>`: read once, at start. */
  private readonly poison: ReadonlySet<string>;
  private readonly cheat: { mode: CheatMode; replica: number; stage: number; from: number } | undefined;
  private block: { slot: string; ms: number } | undefined;

  constructor(private readonly conn: RunConnection, private readonly host: string, subject: string, private readonly reachedSubject: string, refused: OnRefused, enabled = process.env.CARAVAN_CHAOS === '1') {
    this.poison = new Set(enabled && process.env.CARAVAN_CHAOS_POISON ? process.env.CARAVAN_CHAOS_POISON.split(',') : []);
    this.cheat = enabled && process.env.CARAVAN_CHAOS_CHEAT ? parseCheat(process.env.CARAVAN_CHAOS_CHEAT) : undefined;
    this.block = enabled && process.env.CARAVAN_CHAOS_BLOCK ? parseBlock(process.env.CARAVAN_CHAOS_BLOCK) : undefined;
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

  /**
   * How this slot's holder cheats at `step`, if CARAVAN_CHAOS_CHEAT names it (only with CARAVAN_CHAOS=1): the slot's
   * first holder (generation 1) only. Caught, it is banned and a standby takes the slot: that one is honest.
   */
  cheats(replica: number, stage: number, generation: number, step: number): CheatMode | undefined {
    const c = this.cheat;
    return c && generation === 1 && c.replica === replica && c.stage === stage && step >= c.from ? c.mode : undefined;
  }

  /** Holds the event loop where CARAVAN_CHAOS_BLOCK says (only with CARAVAN_CHAOS=1), the first time this step starts. */
  holdEventLoop(replica: number, stage: number, generation: number, step: number): void {
    if (!this.block || generation !== 1 || this.block.slot !== `${replica}/${stage}/${step}`) return;
    const { ms } = this.block;
    this.block = undefined;
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  }

  close(): void {
    this.sub?.unsubscribe();
  }
}

export const CHEAT_MODES = ['scale', 'flip', 'skip-update'] as const;
export type CheatMode = (typeof CHEAT_MODES)[number];

/** `<mode>/<replica>/<stage>/<from step>`, refused by name where it is not that. */
export function parseCheat(spec: string): { mode: CheatMode; replica: number; stage: number; from: number } {
  const [mode, ...rest] = spec.split('/');
  const nums = rest.map(Number);
  if (!CHEAT_MODES.includes(mode as CheatMode) || nums.length !== 3 || !nums.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new Error(`cheat ${JSON.stringify(spec)}: expected <mode>/<replica>/<stage>/<from step> with mode one of ${CHEAT_MODES.join(', ')}`);
  }
  return { mode: mode as CheatMode, replica: nums[0], stage: nums[1], from: nums[2] };
}

/** CARAVAN_CHAOS_BLOCK: <replica>/<stage>/<step>/<ms>. */
function parseBlock(spec: string): { slot: string; ms: number } {
  const nums = spec.split('/').map(Number);
  if (nums.length !== 4 || !nums.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new Error(`CARAVAN_CHAOS_BLOCK ${JSON.stringify(spec)}: expected <replica>/<stage>/<step>/<ms>`);
  }
  return { slot: nums.slice(0, 3).join('/'), ms: nums[3] };
}
