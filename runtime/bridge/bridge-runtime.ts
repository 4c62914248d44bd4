// The Bridges of a run, one per stage, in the coordinator's process: each
// runs a Bridge actor (actors/bridge-machine.ts) on the actor clock and
// carries out what it decides (stage-combiner.ts). Stages are independent:
// each has its own chain of work, so every stage's sync downloads, combines
// and uploads at the same time as the others'. Each contribution's reported
// SHA-256 is kept for the combiner, which checks the object's bytes against it.
import { createActor } from 'xstate';
import { bridgeMachine, type BridgeCommand, type ReplicaSpan } from '../../actors/bridge-machine.ts';
import type { BridgeConfig, RunConfig } from '../../schemas/run-config.ts';
import type { ContributionReport } from '../../schemas/control-messages.ts';
import type { BridgeRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { BridgeStore } from '../transport/bridge-store.ts';
import { stageCombiner } from './stage-combiner.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

// Hosts read the Bridge's records through here (runtime/host/bridge-sync.ts); the reading lives in the transport.
export { readBridgeRecord } from '../transport/bridge-store.ts';

export interface Bridges {
  contributed(c: ContributionReport): void;
  /** A replica joins every stage's Bridge: its first contribution is to outer step `from`. */
  joined(replica: number, from: number): void;
  /** A replica leaves every stage's Bridge after contributing to outer step `until`. */
  leaving(replica: number, until: number): void;
  /** Whether every stage's Bridge has the replica's contribution to `outer`, or has combined that outer step already. */
  contributedAll(replica: number, outer: number): boolean;

  /** The records this process stored or found, by stage. */
  records(): BridgeRecord[];
  stop(): void;
}

export function startBridges(o: {
  store: BridgeStore; config: RunConfig; bridge: BridgeConfig; log: Logger; onError: (err: Error) => void;
  /** Who contributes to which outer step, as the run's membership has it so far. */
  members: readonly ReplicaSpan[];
}): Bridges {
  const { store, config, bridge, log } = o;
  const t = config.training;
  const records: BridgeRecord[] = [];
  // A quorum goes ahead within a tick of its timeout.
  const tickMs = Math.min(250, Math.max(10, Math.floor(bridge.timeoutMs / 10)));

  // `${stage}.${outer}.${replica}` → the SHA-256 its holder reported (the latest report: a replacement's re-upload has the same bytes).
  const reported = new Map<string, string>();
  const actors = stageRanges(config).map((_, stage) => {
    const combiner = stageCombiner({ store, config, bridge, log, stage, reported: (outer, replica) => reported.get(`${stage}.${outer}.${replica}`) });
    let chain = Promise.resolve();
    const actor = createActor(bridgeMachine, { input: { stage, members: o.members, quorum: bridge.quorum, timeoutMs: bridge.timeoutMs, tickMs } });
    actor.on('*', (cmd: BridgeCommand) => {
      if (cmd.type === 'LATE') {
        log.info({ stage, outer: cmd.outer, replica: cmd.replica }, 'late contribution: the replica adopts the stored sync');
        return;
      }
      // The record's span is in epoch ms: the first contribution came as long ago, on the actor clock, as it says.
      const firstMs = Date.now() - (cmd.at - cmd.firstAt);
      chain = chain.then(async () => {
        records.push(await combiner.combine(cmd.outer, cmd.replicas, firstMs));
        await store.advanceOuter(stage, cmd.outer);
        actor.send({ type: 'COMBINED', outer: cmd.outer });
      }).catch((err: Error) => o.onError(new Error(`bridge of stage ${stage}: ${err.message}`)));
    });
    actor.start();
    return actor;
  });

  return {
    contributed: (c) => {
      reported.set(`${c.stage}.${c.outer}.${c.replica}`, c.sha256);
      actors[c.stage]?.send({ type: 'CONTRIBUTED', outer: c.outer, replica: c.replica });
    },
    joined: (replica, from) => { for (const a of actors) a.send({ type: 'JOINED', replica, from }); },
    leaving: (replica, until) => { for (const a of actors) a.send({ type: 'LEAVING', replica, until }); },
    contributedAll: (replica, outer) => actors.every((a, stage) => reported.has(`${stage}.${outer}.${replica}`) || a.getSnapshot().context.done.includes(outer)),
    records: () => [...records],
    stop: () => { for (const a of actors) a.stop(); },
  };
}
