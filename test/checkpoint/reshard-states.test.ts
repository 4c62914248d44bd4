// Re-partitioning at a checkpoint: a run split 4 ways stops after step 3,
// its stage states are re-sharded by layer into 3 stages (2/1/1), and a run
// split that way goes on from them to step 8. Its weights must be bit for bit
// those of the run that never stopped, unsplit (the in-process reference),
// because the engine's results do not depend on the split. In process, through
// the CLI too (`caravan repartition`, then `caravan train --in-process
// --resume`), and over NATS (`--from-states`: the coordinator re-shards and
// the Replica actors start at step 3). States that are not of one moment, or
// of another model, and a split that does not cover the model, are refused
// by name. Live, a running run re-split where it stands (`caravan repartition
// --live`) goes on as its successor run to the same weights and losses, also
// when its coordinator is SIGKILLed while the successor trains and started
// again (it finds the run re-split, and carries on with the successor), and
// when the coordinator re-splits by itself for its holders' reported speeds
// (training.resplitGain), and with the Bridge: two replicas each go on from
// their own states, the Bridge from its outer parameters and momentum, to
// DiLoCo in one process's weights, re-split by an operator or for the
// slowest holder of each stage (its coordinator SIGKILLed while the
// successor trains). The live runs go one at a time: each is five
// processes on a 2-core machine.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { reshardStageStates } from '../../runtime/checkpoint/reshard-states.ts';
import { speedAwareLayers } from '../../runtime/config/speed-split.ts';
import { hostname } from 'node:os';
import { statesFromCheckpointDir, statesFromRun } from '../../runtime/export/run-stage-states.ts';
import { hashStageStates } from '../../runtime/coordinator/run-summary.ts';
import { trainLocal } from '../../runtime/train/train-local.ts';
import { trainDistributed } from '../../runtime/train/train-distributed.ts';
import { trainLocalBridge } from '../../runtime/train/train-local-bridge.ts';
import { createLogger } from '../../runtime/log.ts';
import type { RunConfig } from '../../schemas/run-config.ts';
import { caravan } from '../support/caravan-cli.ts';
import type { Resplit, RunSummary } from '../../schemas/run-records.ts';
import { startNatsServer } from '../../runtime/nats/nats-server.ts';
import { connectToRun } from '../../runtime/transport/connect.ts';
import { followRunEvents } from '../../runtime/transport/run-events.ts';
import { runNames } from '../../runtime/transport/subjects.ts';
import { isRunning, spawnCaravan, type CaravanChild } from '../../runtime/train/caravan-child.ts';

const STEPS = 8, STOP = 3;

async function config(training: Partial<RunConfig['training']>): Promise<RunConfig> {
  // optim.totalSteps is the whole run's: the part that stops early follows the same learning-rate schedule.
  return loadRunConfig({ preset: 'tiny', overrides: { training: { steps: STEPS, seqLen: 32, batchSize: 4, microbatches: 2, checkpointEvery: 0, ...training } as never, optim: { totalSteps: STEPS, warmupSteps: 2 } } });
}

const train = async (c: RunConfig, o: { checkpointDir?: string; resume?: boolean } = {}) => trainLocal({ ...c, valEvery: 0, valBatches: 1, ...o });

async function tempDir(t: import('ava').ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'caravan-reshard-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('4 stages to step 3, re-sharded into 2/1/1, then on to step 8: the unsplit reference\'s weights, bit for bit', async (t) => {
  const reference = await train(await config({ stages: 1 }));
  const before = await tempDir(t), after = await tempDir(t);
  await train(await config({ stages: 4, steps: STOP }), { checkpointDir: before });
  const states = reshardStageStates(await statesFromCheckpointDir(before), [[0, 2], [2, 3], [3, 4]]);
  t.deepEqual(states.map((s) => s.layers), [[0, 2], [2, 3], [3, 4]]);
  for (const s of states) await writeFile(join(after, `stage-${s.layers[0]}-${s.layers[1]}.safetensors`), s.bytes);
  const resumed = await train(await config({ stages: 3, stageLayers: [2, 1, 1] }), { checkpointDir: after, resume: true });
  t.is(resumed.losses.length, STEPS - STOP, 'the resumed run trained the steps after the checkpoint only');
  t.is(resumed.paramsSha256, reference.paramsSha256);
});

test('caravan repartition re-shards a checkpoint directory that caravan train --in-process --resume continues; bad input is refused by name', async (t) => {
  const before = await tempDir(t), after = await tempDir(t);
  const shape = ['--in-process', '--preset', 'tiny', '--seq', '32', '--batch', '4', '--microbatches', '2', '--val-every', '1000', '--checkpoint-every', '0'];
  // The whole run's schedule, stopped early: a config file gives optim.totalSteps.
  const file = join(before, 'run.json');
  await writeFile(file, JSON.stringify({ optim: { totalSteps: STEPS, warmupSteps: 2 } }));
  const first = await caravan(['train', ...shape, '--config', file, '--steps', String(STOP), '--stages', '4', '--checkpoint-dir', before]);
  t.is(first.code, 0, first.stderr.slice(-1500));

  const out = await caravan(['repartition', '--checkpoint-dir', before, '--stage-layers', '1,3', '--out', after, '--json']);
  t.is(out.code, 0, out.stderr.slice(-1500));
  const summary = JSON.parse(out.stdout.trim().split('\n').pop()!);
  t.deepEqual(summary.layers_by_stage, [1, 3]);
  t.is(summary.optimizer_step, STOP);
  t.is(summary.from_stages, 4);

  const resumed = await caravan(['train', ...shape, '--config', file, '--steps', String(STEPS), '--stage-layers', '1,3', '--stages', '2', '--checkpoint-dir', after, '--resume', '--json']);
  t.is(resumed.code, 0, resumed.stderr.slice(-1500));
  const reference = await train(await config({ stages: 1 }));
  t.is(JSON.parse(resumed.stdout.trim().split('\n').pop()!).params_sha256, reference.paramsSha256);

  const uneven = await caravan(['repartition', '--checkpoint-dir', before, '--stage-layers', '1,2', '--out', after]);
  t.not(uneven.code, 0);
  t.regex(uneven.stderr, /--stage-layers 1,2: positive layer counts that add up to the model's 4 layers are needed/);
  // States of two moments: one stage of the 4-way run replaced by the resumed run's state at step 8.
  const mixed = await tempDir(t);
  const blobs = await statesFromCheckpointDir(before);
  const later = (await statesFromCheckpointDir(after)).find((b) => b.source.endsWith('stage-0-1.safetensors'))!;
  for (const b of blobs) await writeFile(join(mixed, b.source.split('/').pop()!), b.source.endsWith('stage-0-1.safetensors') ? later.bytes : b.bytes);
  const refused = await caravan(['repartition', '--checkpoint-dir', mixed, '--stages', '2', '--out', after]);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /optimizer step 3, but .* is at step 8 \(states of one moment are needed\)|optimizer step 8, but .* is at step 3 \(states of one moment are needed\)/);
});

test('over NATS: a run started from the 4-stage states at step 3 (--from-states), split 2/1/1, ends with the unsplit reference\'s weights; states of another model are refused', async (t) => {
  const reference = await train(await config({ stages: 1 }));
  const before = await tempDir(t);
  await train(await config({ stages: 4, steps: STOP }), { checkpointDir: before });
  const log = createLogger('reshard-test', 'warn');
  const summary = await trainDistributed({ config: { ...(await config({ stages: 3, stageLayers: [2, 1, 1], checkpointEvery: 2 })) }, fromStates: before, log });
  t.is(summary.params_sha256, reference.paramsSha256);
  t.deepEqual(summary.losses.slice(0, STOP), [null, null, null], 'the steps before the states have no loss in this run');
  t.true(summary.losses.slice(STOP).every((l) => typeof l === 'number'));

  const wider = await config({ stages: 2 });
  const refused = await trainDistributed({ config: { ...wider, model: { ...wider.model, ffnHidden: 384 } }, fromStates: before, log }).then(() => undefined, (err: Error) => err);
  t.regex(refused?.message ?? '', /--from-states .*: model ffnHidden is 352 in the states, 384 in the run's config/);
});

test.serial('live: a running run split 4 ways, re-split 2/1/1 where it stands (caravan repartition --live), goes on as its successor to the unsplit reference\'s weights and losses', async (t) => {
  // Long enough that the commands (a process each, started while it trains) find it running.
  const steps = 40;
  const long = async (training: Partial<RunConfig['training']>) => {
    const c = await config({ steps, ...training });
    return { ...c, optim: { ...c.optim, totalSteps: steps } };
  };
  const reference = await train(await long({ stages: 1 }));
  let where: { url: string; run: string } | undefined;
  let asked: ReturnType<typeof caravan> | undefined;
  let refusedSame: ReturnType<typeof caravan> | undefined;
  let status = '';
  let exported = '';
  const summary = await trainDistributed({
    config: await long({ stages: 4, checkpointEvery: 2 }), log: createLogger('reshard-test', 'warn'),
    onReady: (info) => { where = info; },
    onProgress: (p) => {
      if (asked || p.step < 1) return;
      refusedSame = caravan(['repartition', '--live', '--nats', where!.url, '--run', where!.run, '--stage-layers', '1,1,1,1', '--json']);
      asked = refusedSame.then(() => caravan(['repartition', '--live', '--nats', where!.url, '--run', where!.run, '--stage-layers', '2,1,1', '--json']));
    },
    onFinished: async ({ url, run }) => {
      status = (await caravan(['status', '--nats', url, '--run', run])).stdout;
      exported = hashStageStates((await statesFromRun(url, run, 0)).blobs.map((b) => b.bytes));
    },
  });
  const answer = JSON.parse((await asked!).stdout) as { ok: boolean; step: number; run: string };
  t.true(answer.ok && answer.step >= 2 && answer.step < steps && answer.run === `${where!.run}-s2`, JSON.stringify(answer));
  t.regex((await refusedSame!).stdout, /"ok":false,"reason":"the run is split 1,1,1,1 already"/, 'a split the run has is refused');
  const [resplit] = summary.resplits ?? [];
  t.like(resplit, { from_run: where!.run, run: answer.run, step: answer.step, from_stage_layers: [1, 1, 1, 1], stage_layers: [2, 1, 1] } as Partial<Resplit>);
  t.is(summary.run, answer.run, 'the summary is the successor\'s');
  t.is(summary.stages, 3);
  t.is(summary.params_sha256, reference.paramsSha256, 'the weights of the run that never split');
  t.deepEqual(summary.losses, reference.losses, 'and its losses, step by step, before and after the re-split');
  t.regex(status, new RegExp(`re-split: 1/1/1/1 → 2/1/1 layers from step ${answer.step}, went on as run ${answer.run} `), 'caravan status of the first run names its successor');
  t.is(exported, reference.paramsSha256, 'the first run\'s final states, as export reads them, are its successor\'s');
});

test.serial('live, with the Bridge: 2 replicas split 2/2, re-split 3/1 at an outer step\'s end, each going on from its own states and the Bridge from its outer parameters and momentum: DiLoCo in one process\'s weights and losses', async (t) => {
  const steps = 24, H = 2;
  // Every sync waits for both replicas: DiLoCo in one process combines every member.
  const c = await config({ steps, stages: 2, replicas: 2, checkpointEvery: 2, bridge: { syncEvery: H, quorum: 2, timeoutMs: 600_000 } as never });
  const cfg = { ...c, optim: { ...c.optim, totalSteps: steps } };
  const reference = await trainLocalBridge(cfg);
  let where: { url: string; run: string } | undefined;
  let asked: ReturnType<typeof caravan> | undefined;
  let status = '';
  let heard = -1;
  const summary = await trainDistributed({
    config: cfg, log: createLogger('reshard-test', 'warn'),
    onReady: (info) => { where = info; },
    onProgress: (p) => {
      heard = Math.max(heard, p.step);
      if (!asked && p.step >= 1) asked = caravan(['repartition', '--live', '--nats', where!.url, '--run', where!.run, '--stage-layers', '3,1', '--json']);
    },
    onFinished: async ({ url, run }) => { status = (await caravan(['status', '--nats', url, '--run', run])).stdout; },
  });
  const answer = JSON.parse((await asked!).stdout) as { ok: boolean; step: number; run: string };
  t.true(answer.ok && answer.step % H === 0 && answer.step < steps, `the run ends on an outer step's last step: ${JSON.stringify(answer)}`);
  t.like(summary.resplits?.[0], { from_run: where!.run, run: answer.run, step: answer.step, from_stage_layers: [2, 2], stage_layers: [3, 1] } as Partial<Resplit>);
  t.deepEqual(summary.params_sha256_by_replica, reference.paramsSha256ByReplica, 'both replicas\' weights are those of the run that never split');
  t.deepEqual(summary.losses_by_replica, reference.losses, 'and their losses, step by step, before and after the re-split');
  const syncs = summary.bridge_syncs ?? [];
  t.deepEqual(syncs.map((s) => `${s.outer}.${s.stage}`).sort(), Array.from({ length: steps / H }, (_, i) => [`${i + 1}.0`, `${i + 1}.1`]).flat().sort(), 'every outer step\'s sync, each once: the run\'s to the re-split, its successor\'s after');
  t.is(summary.outer_steps, steps / H);
  t.true(syncs.every((s) => s.replicas.join() === '0,1'));
  t.regex(status, /re-split: 2\/2 → 3\/1 layers/);
  t.is(heard, steps - 1, 'the first run\'s progress subject (caravan train\'s lines) heard the successor\'s steps to the end');
});

/**
 * A run over a fresh nats-server with a coordinator and hosts as separate processes (`hostArgs`: each host's extra
 * flags), ended (children SIGKILLed, server stopped) with the test. `ended` settles with the first run's summary.
 */
async function liveRun(t: import('ava').ExecutionContext, cfg: RunConfig, run: string, hostArgs: string[][]) {
  const server = await startNatsServer();
  const dir = await tempDir(t);
  const children: CaravanChild[] = [];
  t.teardown(async () => {
    for (const child of children) if (isRunning(child)) child.process.kill('SIGKILL');
    await Promise.all(children.map((child) => child.exited));
    await server.stop();
  });
  const file = join(dir, 'run.json');
  await writeFile(file, JSON.stringify(cfg));
  const coordinator = () => {
    const child = spawnCaravan('coordinator', ['coordinator', '--nats', server.url, '--run', run, '--config', file, '--heartbeat-timeout', '15000']);
    children.push(child);
    return child;
  };
  const first = coordinator();
  const hosts = hostArgs.map((args, i) => spawnCaravan(`host ${i}`, ['host', '--nats', server.url, '--run', run, '--heartbeat', '1000', ...args]));
  children.push(...hosts);
  const nc = await connectToRun(server.url, `${run}-test`, run);
  t.teardown(() => nc.close());
  let settle!: (s: RunSummary | Error) => void;
  const ended = new Promise<RunSummary | Error>((r) => { settle = r; });
  return { url: server.url, nc, first, coordinator, hosts, ended, settle };
}

/** A 4-layer run of `steps` steps whose learning-rate schedule is the whole run's, and the unsplit in-process reference of it. */
async function longRun(steps: number, training: Partial<RunConfig['training']>) {
  const c = await config({ steps, ...training });
  const cfg = { ...c, optim: { ...c.optim, totalSteps: steps } };
  return { cfg, reference: await train({ ...cfg, training: { ...cfg.training, stages: 1, checkpointEvery: 0, stageLayers: undefined, resplitGain: undefined } }) };
}

test.serial('live: the coordinator SIGKILLed while the successor trains is started again and carries on with it, to the same weights and losses', async (t) => {
  const { cfg, reference } = await longRun(40, { stages: 4, checkpointEvery: 2 });
  const run = 'resplit-restart', successor = `${run}-s2`;
  const r = await liveRun(t, cfg, run, [[], [], [], []]);
  let first = r.first;
  let asked: ReturnType<typeof caravan> | undefined;
  let restarted = false;
  await followRunEvents(r.nc, runNames(run), {
    progress: (p) => { if (!asked && p.step >= 1) asked = caravan(['repartition', '--live', '--nats', r.url, '--run', run, '--stage-layers', '2,2', '--json']); },
    finished: (summary) => r.settle(summary),
    failed: (f) => r.settle(new Error(f.reason)),
  });
  // Once the successor has committed a step of its own, its coordinator dies; one started again as before takes over.
  const killed = new Promise<number>((resolve) => {
    void followRunEvents(r.nc, runNames(successor), {
      progress: (p) => {
        if (restarted) return;
        restarted = true;
        first.process.kill('SIGKILL');
        void first.exited.then(() => { first = r.coordinator(); resolve(p.step); });
      },
    });
  });
  const summary = await r.ended;
  if (summary instanceof Error) return t.fail(summary.message);
  const answer = JSON.parse((await asked!).stdout) as { ok: boolean; step: number; run: string };
  t.true(answer.ok && answer.run === successor, JSON.stringify(answer));
  t.true((await killed) >= answer.step, 'killed while the successor trained');
  t.like(summary.resplits?.[0], { from_run: run, run: successor, step: answer.step, stage_layers: [2, 2] } as Partial<Resplit>);
  t.true(summary.recoveries.coordinator_restarts >= 1, JSON.stringify(summary.recoveries));
  t.is(summary.params_sha256, reference.paramsSha256);
  t.deepEqual(summary.losses, reference.losses);
});

test.serial('by speed (training.resplitGain): holders reporting 1 and 4 TFLOP/s get the split their speeds call for, once, each keeping its stage, to the same weights and losses', async (t) => {
  const { cfg, reference } = await longRun(24, { stages: 2, checkpointEvery: 2, resplitGain: 1.2 });
  const run = 'resplit-speed';
  const speeds = [1, 4];
  const r = await liveRun(t, cfg, run, speeds.map((v) => ['--speed', String(v)]));
  const speedOf = new Map(r.hosts.map((h, i) => [`${hostname()}-${h.process.pid}`.replace(/[^A-Za-z0-9_-]/g, '-'), speeds[i]]));
  await followRunEvents(r.nc, runNames(run), { finished: (summary) => r.settle(summary), failed: (f) => r.settle(new Error(f.reason)) });
  const summary = await r.ended;
  if (summary instanceof Error) return t.fail(summary.message);
  t.is(summary.resplits?.length, 1, `one re-split: the successor's holders keep their stages, so its split is what their speeds call for (${JSON.stringify(summary.resplits)})`);
  const [resplit] = summary.resplits!;
  const bySpeed = resplit.hosts_by_slot!.map((h) => speedOf.get(h)!);
  t.deepEqual(bySpeed.slice().sort(), [1, 4], JSON.stringify(resplit.hosts_by_slot));
  t.deepEqual(resplit.from_stage_layers, [2, 2]);
  t.deepEqual(resplit.stage_layers, speedAwareLayers(cfg.model, cfg.training.seqLen, bySpeed), 'the split of the holders\' speeds, stage by stage');
  t.is(summary.params_sha256, reference.paramsSha256);
  t.deepEqual(summary.losses, reference.losses);
});

test.serial('by speed, with the Bridge: 2 replicas whose stages\' slowest holders report 1 and 4 TFLOP/s get the split those speeds call for, once, every holder keeping its slot, to DiLoCo in one process\'s weights, the coordinator SIGKILLed while the successor trains', async (t) => {
  const steps = 24, H = 2;
  const c = await config({ steps, stages: 2, replicas: 2, checkpointEvery: 2, bridge: { syncEvery: H, quorum: 2, timeoutMs: 600_000 } as never });
  const cfg = { ...c, optim: { ...c.optim, totalSteps: steps } };
  const reference = await trainLocalBridge(cfg);
  const run = 'resplit-bridge-speed';
  const speeds = [1, 4, 4, 4];
  const r = await liveRun(t, { ...cfg, training: { ...cfg.training, resplitGain: 1.2 } }, run, speeds.map((v) => ['--speed', String(v)]));
  const speedOf = new Map(r.hosts.map((h, i) => [`${hostname()}-${h.process.pid}`.replace(/[^A-Za-z0-9_-]/g, '-'), speeds[i]]));
  await followRunEvents(r.nc, runNames(run), { finished: (summary) => r.settle(summary), failed: (f) => r.settle(new Error(f.reason)) });
  // Once the successor has committed a step, its coordinator dies; one started again reads the hand-over anew.
  let first = r.first, restarted = false;
  await followRunEvents(r.nc, runNames(`${run}-s2`), {
    progress: () => {
      if (restarted) return;
      restarted = true;
      first.process.kill('SIGKILL');
      void first.exited.then(() => { first = r.coordinator(); });
    },
  });
  const summary = await r.ended;
  if (summary instanceof Error) return t.fail(summary.message);
  t.true(restarted && summary.recoveries.coordinator_restarts >= 1, 'the coordinator was SIGKILLed while the successor trained, and started again');
  t.is(summary.resplits?.length, 1, `one re-split: the successor's holders keep their slots (${JSON.stringify(summary.resplits)})`);
  const [resplit] = summary.resplits!;
  const bySlot = resplit.hosts_by_slot!.map((h) => speedOf.get(h)!);
  t.deepEqual(bySlot.slice().sort(), [1, 4, 4, 4], JSON.stringify(resplit.hosts_by_slot));
  const stageTflops = [0, 1].map((s) => Math.min(bySlot[s], bySlot[2 + s]));
  t.deepEqual(resplit.stage_layers, speedAwareLayers(cfg.model, cfg.training.seqLen, stageTflops), 'the split of each stage\'s slowest holder');
  t.is(resplit.step % H, 0, 'at an outer step\'s end');
  t.deepEqual(summary.params_sha256_by_replica, reference.paramsSha256ByReplica);
  t.deepEqual(summary.losses_by_replica, reference.losses);
});
