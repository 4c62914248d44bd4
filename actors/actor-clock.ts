// The actor clock: the one way the actors in this folder keep time.
//
// No machine reads Date.now(), and no event carries a time. Time reaches a
// machine only through xstate delays (`after`, delayed events), which run on
// the clock its actor was created with: real timers in the runtime, a
// SimulatedClock in tests, which then run instantly and the same every time.
// A machine that measures how long something took keeps `now` in its
// context, in ms on the actor clock, advanced by `tickMs` whenever its
// `tick` delay fires (a re-entered `after` transition), and stamps what
// happens with that `now`. Something that happens between two ticks is
// stamped with the earlier one, so it may have happened up to a tick after
// its stamp: `elapsedSince` counts only the time that has surely passed, so
// a timeout never fires early, and fires within a tick of being due.
//
// The Coordinator (a host silent for heartbeatTimeoutMs is lost) and the
// Bridge (a quorum goes ahead timeoutMs after a sync's first contribution)
// keep time this way. The Replica and the Stage need none: they move on
// events alone.

export interface ActorClock {
  /** ms on the actor clock: ticks so far × tickMs. */
  readonly now: number;
  readonly tickMs: number;
}

/** The `tick` delay of a machine whose context keeps an ActorClock. */
export const tickDelay = ({ context }: { context: ActorClock }): number => context.tickMs;

/** How much time has surely passed at `clock.now` since something stamped `at`. */
export function elapsedSince(clock: ActorClock, at: number): number {
  return clock.now - at - clock.tickMs;
}
