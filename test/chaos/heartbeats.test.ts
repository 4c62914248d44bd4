// Heartbeats come from a thread of their own (runtime/host/heartbeat-thread.ts):
// a host whose event loop is held for longer than the heartbeat timeout is
// slow, not gone, and keeps its slot; one held past the stuck timeout is
// stuck, and its slot goes to a standby. A standby silent for a while is a
// standby again once heard. Real processes, a real nats-server,
// the synthetic backend; CARAVAN_CHAOS_BLOCK holds one host's event loop.
import test from 'ava';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { createLogger } from '../../runtime/log.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { connectNats } from '../../runtime/transport/connect.ts';
import { openExistingRun } from '../../runtime/transport/run-resources.ts';
import { RunStateReader } from '../../runtime/transport/run-state-reader.ts';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const simulate = ['simulate', '--preset', 'orion-mini', '--steps', '3', '--microbatches', '4', '--time-scale', '10', '--heartbeat-timeout', '1500', '--json'];

test('a host whose event loop is held past the heartbeat timeout is slow, not lost: it keeps its slot', async (t) => {
  // 5 s held against a 1.5 s heartbeat timeout, with a standby there to take the slot if the host were declared lost.
  const out = await caravan([...simulate, '--standbys', '1'], { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_BLOCK: '0/1/1/5000' });
  t.is(out.code, 0, out.stderr.slice(-2000));
  const r = summaryOf(out) as { recoveries: { hosts_lost: number; slots_reassigned: number } };
  t.deepEqual(r.recoveries, { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 }, 'no host lost, no slot handed on');
});

test('a host whose event loop is held past the stuck timeout (10 × the heartbeat timeout) is lost, and a standby takes its slot', async (t) => {
  // 15 s of stuck loop, then the heartbeat timeout of silence: about 16.5 s; the loop is held for 25 s.
  const out = await caravan([...simulate, '--standbys', '1'], { CARAVAN_CHAOS: '1', CARAVAN_CHAOS_BLOCK: '0/1/1/25000' });
  t.is(out.code, 0, out.stderr.slice(-2000));
  const r = summaryOf(out) as { recoveries: { hosts_lost: number; slots_reassigned: number } };
  t.like(r.recoveries, { hosts_lost: 1, slots_reassigned: 1 });
});

// A standby whose heartbeats stop for a while (its NATS server killed or paused under it; here SIGSTOP) is declared
// lost, but it held nothing: heard again, it is a standby again, and takes the next slot that frees. Before, it stayed
// lost for good, and a cluster chaos run under load used up both its standbys that way and stalled at the next fault.
test.serial('a standby declared lost and heard again is a standby again, and takes the slot of a holder killed after: the weights of the in-process run', async (t) => {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { steps: 60, stages: 2, seqLen: 32, batchSize: 4, microbatches: 2, seed: 5, checkpointEvery: 5 } } });
  const seen: string[] = [];
  let watching: Promise<void> | undefined;
  const summary = await trainDistributed({
    config, log: createLogger('test', 'silent'), standbys: 1, heartbeatTimeoutMs: 3000, hostsMayBeKilled: true,
    onReady: ({ url, run }) => {
      watching = (async () => {
        const nc = await connectNats(url, 'standby-watch');
        try {
          const state = new RunStateReader(await openExistingRun(nc, run, url));
          const until = async (what: string, f: () => Promise<boolean>) => {
            const deadline = Date.now() + 120_000;
            while (!(await f().catch(() => false))) {
              if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
              await new Promise((r) => setTimeout(r, 100));
            }
            seen.push(what);
          };
          const status = async (host: string) => (await state.host(host))?.status;
          let standby = '';
          await until('a standby', async () => { standby = (await state.hosts()).find((h) => h.status === 'standby')?.host ?? ''; return standby !== ''; });
          const pid = (host: string) => Number(/-(\d+)$/.exec(host)![1]);
          process.kill(pid(standby), 'SIGSTOP');
          try {
            await until('the stopped standby declared lost', async () => (await status(standby)) === 'lost');
          } finally {
            process.kill(pid(standby), 'SIGCONT');
          }
          await until('the standby a standby again', async () => (await status(standby)) === 'standby');
          const holder = (await state.slot(0, 1))!.record.host;
          process.kill(pid(holder), 'SIGKILL');
          await until('slot 0.1 handed to the standby taken back', async () => (await state.slot(0, 1))?.record.host === standby);
        } finally {
          await nc.close();
        }
      })();
    },
  });
  await watching;
  t.deepEqual(seen, ['a standby', 'the stopped standby declared lost', 'the standby a standby again', 'slot 0.1 handed to the standby taken back']);
  // The standby and the killed holder (more only if a host beside them was slow past the timeout on a loaded machine).
  t.true(summary.recoveries.hosts_lost >= 2 && summary.recoveries.slots_reassigned >= 1, JSON.stringify(summary.recoveries));
  const reference = await trainLocal({ ...config, valBatches: 1 });
  t.is(summary.params_sha256, reference.paramsSha256, 'the same weights as the in-process run');
});
