// A WAN plan brought up in this process: the namespaces, then one link
// emulator per planned link (towards the hub, and between every two
// datacenters where the plan has mesh ports). `caravan wan serve` holds one for
// as long as it runs; tests hold one in-process.
import { createNamespaces, deleteNamespaces } from './namespaces.ts';
import { LinkEmulator, type LinkSettings } from './link-emulator.ts';
import type { WanPlan } from './wan-profile.ts';

export type LinkChange = { forward?: Partial<LinkSettings>; backward?: Partial<LinkSettings> } & Partial<LinkSettings>;

export interface WanNetwork {
  readonly plan: WanPlan;
  /** The links from and to a datacenter, by its name: setting `up: false` cuts it off. */
  set(datacenter: string, change: LinkChange): void;
  links(): Array<{ from: string; to: string; port: number; forward: LinkSettings; backward: LinkSettings }>;
  stop(): Promise<void>;
}

export async function startWan(plan: WanPlan): Promise<WanNetwork> {
  await deleteNamespaces(plan);  // what a crashed earlier run of this id left
  const emulators: Array<{ from: string; to: string; port: number; link: LinkEmulator }> = [];
  try {
    await createNamespaces(plan);
    for (const l of plan.links) {
      const link = new LinkEmulator({ name: `${l.from}-${l.to}:${l.target.port}`, listen: l.listen, target: l.target, forward: l.forward, backward: l.backward });
      await link.start();
      emulators.push({ from: l.from, to: l.to, port: l.target.port, link });
    }
  } catch (err) {
    for (const e of emulators) await e.link.stop();
    await deleteNamespaces(plan);
    throw err;
  }
  return {
    plan,
    set(datacenter, change) {
      const mine = emulators.filter((e) => e.from === datacenter || e.to === datacenter);
      if (!mine.length) throw new Error(`no link from or to '${datacenter}': the links join ${[...new Set(emulators.flatMap((e) => [e.from, e.to]))].join(', ') || 'nothing'}`);
      for (const e of mine) e.link.set(change);
    },
    links: () => emulators.map((e) => ({ from: e.from, to: e.to, port: e.port, ...e.link.current })),
    async stop() {
      for (const e of emulators) await e.link.stop();
      await deleteNamespaces(plan);
    },
  };
}
