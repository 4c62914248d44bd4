// One stage's combiner over an in-memory store (the Object Store and KV
// behind runtime/transport/bridge-store.ts): each contribution is checked
// against the SHA-256 its replica reported. One that differs is refused and
// named in the record when the quorum stands without it, and the result is
// then exactly the combination of the others; below the quorum the sync
// fails, naming the object. The record carries θ's and the momentum's
// digests, and a combiner that starts from a record (a restarted
// coordinator) refuses a θ whose bytes differ.
import test from 'ava';
import { encodeParams } from '../../runtime/bridge/bridge-payload.ts';
import { outerStep } from '../../runtime/bridge/outer-step.ts';
import { stageCombiner } from '../../runtime/bridge/stage-combiner.ts';
import { createLogger } from '../../runtime/log.ts';
import { sha256Hex } from '../../runtime/security/message-signature.ts';
import { loadRunConfig } from '../../runtime/config/load-run-config.ts';
import { EngineStage, splitLayers } from '../../native/index.ts';
import type { BridgeStore } from '../../runtime/transport/bridge-store.ts';
import type { BridgeRecord } from '../../schemas/run-records.ts';
import { mulberry32 } from '../support/random-weights.ts';

function memoryStore() {
  const objects = new Map<string, Uint8Array>();
  const records = new Map<string, BridgeRecord>();
  const contribution = (stage: number, outer: number, replica: number) => `bridge/stage-${stage}/outer-${outer}/replica-${replica}`;
  const store: BridgeStore = {
    readRecord: async (stage, outer) => records.get(`${stage}.${outer}`),
    createRecord: async (record) => {
      const theirs = records.get(`${record.stage}.${record.outer}`);
      if (theirs) return { record: theirs, created: false };
      records.set(`${record.stage}.${record.outer}`, record);
      return { record, created: true };
    },
    advanceOuter: async () => {},
    readOuter: async () => 0,
    readContribution: async (stage, outer, replica) => ({ name: contribution(stage, outer, replica), blob: objects.get(contribution(stage, outer, replica)) }),
    readObject: async (name) => objects.get(name),
    writeTheta: async (stage, outer, bytes) => { objects.set(`bridge/stage-${stage}/outer-${outer}/theta`, bytes); return `bridge/stage-${stage}/outer-${outer}/theta`; },
    writeMomentum: async (stage, outer, bytes) => { objects.set(`bridge/stage-${stage}/outer-${outer}/momentum`, bytes); return `bridge/stage-${stage}/outer-${outer}/momentum`; },
  };
  return { store, objects, records, contribution };
}

async function setup(replicas: number, quorum: number) {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 2, replicas, bridge: { syncEvery: 2, quorum, payload: 'fp32' } as never } } });
  const bridge = config.training.bridge!;
  const mem = memoryStore();
  const reported = new Map<string, string>();
  const make = () => stageCombiner({
    store: mem.store, config, bridge, log: createLogger('test', 'silent'), stage: 0,
    reported: (outer, replica) => reported.get(`${outer}.${replica}`),
  });
  const combiner = make();
  // Each replica's honest fp32 contribution to outer step 1, reported with its digest.
  const random = mulberry32(7);
  const thetas: Float32Array[] = [];
  const contribute = (length: number) => {
    for (let r = 0; r < replicas; r++) {
      const theta = Float32Array.from({ length }, () => random() - 0.5);
      const bytes = encodeParams(theta, 'fp32').bytes;
      mem.objects.set(mem.contribution(0, 1, r), bytes);
      reported.set(`1.${r}`, sha256Hex(bytes));
      thetas.push(theta);
    }
  };
  return { config, bridge, mem, combiner, make, thetas, contribute };
}

/** θ at outer step 0: the initial parameters of stage 0, as every replica (and the combiner) makes them. */
async function initialTheta(): Promise<Float32Array> {
  const config = await loadRunConfig({ preset: 'tiny', overrides: { training: { stages: 2 } } });
  const [begin, end] = splitLayers(config.model.nLayers, 2)[0];
  return new EngineStage({ model: config.model, optim: config.optim, layerBegin: begin, layerEnd: end, seed: config.training.seed, threads: 1 }).params().slice();
}

test('a contribution overwritten in the store is refused when the quorum stands without it: the record names it, and θ combines the others alone', async (t) => {
  const sync = await initialTheta();
  const length = sync.length;
  const { mem, combiner, contribute, thetas, bridge } = await setup(3, 2);
  contribute(length);
  const forged = mem.objects.get(mem.contribution(0, 1, 1))!.slice();
  forged[8] ^= 0x40;
  mem.objects.set(mem.contribution(0, 1, 1), forged);
  const record = await combiner.combine(1, [0, 1, 2], 1000);
  t.deepEqual(record.replicas, [0, 2]);
  t.deepEqual(record.refused, [1]);
  t.is(record.theta_sha256, sha256Hex(mem.objects.get(record.theta)!));
  t.is(record.momentum_sha256, sha256Hex(mem.objects.get(record.momentum!)!));
  // Exactly the outer step over replicas 0 and 2.
  const expected = outerStep({ sync, momentum: new Float32Array(length), contributions: [0, 2].map((r) => ({ replica: r, kind: 'fp32' as const, values: thetas[r] })), outer: bridge.outer, lr: bridge.outerLr, mu: bridge.outerMomentum });
  t.is(record.theta_sha256, sha256Hex(encodeParams(expected.theta, 'fp32').bytes));
});

test('below the quorum, a refused contribution fails the sync, naming the object', async (t) => {
  const length = (await initialTheta()).length;
  const { mem, combiner, contribute } = await setup(2, 2);
  contribute(length);
  mem.objects.set(mem.contribution(0, 1, 0), new Uint8Array([1, 2, 3]));
  await t.throwsAsync(combiner.combine(1, [0, 1], 1000), {
    message: /^contribution bridge\/stage-0\/outer-1\/replica-0 of replica 0 is not the one it reported \(sha256 [0-9a-f]{16}…, reported [0-9a-f]{16}…\): it was overwritten in the object store; without it 1 of the quorum of 2 remain$/,
  });
  t.is(mem.records.size, 0, 'nothing was stored');
});

test('a combiner that starts from a stored record (a restarted coordinator) refuses θ whose bytes are not the ones the record names', async (t) => {
  const length = (await initialTheta()).length;
  const { mem, combiner, make, contribute } = await setup(2, 2);
  contribute(length);
  const first = await combiner.combine(1, [0, 1], 1000);
  const theta = mem.objects.get(first.theta)!.slice();
  theta[0] ^= 0x01;
  mem.objects.set(first.theta, theta);
  await t.throwsAsync(make().combine(2, [0, 1], 2000), { message: /^bridge object bridge\/stage-0\/outer-1\/theta is not the one the record of outer step 1 names \(sha256 [0-9a-f]{16}…, recorded [0-9a-f]{16}…\): it was overwritten in the object store$/ });
});
