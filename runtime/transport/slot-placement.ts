// Where each slot of a run ended up: its holder, the holder's datacenter (as
// the host registered it) and the cluster its input stream lives on. For
// reports and tests after a run (`caravan simulate`, the WAN tests).
import type { RunResources } from './run-resources.ts';
import { RunStateReader } from './run-state-reader.ts';

export interface SlotPlacement {
  readonly replica: number;
  readonly stage: number;
  readonly host: string;
  readonly datacenter: string;
  /** The NATS cluster its input stream lives on (a super-cluster's are named after their datacenters); undefined on a lone server. */
  readonly stream?: string;
}

/** Replica by replica, stage by stage. */
export async function slotPlacements(res: RunResources, replicas: number, stages: number): Promise<SlotPlacement[][]> {
  const reader = new RunStateReader(res);
  const rows: SlotPlacement[][] = [];
  for (let replica = 0; replica < replicas; replica++) {
    const row: SlotPlacement[] = [];
    for (let stage = 0; stage < stages; stage++) {
      const slot = await reader.slot(replica, stage);
      if (!slot) throw new Error(`slot ${replica}.${stage} has no record`);
      const datacenter = (await reader.host(slot.record.host))?.datacenter ?? 'unknown';
      const stream = (await res.jsm.streams.info(res.names.inputStream(replica, stage)).catch(() => undefined))?.cluster?.name;
      row.push({ replica, stage, host: slot.record.host, datacenter, ...(stream ? { stream } : {}) });
    }
    rows.push(row);
  }
  return rows;
}
