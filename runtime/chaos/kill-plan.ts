// Which process `caravan chaos` kills, where, and when: a pure function of the
// seed. Kills are spread over the run (by committed step) and cycle through
// every kind of moment before repeating any, so even a short plan covers a
// stage host mid-forward, mid-backward, between publish and ack, during a
// checkpoint upload, during the Bridge's sync (its contribution reported, the
// outer step not yet stored) and at an arbitrary instant, a stage host that
// stalls (SIGSTOP) past the heartbeat timeout and comes back after it was
// replaced, a stage host cut off from NATS (a network partition) past the
// heartbeat timeout and reconnected after it was replaced,
// the coordinator (at any moment, or while an audit it drew is not yet
// done), and a NATS server, a NATS server cut off from the other servers
// past a Raft election and healed, and pauses (SIGSTOP, then SIGCONT) of
// the coordinator and of a NATS server longer than the heartbeat timeout, as
// a GC or a disk stall would; the order and the slots hit are drawn from the
// seed.
import { mulberry32 } from '../seeded-random.ts';
import type { FaultPoint } from '../../schemas/control-messages.ts';

export type KillTarget =
  | { readonly kind: 'stage'; readonly replica: number; readonly stage: number; readonly point: StagePoint }
  | { readonly kind: 'coordinator' }
  // The coordinator killed while an audit it drew is saved in the run's state and not yet done.
  | { readonly kind: 'coordinator-audit' }
  | { readonly kind: 'nats' }
  // A NATS server cut off from the other servers (its routes carry nothing), then healed.
  | { readonly kind: 'nats-partition' }
  | { readonly kind: 'pause'; readonly process: 'coordinator' | 'nats' }
  // A NATS server killed while the slot's holder is stopped between uploading a checkpoint and reporting it.
  | { readonly kind: 'nats-checkpoint'; readonly replica: number; readonly stage: number };

/**
 * What can be killed: a stage host at a point of its work (or anywhere), the coordinator (at any moment, or mid-audit),
 * a NATS server (at any moment, or while a checkpoint is between upload and record); or paused: the coordinator, a NATS server.
 */
export const KILL_KINDS = [
  'forward', 'backward', 'publish', 'checkpoint', 'bridge-sync', 'anytime', 'stall', 'partition',
  'coordinator', 'nats', 'nats-partition', 'pause-coordinator', 'pause-nats', 'nats-checkpoint', 'coordinator-audit',
] as const;
export type KillKind = (typeof KILL_KINDS)[number];
/** Where a stage host is struck: killed at a fault point or anywhere, frozen (stall), or cut off from NATS (partition). */
export type StagePoint = FaultPoint | 'anytime' | 'stall' | 'partition';

export interface PlannedKill {
  readonly afterStep: number;   // strike once this many steps of replica 0 are committed
  readonly target: KillTarget;
}

export interface KillPlanInput {
  readonly kills: number;
  readonly seed: number;
  readonly steps: number;
  readonly stages: number;
  readonly replicas: number;
  readonly checkpointEvery: number;
  readonly natsServers: number;  // a NATS server is only killed when the others keep a majority
  readonly audits?: boolean;     // the run audits (training.audit): the coordinator can be killed mid-audit
  readonly bridge?: boolean;     // the Bridge syncs replicas (training.bridge, 2 or more replicas): a host can be killed mid-sync
  readonly targets?: readonly KillKind[];  // only these kinds (default: all that apply)
}

export function planKills(o: KillPlanInput): PlannedKill[] {
  if (o.kills < 0 || !Number.isInteger(o.kills)) throw new Error(`--kills must be a non-negative integer, got ${o.kills}`);
  if (o.kills > 0 && o.steps < 3) throw new Error(`a chaos run needs at least 3 steps (a kill, and a step after it to recover in), got ${o.steps}`);
  const rand = mulberry32(o.seed);
  // What a kind needs that this run may lack, each with the words that say so.
  const twoStages = { ok: o.stages > 1, what: '2 or more stages' };
  const checkpoints = { ok: o.checkpointEvery > 0, what: 'checkpoints' };
  const threeServers = { ok: o.natsServers >= 3, what: '3 NATS servers' };
  const needs: Partial<Record<KillKind, Array<{ ok: boolean; what: string }>>> = {
    publish: [twoStages], checkpoint: [checkpoints], nats: [threeServers], 'nats-partition': [threeServers], 'nats-checkpoint': [threeServers, checkpoints],
    'coordinator-audit': [{ ok: o.audits === true, what: 'audits (--audit-rate)' }],
    'bridge-sync': [{ ok: o.bridge === true && o.replicas > 1, what: 'the Bridge (training.bridge) and 2 or more replicas' }],
  };
  const applies = (k: KillKind) => (needs[k] ?? []).every((n) => n.ok);
  for (const k of o.targets ?? []) {
    if (!KILL_KINDS.includes(k)) throw new Error(`unknown kill target '${k}': expected ${KILL_KINDS.join(', ')}`);
    if (!applies(k)) throw new Error(`kill target '${k}' does not apply to this run (it needs ${needs[k]!.map((n) => n.what).join(' and ')})`);
  }
  const kinds = o.targets?.length ? [...new Set(o.targets)] : KILL_KINDS.filter(applies);
  // Each round takes every kind once, in a seeded order.
  const order: typeof kinds = [];
  while (order.length < o.kills) {
    const round = [...kinds];
    for (let i = round.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [round[i], round[j]] = [round[j], round[i]];
    }
    order.push(...round);
  }
  // Spread over the first three quarters of steps [1, steps − 2]: a kill needs a step after it to be seen to
  // recover, and a strike may land well after its step (a host reaching its fault point, an answer through a
  // server just paused) while training goes on; the last quarter leaves room for that.
  const span = Math.max(1, Math.floor(((o.steps - 2) * 3) / 4));
  return order.slice(0, o.kills).map((kind, i) => {
    const afterStep = Math.min(o.steps - 1, 1 + Math.floor((i * span) / Math.max(1, o.kills)));
    const target: KillTarget = kind === 'coordinator' || kind === 'nats' || kind === 'nats-partition' || kind === 'coordinator-audit' ? { kind }
      : kind === 'pause-coordinator' ? { kind: 'pause', process: 'coordinator' }
      : kind === 'pause-nats' ? { kind: 'pause', process: 'nats' }
      : kind === 'nats-checkpoint' ? { kind: 'nats-checkpoint', replica: Math.floor(rand() * o.replicas), stage: Math.floor(rand() * o.stages) }
      : { kind: 'stage', replica: Math.floor(rand() * o.replicas), stage: Math.floor(rand() * o.stages), point: kind as StagePoint };
    return { afterStep, target };
  });
}

