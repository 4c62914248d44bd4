// Chaos over real processes: `caravan chaos` SIGKILLs stage hosts at chosen
// points of their work (after a forward or a backward is computed, just after
// an output is stored, while a checkpoint is uploaded, during the Bridge's
// sync, at an arbitrary instant), stalls one past the heartbeat timeout or
// cuts it off from NATS for as long and lets it come back, kills and pauses
// the coordinator, pauses the NATS server, and on a 3-node cluster kills a
// NATS server. Every run must end
// with the weights of the fault-free run bit for bit, every (step,
// microbatch) in every stage's update exactly once, and replayed steps
// reporting the same Σg² as the first time.
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { caravan, summaryOf } from '../support/caravan-cli.ts';

const small = ['--json', '--steps', '14', '--stages', '3', '--seq', '32', '--batch', '4', '--microbatches', '2', '--checkpoint-every', '2'];

/** What a failed run's JSON line says of where it stood, for the log (the assertion's message keeps only stderr's tail). */
function explainFailure(t: import('ava').ExecutionContext, out: { code: number | null; stdout: string }): void {
  if (out.code === 0) return;
  try {
    const r = summaryOf(out as Parameters<typeof summaryOf>[0]) as Record<string, any>;
    t.log(JSON.stringify({ error: r.error, waiting_for: r.waiting_for, events: r.events?.slice(-12), slots: r.slots, hosts: r.hosts }));
  } catch {
    t.log(`no JSON line: ${out.stdout.slice(-2000)}`);
  }
}

function checkReport(t: import('ava').ExecutionContext, r: Record<string, unknown>, kills: number) {
  t.is(r.kills, kills, `every planned kill struck: ${JSON.stringify(r.kill_log)}`);
  t.is(r.lost_microbatches, 0);
  t.is(r.duplicated_microbatches, 0);
  t.is(r.replay_mismatches, 0);
  t.true(r.params_match_reference, `${r.params_sha256} vs the fault-free ${r.reference_params_sha256}`);
  t.regex(r.params_sha256 as string, /^[0-9a-f]{64}$/);
  const rec = r.recovery_s as { median: number; p95: number; max: number };
  t.true(rec.median > 0 && rec.p95 >= rec.median && rec.max >= rec.p95, JSON.stringify(rec));
  const byKind = r.recovery_s_by_kind as Record<string, { median: number; p95: number; max: number }>;
  t.deepEqual(Object.keys(byKind).sort(), Object.keys(r.faults_by_kind as object).sort(), 'a recovery time for every kind of fault');
  t.log(`recovery median ${rec.median.toFixed(2)} s, p95 ${rec.p95.toFixed(2)} s, max ${rec.max.toFixed(2)} s; ${JSON.stringify(r.faults_by_kind)}`);
  // Which kinds the slow recoveries follow.
  t.log(`slowest recovery by kind (s): ${JSON.stringify(Object.fromEntries(Object.entries(byKind).map(([k, v]) => [k, +v.max.toFixed(1)])))}`);
}

test.serial('twenty faults of ten kinds in one run: hosts killed at every fault point, stalled and cut off from NATS, the coordinator killed and paused, the server paused: same weights, nothing lost or doubled', async (t) => {
  const targets = 'forward,backward,publish,checkpoint,anytime,stall,partition,coordinator,pause-coordinator,pause-nats';
  // Two standbys: on a loaded 2-core machine a host that is only slow can miss the 1.5 s heartbeat timeout, and a stall must still find one.
  // Killed hosts come back through the fleet's supervisor, so 20 faults do not use up the standbys.
  // 18 steps: the plan strikes over the first three quarters, steps 1–12.
  const out = await caravan(['chaos', ...small, '--steps', '18', '--nats-servers', '1', '--faults', '20', '--seed', '11', '--targets', targets, '--standbys', '2']);
  explainFailure(t, out);
  const r = summaryOf(out);
  t.is(out.code, 0, out.stderr.slice(-2000));
  checkReport(t, r, 20);
  // Two rounds of the ten kinds.
  t.deepEqual(r.faults_by_kind, Object.fromEntries(targets.split(',').map((k) => [k, 2])));
  t.deepEqual(r.kills_by_target, { stage: 10, stall: 2, partition: 2, coordinator: 2, 'pause-coordinator': 2, 'pause-nats': 2 });
  // The driver checks that each stalled or cut-off host, back, saw it was replaced and left (exit 3), or saw the run
  // finished meanwhile (exit 0): a run that ends with either is no pass otherwise.
  t.true((r.hosts_replaced_and_refused as number) >= 1, 'stalled or cut-off hosts came back, saw they were replaced and left');
  t.true(r.ok);
  t.true((r.hosts_restarted as number) >= 10, `the supervisor started killed hosts again (${r.hosts_restarted})`);
  // The coordinator's own count: every killed, stalled or cut-off host was lost and its slot handed on; it restarted twice.
  const rec = r.recoveries as { hosts_lost: number; slots_reassigned: number; coordinator_restarts: number };
  t.true(rec.hosts_lost >= 14 && rec.slots_reassigned >= 14, JSON.stringify(rec));
  t.is(rec.coordinator_restarts, 2);
});

test.serial('with the Bridge on two replicas: hosts killed mid-sync and cut off from NATS: same weights, nothing lost or doubled', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'caravan-chaos-bridge-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'run.json');
  writeFileSync(config, JSON.stringify({ training: { replicas: 2, stages: 2, bridge: { syncEvery: 2 } } }));
  const out = await caravan(['chaos', ...small, '--config', config, '--stages', '2', '--steps', '8', '--nats-servers', '1', '--faults', '4', '--seed', '3', '--targets', 'bridge-sync,partition']);
  const r = summaryOf(out) as Record<string, any>;
  t.is(out.code, 0, out.stderr.slice(-2000));
  checkReport(t, r, 4);
  t.deepEqual(r.faults_by_kind, { 'bridge-sync': 2, partition: 2 });
  // Each sync kill struck a holder stopped after reporting its contribution, before the outer step was stored.
  t.deepEqual(r.kill_log.filter((k: { kind: string }) => k.kind === 'bridge-sync').map((k: { detail: string }) => /\(bridge-sync\)$/.test(k.detail)), [true, true]);
  t.true((r.hosts_replaced_and_refused as number) >= 1, 'cut-off hosts came back, saw they were replaced and left');
});

test.serial('the coordinator and the NATS server paused past the heartbeat timeout: no slot changes hands, same weights', async (t) => {
  // Each pause is 4.5 s, three heartbeat timeouts. Without the coordinator's link watch, one pause of the server
  // lost every host at once (all heartbeats stop together) and handed every slot it could to a standby.
  const out = await caravan(['chaos', ...small, '--steps', '8', '--nats-servers', '1', '--kills', '2', '--seed', '3', '--targets', 'pause-coordinator,pause-nats', '--standbys', '2']);
  const r = summaryOf(out);
  t.is(out.code, 0, out.stderr.slice(-2000));
  checkReport(t, r, 2);
  t.deepEqual(r.kills_by_target, { 'pause-coordinator': 1, 'pause-nats': 1 });
  const rec = r.recoveries as { hosts_lost: number; slots_reassigned: number };
  // At most one: beside the suite's other runs on 2 cores a host that is only slow can miss the 1.5 s timeout now and then.
  t.true(rec.hosts_lost <= 1, `a pause is nobody's fault, yet ${rec.hosts_lost} hosts were declared lost`);
});

test.serial('a restarted coordinator replays a snapshot of the control log and its tail, not the whole log: same weights', async (t) => {
  // Snapshots every 24 entries followed live; the coordinator killed three times over the first 36 of 48 steps.
  const every = 24;
  const out = await caravan(['chaos', ...small, '--stages', '2', '--steps', '48', '--nats-servers', '1', '--faults', '3', '--seed', '3', '--targets', 'coordinator', '--snapshot-every', String(every)]);
  const r = summaryOf(out) as Record<string, any>;
  t.is(out.code, 0, out.stderr.slice(-2000));
  checkReport(t, r, 3);
  const replays = r.control_replays as Array<{ snapshot_seq: number | null; entries: number; log_seq: number }>;
  t.is(replays.length, 3, JSON.stringify(replays));
  const fromSnapshot = replays.filter((x) => x.snapshot_seq !== null);
  t.true(fromSnapshot.length >= 2, `the later restarts start from a snapshot: ${JSON.stringify(replays)}`);
  for (const x of fromSnapshot) {
    // The tail (at most `every` followed entries, and what the stages logged while no coordinator ran) and what the
    // snapshot kept (the steps each replica last committed): bounded whatever the run's length.
    t.true(x.entries <= every + 40, `${x.entries} entries replayed from the snapshot at ${x.snapshot_seq} of a log of ${x.log_seq}`);
  }
  const last = replays[replays.length - 1];
  t.true(last.entries * 2 < last.log_seq, `the last restart replayed ${last.entries} of ${last.log_seq} entries`);
  t.log(`replays: ${JSON.stringify(replays)}`);
});

// On a 3-node cluster, the command as a user would type it: every kind of
// fault that applies to the default run (4 stages, 60 steps: three a fault), thirteen kinds,
// among them a NATS server killed (at any moment, and while a checkpoint
// awaits its record), cut off from the other servers past a Raft election,
// and paused. Run over and over beside a process spinning on a core, it
// found a new way to fail every few runs (docs/recovery.md, items 4–16),
// each fixed as found; with item 16 fixed it passed 10 runs in a row there
// (2026-12-04), and it is in the suite since. CARAVAN_CLUSTER_CHAOS=0 skips it
// (about 4 minutes).
const clusterTest = process.env.CARAVAN_CLUSTER_CHAOS === '0' ? test.skip : test.serial;

clusterTest('on a 3-node NATS cluster, `caravan chaos --faults 20 --seed 11`: thirteen kinds of fault, servers killed, cut off and paused among them: same weights, nothing lost or doubled', async (t) => {
  // 60 steps and 20 faults on a 3-node cluster: about 4 minutes beside a busy process, where the guard's default
  // (280 s) once ended a run that was going on (exit 130, no line) while a third heavy job ran too.
  const out = await caravan(['chaos', '--json', '--faults', '20', '--seed', '11'], {}, 420_000);
  explainFailure(t, out);
  const r = summaryOf(out) as Record<string, any>;
  t.is(out.code, 0, out.stderr.slice(-2000));
  checkReport(t, r, 20);
  const kinds = ['forward', 'backward', 'publish', 'checkpoint', 'anytime', 'stall', 'partition', 'coordinator', 'nats', 'nats-partition', 'pause-coordinator', 'pause-nats', 'nats-checkpoint'];
  t.deepEqual(Object.keys(r.faults_by_kind).sort(), [...kinds].sort(), 'every kind that applies struck at least once');
  t.true(r.ok);
});

/** Processes whose command line names `word` (the run id every coordinator and host of a run is started with). */
function processesNaming(word: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(word)) found.push(`${pid}: ${cmd.slice(0, 120)}`);
    } catch { /* gone meanwhile */ }
  }
  return found;
}

/** Whether something accepts connections at a nats://host:port URL. */
function listening(url: string): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = createConnection({ host: hostname, port: Number(port) });
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

test.serial('a chaos run that cannot go on ends with a JSON line saying where it stood, and leaves nothing running', async (t) => {
  // A stalled host and no standby to take its slot: the handover the driver waits for never comes.
  const out = await caravan(['chaos', ...small, '--steps', '6', '--nats-servers', '1', '--kills', '1', '--seed', '3', '--targets', 'stall', '--standbys', '0']);
  t.is(out.code, 1, out.stderr.slice(-2000));
  const r = summaryOf(out) as Record<string, any>;
  t.false(r.ok);
  t.regex(r.error, /^chaos: slot 0\.\d was not handed over while its host was stopped$/);
  t.regex(out.stderr, /caravan chaos: failed at step \d+; run running; slots: 0\.0→\S+#1 0\.1→\S+#1 0\.2→\S+#1/);
  t.regex(out.stderr, /chaos: slot 0\.\d was not handed over/);
  t.true(r.events.some((e: string) => /^stalled replica 0 stage \d \(SIGSTOP\) at step \d+$/.test(e)), JSON.stringify(r.events));
  t.is(r.run_status, 'running');
  t.is(r.slots.length, 3);
  t.true(r.hosts.some((h: { status: string; slot: string | null }) => h.status === 'lost'), `the stalled host was declared lost: ${JSON.stringify(r.hosts)}`);
  t.deepEqual(r.kill_log, [], 'no recovery was measured');
  // Nothing left behind: no coordinator or host of the run, and no server on its port.
  t.deepEqual(processesNaming(r.run), []);
  t.false(await listening(r.nats_url), `nothing listens on ${r.nats_url}`);
});

test('--faults and --kills are one setting: both given and different is refused by name', async (t) => {
  const out = await caravan(['chaos', '--faults', '3', '--kills', '4']);
  t.not(out.code, 0);
  t.regex(out.stderr, /--faults 3 and --kills 4 disagree/);
});
