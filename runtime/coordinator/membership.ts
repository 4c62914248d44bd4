// Who is in the run. A host registers with a key it proves it holds and is
// bound to that key for the run's life (a host id that comes back with
// another key is someone else); it then joins the Coordinator actor, which
// also hears its heartbeats and readiness. Every host has a KV record — its
// join time, latest status and slot — from which a restarted coordinator
// rebuilds the hosts it knew (restoreMembership).
import type { CoordinatorEvent, CoordinatorMachineInput, Slot } from '../../actors/coordinator-machine.ts';
import type { Registration, RegistrationReply } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { HostEntry, RecoveryCounts, SlotRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import { checkRegistration } from '../security/registration.ts';
import type { RunStateStore } from '../transport/run-state-store.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { OrderedWrites } from './ordered-writes.ts';

type HostFields = Partial<Omit<HostEntry, 'host' | 'status' | 'joined'>>;

export class Membership {
  /** host → the public key it registered and its datacenter (also in its KV record, for restarts). */
  private readonly registered = new Map<string, { key: string; datacenter: string }>();

  constructor(private readonly o: {
    readonly run: string; readonly store: RunStateStore; readonly writes: OrderedWrites; readonly log: Logger;
    readonly recoveries: RecoveryCounts; readonly send: (event: CoordinatorEvent) => void;
  }) {}

  async register(msg: Registration, respond: (reply: RegistrationReply) => void): Promise<void> {
    const refused = checkRegistration(this.o.run, msg);
    if (refused) {
      this.o.log.warn({ reason: refused }, 'registration refused');
      respond({ ok: false, reason: refused });
      return;
    }
    // A host id is bound to the first key it registered with (kept in its KV record across coordinator restarts):
    // another key under the same id is someone else.
    const known = (await this.holder(msg.host).catch(() => undefined))?.key;
    if (known && known !== msg.key) {
      respond({ ok: false, reason: `host id ${msg.host} is registered with another key` });
      return;
    }
    this.registered.set(msg.host, { key: msg.key, datacenter: msg.datacenter ?? 'default' });
    respond({ ok: true, run: this.o.run });
    this.o.log.info({ host: msg.host, datacenter: msg.datacenter, key: msg.key }, 'host joined');
    this.putHost(msg.host, 'joined', { datacenter: msg.datacenter ?? 'default', key: msg.key });
    this.o.send({ type: 'HOST_JOINED', host: msg.host, datacenter: msg.datacenter ?? 'default' });
  }

  /** The key and datacenter a host registered with: in this process, or in its record from before a restart. */
  async holder(host: string): Promise<{ key?: string; datacenter: string } | undefined> {
    return this.registered.get(host) ?? (await this.o.store.readHost(host));
  }

  /** A host's record keeps its join time (restarts order standbys by it) and takes the latest status. */
  putHost(host: string, status: HostEntry['status'], fields: HostFields = {}): void {
    this.o.writes.write(`host record ${host}`, () =>
      this.o.store.updateHost(host, (before) => ({ ...before, ...fields, host, status, joined: before?.joined ?? new Date().toISOString() }) as HostEntry));
  }

  standby(host: string): void {
    this.putHost(host, 'standby', { replica: undefined, stage: undefined });
  }

  lost(host: string, slot: Slot | null): void {
    this.o.log.warn({ host, slot }, 'host lost (no heartbeat)');
    // Counted once: a restarted coordinator times out again a holder whose record already says lost.
    this.o.writes.write(`host record ${host}`, async () => {
      if ((await this.o.store.readHost(host))?.status !== 'lost') this.o.recoveries.hosts_lost++;
    });
    this.putHost(host, 'lost', { slot });
  }
}

/** Hosts and slots as the KV bucket has them: what a restarted coordinator starts from. */
export async function restoreMembership(store: RunStateStore, slotTable: SlotStore, config: RunConfig): Promise<NonNullable<CoordinatorMachineInput['restore']>> {
  const slots: SlotRecord[] = [];
  for (let r = 0; r < config.training.replicas; r++) {
    for (let s = 0; s < config.training.stages; s++) {
      const record = await slotTable.read(r, s);
      if (record) slots.push(record);
    }
  }
  const entries = await store.hosts();
  entries.sort((a, b) => a.joined.localeCompare(b.joined));
  const slotOf = (host: string) => {
    const s = slots.find((x) => x.host === host);
    return s ? { replica: s.replica, stage: s.stage } : null;
  };
  // Slot holders count whatever their host record says: a holder lost just before the restart is timed out again.
  const hosts = entries
    .map((h) => ({ id: h.host, datacenter: h.datacenter, slot: slotOf(h.host), lost: h.status === 'lost' }))
    .filter((h) => !h.lost || h.slot)
    .map(({ lost: _lost, ...h }) => h);
  for (const s of slots) {
    if (!hosts.some((h) => h.id === s.host)) hosts.push({ id: s.host, datacenter: 'unknown', slot: { replica: s.replica, stage: s.stage } });
  }
  return { running: slots.length > 0, hosts };
}
