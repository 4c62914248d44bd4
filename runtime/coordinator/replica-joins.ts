// A replica joining a running run (training.bridge.startReplicas < replicas):
// the Coordinator actor has handed a replica's worth of standbys its slots;
// before their slot records are written (the same ordered writes), it is
// decided where the replica starts: after the last outer step every stage has
// stored, k, at step k·H. Each slot's starting checkpoint is the Bridge's
// parameters there with fresh optimizer moments (joining-state.ts), stored
// as a replacement's would be; the run state records the join (a restarted
// coordinator reads it); every stage's Bridge waits for the replica from
// outer step k+1 on; its Replica actor opens step k·H. Its data shard is its
// own (replica id), as for every replica.
//
// A replica retired for a slot left vacant (strandReplica) leaves the
// Bridge's membership the same way a replica told to leave does.
import type { ReplicaSpan } from '../../actors/bridge-machine.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { MembershipChange, RunState } from '../../schemas/run-records.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';
import type { Bridges } from '../bridge/bridge-runtime.ts';
import { joiningState } from '../bridge/joining-state.ts';
import type { Logger } from '../log.ts';
import { sha256Hex } from '../security/message-signature.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import type { Replicas } from './replicas.ts';
import type { LiveRunState } from './run-state.ts';

/**
 * Who contributes to which outer step, from the run state: the replicas that started from outer step 1, each that
 * joined after k from k+1; each that left, up to its last.
 */
export function bridgeMembers(config: RunConfig, state: Pick<RunState, 'joined' | 'left'>): ReplicaSpan[] {
  const starting = config.training.bridge?.startReplicas ?? config.training.replicas;
  const until = (replica: number) => {
    const left = state.left?.find((l) => l.replica === replica);
    return left ? { until: left.outer } : {};
  };
  return [
    ...Array.from({ length: starting }, (_, replica) => ({ replica, from: 1, ...until(replica) })),
    ...(state.joined ?? []).map((j) => ({ replica: j.replica, from: j.outer + 1, ...until(j.replica) })),
  ];
}

export function joinReplica(o: {
  readonly replica: number; readonly config: RunConfig; readonly bridgeStore: BridgeStore; readonly slots: SlotStore;
  readonly bridges: Bridges; readonly replicas: Replicas; readonly run: LiveRunState; readonly writes: OrderedWrites; readonly log: Logger;
}): void {
  const { replica, config, bridgeStore, run, log } = o;
  const t = config.training;
  o.writes.write(`replica ${replica} joining`, async () => {
    const H = t.bridge!.syncEvery;
    const ranges = stageRanges(config);
    let outer = Infinity;
    for (let s = 0; s < t.stages; s++) outer = Math.min(outer, await bridgeStore.readOuter(s));
    const step = outer * H;
    for (let s = 0; s < t.stages && outer > 0; s++) {
      const record = await bridgeStore.readRecord(s, outer);
      if (!record) throw new Error(`replica ${replica} joining: stage ${s} counts outer step ${outer} done, but it has no record`);
      const blob = await bridgeStore.readObject(record.theta);
      if (!blob || sha256Hex(blob) !== record.theta_sha256) throw new Error(`replica ${replica} joining: the parameters of stage ${s}'s outer step ${outer} (${record.theta}) are missing or not the ones its record names`);
      await o.slots.seed(replica, s, ranges[s], step - 1, joiningState(config, s, { payload: blob, name: record.theta }, step));
    }
    const join: MembershipChange = { replica, outer, step, at: Date.now() };
    run.state.joined = [...(run.state.joined ?? []), join];
    await run.save();
    o.bridges.joined(replica, outer + 1);
    o.replicas.join(replica, step);
    if (step >= t.steps) log.warn({ replica, step, steps: t.steps }, 'replica joined after the last outer step: it trains nothing');
    else log.info({ replica, outer, step }, 'replica joined: it starts from the Bridge\'s parameters after this outer step, at this step, and contributes from the next outer step on');
  });
}

/**
 * A slot of the replica vacant past training.bridge.retireVacantMs: the replica is retired where it stands
 * (Replicas.strand), so that the others' syncs stop waiting for it. Its remaining hosts keep their slots, idle, until
 * the run ends. Says whether it was retired.
 */
export function strandReplica(o: {
  readonly replica: number; readonly stage: number; readonly vacantMs: number; readonly config: RunConfig;
  readonly bridges: Bridges | undefined; readonly replicas: Replicas; readonly run: LiveRunState; readonly log: Logger;
}): boolean {
  const { replica, stage, vacantMs, bridges, run, log } = o;
  const decided = bridges ? o.replicas.strand(replica, o.config.training.bridge!.syncEvery, (outer) => bridges.contributedAll(replica, outer)) : 'the run has no Bridge';
  if (typeof decided === 'string') { log.warn({ replica, stage, vacant_ms: vacantMs }, `slot still vacant; the replica is not retired: ${decided}`); return false; }
  bridges!.leaving(replica, decided.outer);
  run.state.left = [...(run.state.left ?? []), { replica, outer: decided.outer, step: decided.lastStep, at: Date.now(), vacant: { stage } }];
  void run.save();
  log.warn({ replica, stage, vacant_ms: vacantMs, outer: decided.outer, last_step: decided.lastStep }, 'replica retired: a slot of it stayed vacant; the Bridge counts it no more after this outer step, and the run ends without it');
  return true;
}
