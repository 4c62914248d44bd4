// Who is in the run. A host registers with a key it proves it holds and is
// bound to that key for the run's life (a host id that comes back with
// another key is someone else); a key serves one live host id at a time, and
// under credentials it must be one of the run's minted host keys (host-keys.pub).
// The host then joins the Coordinator actor, which also hears its heartbeats
// and readiness. Every host has a KV record — its join time, key, latest
// status and slot — from which a restarted coordinator rebuilds the hosts it
// knew (restoreMembership) and which keys live hosts hold.
import type { CoordinatorEvent, CoordinatorMachineInput, Slot } from '../../actors/coordinator-machine.ts';
import type { Registration, RegistrationReply } from '../../schemas/control-messages.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import type { HostEntry, RecoveryCounts, SlotRecord } from '../../schemas/run-records.ts';
import type { Logger } from '../log.ts';
import { checkRegistration } from '../security/registration.ts';
import type { RunStateStore } from '../transport/run-state-store.ts';
import { isTransient } from '../transport/durable-publish.ts';
import type { SlotStore } from '../transport/slot-store.ts';
import type { OrderedWrites } from './ordered-writes.ts';

type HostFields = Partial<Omit<HostEntry, 'host' | 'status' | 'joined'>>;

export class Membership {
  /** host → the public key it registered and its datacenter (also in its KV record, for restarts). */
  private readonly registered = new Map<string, { key: string; datacenter: string }>();
  /** Hosts this process declared lost since they last registered (their KV records say so too, once written). */
  private readonly lostHere = new Set<string>();
  /** Of those, the ones lost while standbys: they held nothing, so one heard again is a standby again (heardAgain). */
  private readonly lostStandbys = new Set<string>();
  /** Hosts heard that this process had not (a restarted coordinator's): their KV record is read once (heardAgain). */
  private readonly lookedUp = new Set<string>();
  /** Keys of hosts an audit caught computing wrongly (rewinds.ts): never admitted again, their heartbeats ignored. */
  private readonly banned = new Set<string>();
  private readonly bannedHosts = new Set<string>();
  /** Registrations are decided one at a time: two under one key cannot both see the key free. */
  private admitting: Promise<void> = Promise.resolve();

  constructor(private readonly o: {
    readonly run: string; readonly store: RunStateStore; readonly writes: OrderedWrites; readonly log: Logger;
    readonly recoveries: RecoveryCounts; readonly send: (event: CoordinatorEvent) => void;
    /** Why a key is not one minted for the run (under credentials: the run's host-keys.pub), or undefined; absent, any key is admitted. */
    readonly runKey?: (key: string) => Promise<string | undefined>;
  }) {}

  register(msg: Registration, respond: (reply: RegistrationReply) => void): Promise<void> {
    this.admitting = this.admitting.then(() => this.admit(msg, respond)).catch((err: Error) => {
      this.o.log.warn({ host: msg.host, err: err.message }, 'registration failed');
      // A server in transition (the host records could not be read just now) is no reason to turn a host away: it asks again.
      respond({ ok: false, reason: `the coordinator could not decide the registration of ${String(msg.host)}: ${err.message}`, ...(isTransient(err) ? { retry: true } : {}) });
    });
    return this.admitting;
  }

  private async admit(msg: Registration, respond: (reply: RegistrationReply) => void): Promise<void> {
    const invalid = checkRegistration(this.o.run, msg);
    const refused = invalid ? { reason: invalid } : await this.keyRefusal(msg.host, msg.key);
    if (refused) {
      this.o.log.warn({ host: msg.host, key: msg.key, reason: refused.reason }, 'registration refused');
      respond({ ok: false, ...refused });
      return;
    }
    this.registered.set(msg.host, { key: msg.key, datacenter: msg.datacenter ?? 'default' });
    this.lostHere.delete(msg.host);
    this.lostStandbys.delete(msg.host);
    respond({ ok: true, run: this.o.run });
    // A speed that is no positive finite number is no measurement: left out, not trusted.
    const tflops = msg.tflops !== undefined && Number.isFinite(msg.tflops) && msg.tflops > 0 ? msg.tflops : undefined;
    this.o.log.info({ host: msg.host, datacenter: msg.datacenter, key: msg.key, tflops }, 'host joined');
    this.putHost(msg.host, 'joined', { datacenter: msg.datacenter ?? 'default', key: msg.key, tflops });
    this.o.send({ type: 'HOST_JOINED', host: msg.host, datacenter: msg.datacenter ?? 'default' });
  }

  /**
   * Why this host id may not register with this key, or undefined. Under credentials the key must be one minted
   * for the run. A host id is bound to the first key it registered with (another key under it is someone else),
   * and a key to at most one live host id: one credential, one slot at most. A host that is lost (its heartbeats
   * stopped) frees its key, so a restarted process (a new host id: hostname and pid) registers again. What this
   * process decided is in memory; what a coordinator before a restart decided is in the KV host records (every
   * record not 'lost' is restored into the actor, which times it out if its host is gone).
   */
  private async keyRefusal(host: string, key: string): Promise<{ reason: string; retry?: true } | undefined> {
    if (this.banned.has(key)) return { reason: `key ${key.slice(0, 12)}… is banned from run ${this.o.run}: an audit caught its host computing wrongly` };
    const notMinted = await this.o.runKey?.(key);
    if (notMinted) return { reason: `host ${host}: ${notMinted}` };
    const known = (await this.holder(host))?.key;
    if (known && known !== key) return { reason: `host id ${host} is registered with another key` };
    const records = new Map((await this.o.store.hosts()).map((h) => [h.host, h]));
    for (const other of new Set([...this.registered.keys(), ...records.keys()])) {
      if (other === host || (this.registered.get(other)?.key ?? records.get(other)?.key) !== key) continue;
      const live = this.lostHere.has(other) ? false : this.registered.has(other) || records.get(other)?.status !== 'lost';
      if (live) {
        // Retried by the host: a process restarted right after a crash waits for its old id to be declared lost.
        return { reason: `key ${key.slice(0, 12)}… is registered by host ${other}, which is live: one key holds one host id at a time (it is free again once ${other} is lost)`, retry: true };
      }
    }
    return undefined;
  }

  /**
   * Whether a heartbeat under `key` counts for `host`: it does unless the host registered with another key (in this
   * process; one known only from before a restart is taken as it comes). Another host's heartbeats, which a host
   * could otherwise send to keep a dead one "alive", are refused.
   */
  heartbeatCounts(host: string, key: string): boolean {
    const registered = this.registered.get(host);
    return !registered || registered.key === key;
  }

  /**
   * A heartbeat from `host` under `key`: if it was declared lost while it was a standby, it is one again. Its silence
   * was a server's or a link's (a NATS server killed or paused under it), not its own going: a standby holds nothing,
   * so nothing was handed on that it could contest, and taking it back keeps the run's standbys from being used up by
   * faults that are not theirs. Its key must still be its own alone (a host that registered since under that key
   * keeps it). A host this process has not heard of (declared lost before a restart) is looked up once in its KV
   * record, which must say it was lost holding nothing, under this key.
   */
  heardAgain(host: string, key: string): void {
    if (this.lostStandbys.has(host)) {
      const mine = this.registered.get(host);
      if (mine?.key === key && this.keyIsOnlyTheirs(host, key)) this.takeBack(host, mine);
      return;
    }
    if (this.registered.has(host) || this.lookedUp.has(host)) return;
    this.lookedUp.add(host);
    this.lookUp(host, key).catch((err: Error) => {
      this.lookedUp.delete(host);  // asked again at its next heartbeat
      this.o.log.warn({ host, err: err.message }, 'could not read the record of a host heard after a restart');
    });
  }

  private async lookUp(host: string, key: string): Promise<void> {
    const record = await this.o.store.readHost(host);
    if (record?.status !== 'lost' || record.slot || record.key !== key || this.registered.has(host)) return;
    const others = await this.o.store.hosts();
    if (others.some((h) => h.host !== host && h.key === key && h.status !== 'lost')) return;
    if (this.keyIsOnlyTheirs(host, key)) this.takeBack(host, { key, datacenter: record.datacenter });
  }

  /** No other host this process knows live holds `key`. */
  private keyIsOnlyTheirs(host: string, key: string): boolean {
    for (const [other, r] of this.registered) if (other !== host && r.key === key && !this.lostHere.has(other)) return false;
    return true;
  }

  private takeBack(host: string, registered: { key: string; datacenter: string }): void {
    this.registered.set(host, registered);
    this.lostStandbys.delete(host);
    this.lostHere.delete(host);
    this.o.log.info({ host }, 'standby heard again after it was declared lost: a standby again');
    this.putHost(host, 'joined', { datacenter: registered.datacenter });
    this.o.send({ type: 'HOST_JOINED', host, datacenter: registered.datacenter });
  }

  /** Whether the host was banned: its heartbeats are ignored without a word. */
  isBanned(host: string): boolean {
    return this.bannedHosts.has(host);
  }

  /**
   * Bans the host and its key: its heartbeats are ignored (isBanned), and the key may not register again under any
   * host id. A key known only from the host's record (a restarted coordinator) is looked up there.
   */
  ban(host: string): void {
    this.bannedHosts.add(host);
    const key = this.registered.get(host)?.key;
    if (key) this.banned.add(key);
    else void this.o.store.readHost(host).then((h) => { if (h?.key) this.banned.add(h.key); }, () => {});
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
    this.lostHere.add(host);
    if (!slot) this.lostStandbys.add(host);
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
      // Generation 0 is a run's starting state that no host has held yet (initial-states.ts).
      if (record && record.generation > 0) slots.push(record);
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
