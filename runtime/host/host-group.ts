// Several hosts in one process (`caravan host --count n`): for a simulation
// whose synthetic stages only wait on timers, so that 48 hosts of a 16 × 3
// run fit a machine with a few cores. Each host is whole on the wire — its
// own NATS connection, key, heartbeat thread, consumers and signatures, its
// own registration and slot — exactly as if it ran alone; only the event
// loop (and the engine's thread pool) is shared. The group ends when every
// host has: a failure is the first host error, and a host that was replaced
// leaves the others running (the group then exits as replaced).
import { runHost, hostId, type HostOptions } from './host-process.ts';
import { SlotLostError } from '../transport/slots.ts';

export interface HostGroupOptions extends Omit<HostOptions, 'id' | 'datacenter' | 'nkey'> {
  readonly count: number;
  /** Datacenter labels, given to the hosts in turn. */
  readonly datacenters: readonly string[];
}

/** Runs `count` hosts; throws the first error that is not a lost slot, else the first lost slot, once all have ended. */
export async function runHostGroup(o: HostGroupOptions): Promise<void> {
  if (!(Number.isSafeInteger(o.count) && o.count >= 1)) throw new Error(`a host group needs a positive count of hosts, got ${o.count}`);
  if (o.datacenters.length === 0) throw new Error('a host group needs at least one datacenter label');
  const { count, datacenters, ...shared } = o;
  const ends = await Promise.allSettled(Array.from({ length: count }, (_, k) => runHost({ ...shared, id: hostId(k), datacenter: datacenters[k % datacenters.length] })));
  const errors = ends.flatMap((e) => (e.status === 'rejected' ? [e.reason as Error] : []));
  const failure = errors.find((e) => !(e instanceof SlotLostError)) ?? errors[0];
  if (failure) throw failure;
}
