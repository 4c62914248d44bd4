// Handing a slot to a host (the Coordinator actor's ASSIGN): the slot's input
// stream is made first, where the holder's datacenter is; then the slot
// record takes the next generation, bound to the key the host registered,
// and notes how far the previous holder's frames count (sentUntil); then the
// host's record says what it holds. Signatures are checked against the
// record from then on.
import type { CoordinatorCommand } from '../../actors/coordinator-machine.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { RecoveryCounts, SentUntil } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { Membership } from './membership.ts';
import type { OrderedWrites } from './ordered-writes.ts';
import { stageRanges } from '../../schemas/stage-layers.ts';

export class SlotTable {
  constructor(private readonly o: {
    readonly config: RunConfig; readonly slots: SlotStore; readonly membership: Membership; readonly writes: OrderedWrites;
    readonly log: Logger; readonly recoveries: RecoveryCounts;
  }) {}

  assign(cmd: Extract<CoordinatorCommand, { type: 'ASSIGN' }>): void {
    const { slots, log } = this.o;
    const [begin, end] = stageRanges(this.o.config)[cmd.stage];
    this.o.writes.write(`slot ${cmd.replica}.${cmd.stage}`, async () => {
      const holder = await this.o.membership.holder(cmd.host);
      if (!holder?.key) throw new Error(`host ${cmd.host} has no registered key`);
      // Before the slot record: its holder reads the stream, and no one sends to it before the run starts.
      const placedIn = await slots.ensureInputStream(cmd.replica, cmd.stage, holder.datacenter);
      // The previous holder's frames stored up to now are good; any later ones come from a host that was replaced.
      const until = await this.sentUntil(cmd.replica, cmd.stage);
      const record = await slots.assign(cmd.replica, cmd.stage, cmd.host, { key: holder.key, until });
      slots.signers.update(record);
      const fields = { host: cmd.host, replica: cmd.replica, stage: cmd.stage, generation: record.generation, from: record.checkpoint?.step ?? null };
      if (cmd.replacing) {
        this.o.recoveries.slots_reassigned++;
        log.warn({ ...fields, replacing: cmd.replacing }, 'slot handed to a standby');
      }
      else log.info({ ...fields, layers: [begin, end], datacenter: holder.datacenter, ...(placedIn ? { input_stream_in: placedIn } : {}) }, 'slot assigned');
    });
    this.o.membership.putHost(cmd.host, 'assigned', { replica: cmd.replica, stage: cmd.stage, layers: [begin, end] });
  }

  /** The last sequences of the input streams a holder of (replica, stage) sends to: its activations', its gradients'. */
  private async sentUntil(replica: number, stage: number): Promise<SentUntil> {
    const { slots } = this.o;
    return {
      ...(stage + 1 < this.o.config.training.stages ? { act: await slots.lastInputSeq(replica, stage + 1) } : {}),
      ...(stage > 0 ? { grad: await slots.lastInputSeq(replica, stage - 1) } : {}),
    };
  }
}
