// Bridge objects are authenticated, against a real nats-server with the
// credentials `caravan creds` mints: an attacker holding a host's valid
// credentials (a host of the run, holding no slot) may overwrite any object
// in the run's Object Store, and does. A contribution overwritten after its
// replica reported it is refused by the Bridge (every replica waited for: the
// sync fails, naming the object); θ overwritten after the Bridge's record
// names it is refused by the host that loads it (the stage fails, naming the
// object). Neither run ends with weights the attacker chose.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { mintCredentials } from '../../runtime/security/credentials.ts';
import { readBridgeRecord } from '../../runtime/transport/bridge-store.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { openExistingRun, type RunResources } from '../../runtime/transport/run-resources.ts';
import { readSlot } from '../../runtime/transport/slots.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';

const S = 2, R = 2;
const shape = { microbatches: 2, seqLen: 32, batchSize: 2, steps: 4, stages: S, replicas: R, checkpointEvery: 0 };

/** A server whose users are the run's minted ones: a coordinator, R·S hosts, a standby, and host-(R·S+1), the attacker. */
async function securedRun(t: ExecutionContext, run: string) {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-creds-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const { authConfig } = await mintCredentials({ dir, run, hosts: R * S + 2, observers: 0, shape: { stages: S, replicas: R } });
  const server = await startNatsServer({ config: [await readFile(authConfig, 'utf8')] });
  t.teardown(() => server.stop());
  const cred = (name: string) => join(dir, run, `${name}.nk`);
  const hosts = Array.from({ length: R * S + 1 }, (_, i) => cred(`host-${i}`));
  const open = async (name: string, user: string): Promise<{ nc: NatsConnection; res: RunResources }> => {
    const nc = await connectToRun(server.url, name, run, cred(user));
    t.teardown(() => nc.close());
    return { nc, res: await openExistingRun(nc, run, server.url) };
  };
  return { url: server.url, credentials: { coordinator: cred('coordinator'), hosts }, attacker: () => open('attacker', `host-${R * S + 1}`), watcher: () => open('watcher', 'coordinator') };
}

/** The object's bytes with one flipped: what an attacker would put there, well-formed or not (the digest is checked first). */
async function overwrite(res: RunResources, name: string): Promise<void> {
  const blob = (await res.objects.getBlob(name))!;
  const forged = blob.slice();
  forged[forged.length - 1] ^= 0x01;
  await res.objects.putBlob({ name }, forged);
}

/** The first time `replica`'s stage 0 sends a report that `matches` (seen with the coordinator's credentials), runs `then`. */
function whenReported(nc: NatsConnection, res: RunResources, replica: number, matches: (r: { type: string; outer?: number; step?: number }) => boolean, then: () => Promise<void>): void {
  let seen = false;
  nc.subscribe(res.names.report(replica, 0), {
    callback: (_e, m) => {
      if (seen || !matches(m.json())) return;
      seen = true;
      void then();
    },
  });
}
const contributedToOuter1 = (r: { type: string; outer?: number }) => r.type === 'contribution' && r.outer === 1;

async function killHostOf(res: RunResources, replica: number, stage: number): Promise<void> {
  const slot = await readSlot(res.kv, replica, stage);
  process.kill(Number(/-(\d+)$/.exec(slot!.record.host)![1]), 'SIGKILL');
}

test.serial('a contribution overwritten after it is reported is refused by the Bridge: with every replica waited for, the sync fails naming it', async (t) => {
  const run = 'tamper-contribution';
  const net = await securedRun(t, run);
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...shape, bridge: { syncEvery: 2 } as never } } });
  let overwritten = '';
  const failure = await t.throwsAsync(trainDistributed({
    config, nats: net.url, run, log: createLogger('test', 'silent'), credentials: net.credentials,
    standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'silent',
    onReady: async () => {
      const [watcher, attacker] = [await net.watcher(), await net.attacker()];
      // Replica 1's stage 0 dies after its first step, before it can contribute, so the Bridge (waiting for every
      // replica) cannot combine before the attacker is done: its replacement replays from the start, seconds later.
      whenReported(watcher.nc, watcher.res, 1, (r) => r.type === 'stepped' && r.step === 0, () => killHostOf(watcher.res, 1, 0));
      whenReported(watcher.nc, watcher.res, 0, contributedToOuter1, async () => {
        const name = attacker.res.names.bridgeContribution(0, 1, 0);
        await overwrite(attacker.res, name);
        overwritten = name;
      });
    },
  }));
  t.is(overwritten, 'bridge/stage-0/outer-1/replica-0', 'the attacker overwrote the reported contribution');
  t.regex(failure!.message, /bridge of stage 0: contribution bridge\/stage-0\/outer-1\/replica-0 of replica 0 is not the one it reported \(sha256 [0-9a-f]{16}…, reported [0-9a-f]{16}…\): it was overwritten in the object store; without it 1 of the quorum of 2 remain/);
});

test.serial('θ overwritten after the Bridge\'s record names it is refused by the host that loads it: the stage fails, naming the object', async (t) => {
  const run = 'tamper-theta';
  const net = await securedRun(t, run);
  // A quorum of 1 after 1.5 s: outer step 1 is stored long before replica 1's replacement (6 s heartbeats) replays to it and loads it.
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { ...shape, bridge: { syncEvery: 2, quorum: 1, timeoutMs: 1500 } as never } } });
  let overwritten = '';
  const failure = await t.throwsAsync(trainDistributed({
    config, nats: net.url, run, log: createLogger('test', 'silent'), credentials: net.credentials,
    standbys: 1, heartbeatTimeoutMs: 6000, hostsMayBeKilled: true, childLogLevel: 'silent',
    onReady: async () => {
      const [watcher, attacker] = [await net.watcher(), await net.attacker()];
      whenReported(watcher.nc, watcher.res, 0, contributedToOuter1, async () => {
        await killHostOf(watcher.res, 1, 0);
        // After the record is written: the attacker reads it (hosts may read KV) and overwrites the θ it names.
        const key = attacker.res.names.bridgeKey(0, 1);
        let record;
        while (!(record = await readBridgeRecord(attacker.res.kv, key))) await new Promise((r) => setTimeout(r, 5));
        await overwrite(attacker.res, record.theta);
        overwritten = record.theta;
      });
    },
  }));
  t.is(overwritten, 'bridge/stage-0/outer-1/theta');
  t.regex(failure!.message, /replica \d stage 0: bridge object bridge\/stage-0\/outer-1\/theta is not the result of outer step 1 \(sha256 [0-9a-f]{16}…, recorded [0-9a-f]{16}…\): it was overwritten in the object store/);
});
