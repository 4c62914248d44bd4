// fast-check arbitraries of the control protocol's messages and run records
// as honest producers write them: counts anywhere in the safe integers,
// measurements any finite number, and NaN/±Infinity where a producer may
// send them (they go out as null). Used by test/fuzz/decoders.test.ts, which
// sends each through encodeJson and expects it back.
import fc from 'fast-check';
import { FAULT_POINTS } from '../../schemas/control-messages.ts';

const count = fc.oneof(fc.nat(64), fc.maxSafeNat());
const real = fc.double({ noNaN: true, noDefaultInfinity: true });
/** A loss or a norm: finite, or not (sent as null). */
const lossy = fc.oneof(real, fc.constantFrom(NaN, Infinity, -Infinity));
const name = fc.string({ maxLength: 24 });
/** A SHA-256 digest in lowercase hex, as hosts and the Bridge write them. */
const digest = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((b) => Buffer.from(b).toString('hex'));

const wireCount = fc.record({ frames: count, f32_bytes: count, wire_bytes: count });
const counters = fc.record({
  compute: fc.record({ busy_ms: real, first_ms: real, last_ms: real, peak_gflops: real, device: name }),
  sent_by_kind: fc.record({ act: wireCount, grad: wireCount }),
  queued: count,
});
const checkpoint = fc.record(
  { step: count, object: name, resume: fc.record({ act: count, grad: count, control: count }, { requiredKeys: ['control'] }), sha256: name, residual_sha256: digest },
  { requiredKeys: ['step', 'object', 'resume'] },
);
const recoveries = fc.record({ hosts_lost: count, slots_reassigned: count, coordinator_restarts: count });
const pipelineUse = { utilization_by_stage: fc.array(real, { maxLength: 4 }), bubble: real, bubble_bound: real };
const bridgeRecord = fc.record(
  {
    stage: count, outer: count, replicas: fc.array(count, { maxLength: 4 }), refused: fc.array(count, { maxLength: 4 }), theta: name, theta_sha256: digest,
    momentum: name, momentum_sha256: digest, first_ms: real, finished_ms: real, bytes_raw: count, bytes_wire: count,
  },
  { requiredKeys: ['stage', 'outer', 'replicas', 'theta', 'theta_sha256', 'first_ms', 'finished_ms', 'bytes_raw', 'bytes_wire'] },
);
const holder = { replica: count, stage: count, generation: count, host: name };

export const stepControl = fc.oneof(
  fc.record({ type: fc.constant('open'), step: count }),
  fc.record({ type: fc.constant('commit'), step: count, gradScale: real, gradNorm: lossy, loss: lossy, skip: fc.constant(true) }, { requiredKeys: ['type', 'step', 'gradScale', 'gradNorm', 'loss'] }),
  fc.record({
    type: fc.constant('rewind'), step: fc.constant(0), epoch: count, generations: fc.array(count, { maxLength: 6 }),
    resume: fc.array(fc.record({ act: count, grad: count }, { requiredKeys: [] }), { maxLength: 6 }),
    culprit: fc.record({ stage: count, step: count, host: fc.string() }), discarded_steps: count,
  }),
);

export const stageReport = fc.oneof(
  fc.record({ type: fc.constant('done'), ...holder, step: count, sumSquares: fc.array(lossy, { maxLength: 6 }), loss: lossy, counters },
    { requiredKeys: ['type', 'replica', 'stage', 'generation', 'host', 'step', 'sumSquares', 'counters'] }),
  fc.record({ type: fc.constant('stepped'), ...holder, step: count, contributions: fc.array(count, { maxLength: 6 }) }),
  fc.record({ type: fc.constant('checkpoint'), ...holder, step: count, checkpoint }),
  fc.record({ type: fc.constant('final'), ...holder, name, sha256: name, counters }),
  fc.record({ type: fc.constant('contribution'), ...holder, step: count, outer: count, object: name, bytes_raw: count, bytes_wire: count, sha256: digest }),
  fc.record({ type: fc.constant('failed'), ...holder, reason: name }),
);

export const registration = fc.record({ host: name, datacenter: name, device: name, gpu: name, key: name, proof: name }, { requiredKeys: ['host', 'datacenter', 'key', 'proof'] });
export const registrationReply = fc.record({ ok: fc.boolean(), run: name, reason: name }, { requiredKeys: ['ok'] });
export const hostAnnouncement = fc.record({ host: name, datacenter: name, deadLetters: count }, { requiredKeys: ['host'] });
export const runFailure = fc.record({ reason: name });
export const progress = fc.record({ replica: count, step: count, steps: count, loss: lossy, gradNorm: lossy, tokensPerSecond: real });
const faultPoint = fc.constantFrom(...FAULT_POINTS);
export const faultRequest = fc.record({ point: faultPoint, after: count });
export const faultReply = fc.record({ ok: fc.boolean(), error: name }, { requiredKeys: ['ok'] });
export const faultReached = fc.record({ host: name, pid: count, point: faultPoint });

const liveMetrics = fc.record({
  ...pipelineUse,
  step: count,
  tokens_per_s: real,
  mfu_pct: real,
  devices_by_stage: fc.array(name, { maxLength: 4 }),
  edges: fc.array(fc.record({ edge: name, act: wireCount, grad: wireCount }), { maxLength: 3 }),
  queued_by_stage: fc.array(count, { maxLength: 4 }),
  recoveries,
});
export const runState = fc.record({
  status: fc.constantFrom('gathering', 'running', 'finishing', 'finished', 'failed'),
  step: count,
  loss: fc.oneof(lossy, fc.constant(null)),
  tokens_per_s: fc.oneof(real, fc.constant(null)),
  started_at: fc.oneof(real, fc.constant(null)),
  reason: name,
  updated: name,
  recoveries,
  metrics: liveMetrics,
}, { requiredKeys: ['status', 'step', 'loss', 'tokens_per_s', 'started_at', 'updated'] });

const losses = fc.array(lossy, { maxLength: 8 });
export const runSummary = fc.record({
  run: name,
  steps: count,
  stages: count,
  replicas: count,
  losses,
  final_loss: lossy,
  tokens_per_s: real,
  params_sha256: name,
  params_sha256_by_replica: fc.array(name, { maxLength: 3 }),
  losses_by_replica: fc.array(losses, { maxLength: 3 }),
  wall_seconds: real,
  dead_letters: count,
  wire: fc.record({ frames: count, f32_bytes: count, wire_bytes: count, ratio_vs_f32: real }),
  ...pipelineUse,
  devices_by_stage: fc.array(name, { maxLength: 4 }),
  mfu_pct: real,
  recoveries,
  skipped_steps: fc.array(fc.record({ replica: count, step: count }), { maxLength: 3 }),
  outer_steps: count,
  bridge_syncs: fc.array(bridgeRecord, { maxLength: 3 }),
}, { requiredKeys: ['run', 'steps', 'stages', 'replicas', 'losses', 'final_loss', 'tokens_per_s', 'params_sha256', 'params_sha256_by_replica', 'losses_by_replica', 'wall_seconds', 'dead_letters', 'wire', 'utilization_by_stage', 'bubble', 'bubble_bound', 'devices_by_stage', 'mfu_pct', 'recoveries', 'skipped_steps'] });

export const hostEntry = fc.record({
  host: name,
  datacenter: name,
  status: fc.constantFrom('joined', 'standby', 'assigned', 'lost'),
  joined: name,
  key: name,
  replica: count,
  stage: count,
  layers: fc.tuple(count, count),
  slot: fc.option(fc.record({ replica: count, stage: count })),
}, { requiredKeys: ['host', 'datacenter', 'status', 'joined'] });

export const slotRecord = fc.record({
  replica: count,
  stage: count,
  host: name,
  generation: count,
  checkpoint,
  signers: fc.array(fc.record({ generation: count, host: name, key: name, until: fc.record({ act: count, grad: count }, { requiredKeys: [] }) }, { requiredKeys: ['generation', 'host', 'key'] }), { maxLength: 4 }),
}, { requiredKeys: ['replica', 'stage', 'host', 'generation'] });

export { bridgeRecord };
export const counterRecord = fc.record({ value: count });
export const coordinatorRecord = fc.record({ keys: fc.array(name, { maxLength: 4 }) });
