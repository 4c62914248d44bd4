// The control protocol's decoders: every message and run record, as its
// producer in runtime/ writes it, comes back from encodeJson equal; a message
// that is not what the protocol says is refused with a ControlMessageError
// naming the field by its path. Values that were not finite when sent arrive
// as null (JSON has no NaN), and unknown fields pass through unchecked.
import test, { type ExecutionContext } from 'ava';
import {
  ControlMessageError,
  decodeBridgeRecord,
  decodeCoordinatorRecord,
  decodeCounterRecord,
  decodeFaultReached,
  decodeFaultReply,
  decodeFaultRequest,
  decodeHostAnnouncement,
  decodeHostEntry,
  decodeProgress,
  decodeRegistration,
  decodeRegistrationReply,
  decodeRunFailure,
  decodeRunState,
  decodeRunSummary,
  decodeSlotRecord,
  decodeStageReport,
  decodeStepControl,
  encodeJson,
  type BridgeRecord,
  type LiveMetrics,
  type RunSummary,
  type StageCounters,
} from '../../schemas/index.ts';

type Decoder = (bytes: Uint8Array, what?: string) => unknown;

const text = (s: string) => new TextEncoder().encode(s);

const counters: StageCounters = {
  compute: { busy_ms: 1834.25, first_ms: 1764150000123.5, last_ms: 1764150004321, peak_gflops: 989000, device: 'NVIDIA H100 80GB HBM3' },
  sent_by_kind: { act: { frames: 24, f32_bytes: 3145728, wire_bytes: 806016 }, grad: { frames: 0, f32_bytes: 0, wire_bytes: 0 } },
  queued: 3,
};
const holder = { replica: 1, stage: 2, generation: 3, host: 'gpu-7' };
const recoveries = { hosts_lost: 1, slots_reassigned: 1, coordinator_restarts: 0 };
const metrics: LiveMetrics = {
  step: 41, tokens_per_s: 20480.5, mfu_pct: 31.7, utilization_by_stage: [0.81, 0.78], bubble: 0.205, bubble_bound: 0.2,
  devices_by_stage: ['cpu', 'NVIDIA H100 80GB HBM3'],
  edges: [{ edge: '0-1', act: { frames: 8, f32_bytes: 1048576, wire_bytes: 268672 }, grad: { frames: 8, f32_bytes: 1048576, wire_bytes: 1048800 } }],
  queued_by_stage: [0, 2], recoveries,
};
const sync: BridgeRecord = {
  stage: 0, outer: 2, replicas: [0, 1], theta: 'bridge.theta.0.2', theta_sha256: '0a'.repeat(32), momentum: 'bridge.momentum.0.2', momentum_sha256: '1b'.repeat(32), first_ms: 1764150001000, finished_ms: 1764150001450, bytes_raw: 560, bytes_wire: 152,
};
const summary: RunSummary = {
  run: 'r-1a2b', steps: 4, stages: 2, replicas: 2, losses: [5.54, 5.31, null, 4.98], final_loss: 4.98, tokens_per_s: 18000.25,
  params_sha256: 'ab'.repeat(32), params_sha256_by_replica: ['ab'.repeat(32), 'cd'.repeat(32)], losses_by_replica: [[5.54, 5.31, null, 4.98], [5.5, 5.3, 5.1, 4.9]],
  wall_seconds: 12.5, dead_letters: 0, wire: { frames: 96, f32_bytes: 12582912, wire_bytes: 3225600, ratio_vs_f32: 3.9 },
  utilization_by_stage: [0.8, 0.75], bubble: 0.225, bubble_bound: 0.2, devices_by_stage: ['cpu', 'cpu'], mfu_pct: 0.4, recoveries,
  skipped_steps: [{ replica: 0, step: 2 }], outer_steps: 2, bridge_syncs: [sync, { ...sync, stage: 1, theta: 'bridge.theta.1.2', momentum: undefined, momentum_sha256: undefined, replicas: [1], refused: [0] }].map((r) => JSON.parse(JSON.stringify(r))),
};

// Each decoder with messages its producers send (taken from what runtime/ writes).
const MESSAGES: ReadonlyArray<[string, Decoder, readonly unknown[]]> = [
  ['decodeStepControl', decodeStepControl, [
    { type: 'open', step: 0 },
    { type: 'commit', step: 7, gradScale: 0.25, gradNorm: 1.75, loss: 4.125 },
    { type: 'commit', step: 8, gradScale: 0, gradNorm: null, loss: null, skip: true },
  ]],
  ['decodeStageReport', decodeStageReport, [
    { type: 'done', ...holder, step: 7, sumSquares: [0.5, 12.25, 3], loss: 4.125, counters },
    { type: 'done', ...holder, stage: 0, step: 7, sumSquares: [0.5, null], counters },  // not the last stage: no loss
    { type: 'done', ...holder, step: 8, sumSquares: [null], loss: null, counters },
    { type: 'stepped', ...holder, step: 7, contributions: [0, 1, 2, 3] },
    { type: 'checkpoint', ...holder, step: 9, checkpoint: { step: 9, object: 'ckpt.1.2-4.9.g3', resume: { act: 181, grad: 90, control: 57 }, sha256: 'ef'.repeat(32) } },
    { type: 'checkpoint', ...holder, stage: 0, step: 9, checkpoint: { step: 9, object: 'ckpt.1.0-2.9.g3', resume: { grad: 90, control: 57 }, sha256: 'ef'.repeat(32) } },
    { type: 'checkpoint', ...holder, step: 9, checkpoint: { step: 9, object: 'ckpt.1.2-4.9.g3', resume: { act: 181, control: 57 }, sha256: 'ef'.repeat(32), residual_sha256: '2c'.repeat(32) } },
    { type: 'final', ...holder, name: 'final.1.2-4', sha256: 'ef'.repeat(32), counters },
    { type: 'contribution', ...holder, step: 9, outer: 2, object: 'bridge.contribution.2.2.1', bytes_raw: 560, bytes_wire: 152, sha256: '3d'.repeat(32) },
    { type: 'failed', ...holder, reason: 'replica 1 stage 2 (host gpu-7): out of memory' },
  ]],
  ['decodeRegistration', decodeRegistration, [
    { host: 'gpu-7', datacenter: 'eu-west', device: 'cuda', gpu: 'NVIDIA H100 80GB HBM3', key: 'U'.padEnd(56, 'A'), proof: 'p'.repeat(86) },
    { host: 'cpu-1', datacenter: 'default', device: 'cpu', key: 'U'.padEnd(56, 'B'), proof: 'q'.repeat(86) },
  ]],
  ['decodeRegistrationReply', decodeRegistrationReply, [{ ok: true, run: 'r-1a2b' }, { ok: false, reason: 'host id gpu-7 is registered with another key' }]],
  // A heartbeat carries more than the host; ready names the slot: both pass through.
  ['decodeHostAnnouncement', decodeHostAnnouncement, [{ host: 'gpu-7', datacenter: 'eu-west', deadLetters: 2 }, { host: 'gpu-7', replica: 1, stage: 2 }]],
  ['decodeRunFailure', decodeRunFailure, [{ reason: 'replica 1 stage 2 (host gpu-7): out of memory' }]],
  ['decodeProgress', decodeProgress, [
    { replica: 0, step: 7, loss: 4.125, gradNorm: 1.75, tokensPerSecond: 20480.5, steps: 100 },
    { replica: 0, step: 8, loss: null, gradNorm: null, tokensPerSecond: 20000, steps: 100 },
  ]],
  ['decodeFaultRequest', decodeFaultRequest, [{ point: 'forward', after: 1 }, { point: 'checkpoint', after: 3 }]],
  ['decodeFaultReply', decodeFaultReply, [{ ok: true }, { ok: false, error: 'unknown fault point "sideways" or count 1' }]],
  ['decodeFaultReached', decodeFaultReached, [{ host: 'gpu-7', pid: 41233, point: 'publish' }]],
  ['decodeRunState', decodeRunState, [
    { status: 'gathering', step: 0, loss: null, tokens_per_s: null, started_at: null, updated: '2025-11-26T10:00:00.000Z', recoveries: { hosts_lost: 0, slots_reassigned: 0, coordinator_restarts: 0 } },
    { status: 'running', step: 42, loss: 4.1, tokens_per_s: 20480.5, started_at: 1764150000000, updated: '2025-11-26T10:01:00.000Z', recoveries, metrics },
    { status: 'failed', step: 3, loss: null, tokens_per_s: 900, started_at: 1764150000000, reason: 'replica 0 step 3: the gradient norm is NaN', updated: '2025-11-26T10:02:00.000Z', recoveries },
  ]],
  ['decodeRunSummary', decodeRunSummary, [summary, (({ outer_steps: _o, bridge_syncs: _b, ...rest }) => rest)(summary)]],
  ['decodeHostEntry', decodeHostEntry, [
    { host: 'gpu-7', datacenter: 'eu-west', status: 'joined', joined: '2025-11-26T10:00:00.000Z', key: 'U'.padEnd(56, 'A') },
    { host: 'gpu-7', datacenter: 'eu-west', status: 'assigned', joined: '2025-11-26T10:00:00.000Z', key: 'U'.padEnd(56, 'A'), replica: 1, stage: 2, layers: [4, 6] },
    { host: 'gpu-8', datacenter: 'eu-west', status: 'lost', joined: '2025-11-26T10:00:00.000Z', slot: { replica: 1, stage: 2 } },
    { host: 'gpu-9', datacenter: 'us-east', status: 'lost', joined: '2025-11-26T10:00:00.000Z', slot: null },
    { host: 'gpu-9', datacenter: 'us-east', status: 'standby', joined: '2025-11-26T10:00:00.000Z' },
  ]],
  ['decodeSlotRecord', decodeSlotRecord, [
    { replica: 1, stage: 2, host: 'gpu-7', generation: 1, signers: [{ generation: 1, host: 'gpu-7', key: 'U'.padEnd(56, 'A') }] },
    {
      replica: 1, stage: 2, host: 'gpu-9', generation: 2,
      checkpoint: { step: 9, object: 'ckpt.1.2-4.9.g1', resume: { act: 181, grad: 90, control: 57 }, sha256: 'ef'.repeat(32) },
      signers: [{ generation: 1, host: 'gpu-7', key: 'U'.padEnd(56, 'A'), until: { act: 200, grad: 97 } }, { generation: 2, host: 'gpu-9', key: 'U'.padEnd(56, 'C') }],
    },
  ]],
  ['decodeBridgeRecord', decodeBridgeRecord, [sync, (({ momentum: _m, momentum_sha256: _s, ...rest }) => rest)(sync), { ...sync, replicas: [1], refused: [0] }]],
  ['decodeCounterRecord', decodeCounterRecord, [{ value: 0 }, { value: 12 }]],
  ['decodeCoordinatorRecord', decodeCoordinatorRecord, [{ keys: ['U'.padEnd(56, 'A')] }, { keys: ['U'.padEnd(56, 'A'), 'U'.padEnd(56, 'B')] }]],
];

test('every message and record its producer writes comes back equal', (t) => {
  for (const [name, decode, messages] of MESSAGES) {
    for (const message of messages) t.deepEqual(decode(encodeJson(message)), message, `${name}: ${JSON.stringify(message)}`);
  }
  t.is(MESSAGES.length, 17, 'every decoder is here');
});

test('a value that was not finite when sent (NaN, ±Infinity) arrives as null, where the protocol allows it', (t) => {
  t.deepEqual(decodeStepControl(encodeJson({ type: 'commit', step: 8, gradScale: 0, gradNorm: Infinity, loss: NaN, skip: true })),
    { type: 'commit', step: 8, gradScale: 0, gradNorm: null, loss: null, skip: true });
  t.like(decodeStageReport(encodeJson({ type: 'done', ...holder, step: 8, sumSquares: [1, NaN, -Infinity], loss: NaN, counters })), { sumSquares: [1, null, null], loss: null });
  t.like(decodeProgress(encodeJson({ replica: 0, step: 8, loss: NaN, gradNorm: NaN, tokensPerSecond: 1, steps: 9 })), { loss: null, gradNorm: null });
  t.like(decodeRunSummary(encodeJson({ ...summary, losses: [1, NaN], final_loss: NaN, losses_by_replica: [[1, NaN]] })), { losses: [1, null], final_loss: null, losses_by_replica: [[1, null]] });
  t.like(decodeRunState(encodeJson({ status: 'running', step: 1, loss: NaN, tokens_per_s: 3, started_at: 1, updated: 'now' })), { loss: null });
});

test('unknown fields are kept as they are, unchecked (a newer peer may add some)', (t) => {
  const newer = { type: 'open', step: 3, reason: 'a field of a later version', nested: { any: ['thing', 1] } };
  t.deepEqual(decodeStepControl(encodeJson(newer)), newer);
  const record = { value: 4, writer: 'bridge' };
  t.deepEqual(decodeCounterRecord(encodeJson(record)), record);
});

function refuses(t: ExecutionContext, decode: Decoder, bytes: Uint8Array | object, what: string, field: string, detail: RegExp): void {
  const error = t.throws(() => decode(bytes instanceof Uint8Array ? bytes : encodeJson(bytes), what), { instanceOf: ControlMessageError });
  if (!error) return;
  const e = error as ControlMessageError;
  t.is(e.what, what);
  t.is(e.field, field, e.message);
  t.true(e.message.startsWith(field ? `${what}: '${field}' ` : `${what}: `), e.message);
  t.regex(e.message, detail);
}

test('bytes that are not one JSON object are refused as a whole', (t) => {
  const open = encodeJson({ type: 'open', step: 3 });
  refuses(t, decodeStepControl, open.subarray(0, open.length - 4), 'step control', '', /is not valid JSON/);
  refuses(t, decodeStepControl, text(''), 'step control', '', /is not valid JSON/);
  refuses(t, decodeStepControl, text('[{"type":"open","step":3}]'), 'step control', '', /must be an object, got \[\{"type":"open","step":3\}\]$/);
  refuses(t, decodeRunState, text('null'), 'KV state', '', /must be an object, got null$/);
});

test('a field that is missing, of the wrong type or out of range is refused by its name', (t) => {
  const open = { type: 'open', step: 3 };
  refuses(t, decodeStepControl, { type: 'open' }, 'step control', 'step', /'step' is missing$/);
  refuses(t, decodeStepControl, { ...open, step: -1 }, 'step control', 'step', /must be a non-negative integer, got -1$/);
  refuses(t, decodeStepControl, { ...open, step: 2.5 }, 'step control', 'step', /got 2\.5$/);
  refuses(t, decodeStepControl, { ...open, step: 2 ** 53 }, 'step control', 'step', /got 9007199254740992$/);
  refuses(t, decodeStepControl, { ...open, step: '3' }, 'step control', 'step', /got "3"$/);
  refuses(t, decodeStepControl, text('{"type":"open","step":1e999}'), 'step control', 'step', /got Infinity$/);
  refuses(t, decodeStepControl, { type: 'close', step: 3 }, 'step control', 'type', /must be one of "open", "commit", "rewind", got "close"$/);
  refuses(t, decodeStepControl, { step: 3 }, 'step control', 'type', /'type' is missing$/);
  // Fields of the kind the type names: a commit needs its scale; its loss may be null, not text.
  refuses(t, decodeStepControl, { type: 'commit', step: 3, gradNorm: 1, loss: 1 }, 'step control', 'gradScale', /is missing$/);
  refuses(t, decodeStepControl, { type: 'commit', step: 3, gradScale: null, gradNorm: 1, loss: 1 }, 'step control', 'gradScale', /must be a finite number, got null$/);
  refuses(t, decodeStepControl, { type: 'commit', step: 3, gradScale: 1, gradNorm: 1, loss: 'NaN' }, 'step control', 'loss', /must be a finite number or null, got "NaN"$/);
  refuses(t, decodeStepControl, { type: 'commit', step: 3, gradScale: 1, gradNorm: 1, loss: 1, skip: false }, 'step control', 'skip', /must be true, got false$/);
  refuses(t, decodeFaultRequest, { point: 'sideways', after: 1 }, 'fault request', 'point', /must be one of "forward", "backward", "publish", "checkpoint", "bridge-sync", got "sideways"$/);
  refuses(t, decodeRegistration, { host: 'h', datacenter: 'd', key: 'U', proof: 7 }, 'registration', 'proof', /must be a string, got 7$/);
  refuses(t, decodeRegistrationReply, { ok: 'yes' }, 'registration reply', 'ok', /must be true or false, got "yes"$/);
  refuses(t, decodeHostEntry, { host: 'h', datacenter: 'd', status: 'gone', joined: 'x' }, 'host record', 'status', /must be one of "joined", "standby", "assigned", "lost"/);
  refuses(t, decodeHostEntry, { host: 'h', datacenter: 'd', status: 'lost', joined: 'x', layers: [4] }, 'host record', 'layers', /must be an array of two, got \[4\]$/);
  refuses(t, decodeCounterRecord, { value: -2 }, 'KV bridge-outer.0', 'value', /non-negative integer/);
});

test('optional fields may be absent, but not null or wrong when present', (t) => {
  const reply = { ok: true, run: 'r' };
  t.deepEqual(decodeRegistrationReply(encodeJson({ ok: true })), { ok: true });
  refuses(t, decodeRegistrationReply, { ...reply, run: null }, 'registration reply', 'run', /must be a string, got null$/);
  refuses(t, decodeBridgeRecord, { ...sync, momentum: 3 }, 'bridge record', 'momentum', /must be a string, got 3$/);
  // Unless null is what the producer writes: a lost host's slot, when it held none.
  refuses(t, decodeHostEntry, { host: 'h', datacenter: 'd', status: 'lost', joined: 'x', slot: { replica: 0 } }, 'host record', 'slot.stage', /is missing$/);
});

test('the SHA-256 digests that vouch for Bridge objects are required where a reader checks them, and must be 64 lowercase hex digits', (t) => {
  const contribution = { type: 'contribution', ...holder, step: 9, outer: 2, object: 'bridge.contribution.2.2.1', bytes_raw: 560, bytes_wire: 152, sha256: '3d'.repeat(32) };
  t.is(decodeStageReport(encodeJson(contribution)).type, 'contribution');
  refuses(t, decodeStageReport, { ...contribution, sha256: undefined }, 'stage report', 'sha256', /'sha256' is missing$/);
  refuses(t, decodeStageReport, { ...contribution, sha256: '3D'.repeat(32) }, 'stage report', 'sha256', /must be a SHA-256 digest \(64 lowercase hex digits\), got "3D3D/);
  refuses(t, decodeStageReport, { ...contribution, sha256: '3d'.repeat(31) }, 'stage report', 'sha256', /must be a SHA-256 digest/);
  refuses(t, decodeStageReport, { ...contribution, sha256: 7 }, 'stage report', 'sha256', /must be a SHA-256 digest \(64 lowercase hex digits\), got 7$/);
  refuses(t, decodeBridgeRecord, { ...sync, theta_sha256: undefined }, 'bridge record', 'theta_sha256', /'theta_sha256' is missing$/);
  refuses(t, decodeBridgeRecord, { ...sync, theta_sha256: 'x'.repeat(64) }, 'bridge record', 'theta_sha256', /must be a SHA-256 digest/);
  refuses(t, decodeBridgeRecord, { ...sync, momentum_sha256: null }, 'bridge record', 'momentum_sha256', /must be a SHA-256 digest \(64 lowercase hex digits\), got null$/);
  refuses(t, decodeBridgeRecord, { ...sync, refused: [-1] }, 'bridge record', 'refused[0]', /must be a non-negative integer, got -1$/);
  const checkpoint = { step: 9, object: 'o', resume: { control: 5 }, sha256: 'ef'.repeat(32) };
  refuses(t, decodeStageReport, { type: 'checkpoint', ...holder, step: 9, checkpoint: { ...checkpoint, residual_sha256: 'ef' } }, 'stage report', 'checkpoint.residual_sha256', /must be a SHA-256 digest/);
});

test('nested fields are named by their path from the message', (t) => {
  const done = { type: 'done', ...holder, step: 7, sumSquares: [1], loss: 4, counters };
  refuses(t, decodeStageReport, { ...done, counters: { ...counters, compute: { ...counters.compute, busy_ms: '1834' } } }, 'stage report', 'counters.compute.busy_ms', /must be a finite number, got "1834"$/);
  refuses(t, decodeStageReport, { ...done, counters: { ...counters, sent_by_kind: { act: counters.sent_by_kind.act } } }, 'stage report', 'counters.sent_by_kind.grad', /is missing$/);
  refuses(t, decodeStageReport, { ...done, counters: { ...counters, sent_by_kind: { ...counters.sent_by_kind, grad: { frames: 1, f32_bytes: -4, wire_bytes: 0 } } } }, 'stage report', 'counters.sent_by_kind.grad.f32_bytes', /got -4$/);
  refuses(t, decodeStageReport, { ...done, sumSquares: [1, 'x'] }, 'stage report', 'sumSquares[1]', /must be a finite number or null, got "x"$/);
  refuses(t, decodeStageReport, { ...done, counters: 3 }, 'stage report', 'counters', /must be an object, got 3$/);
  refuses(t, decodeStageReport, { type: 'checkpoint', ...holder, step: 9, checkpoint: { step: 9, object: 'o', resume: { act: -1, control: 5 } } }, 'stage report', 'checkpoint.resume.act', /got -1$/);
  const signers = [0, 1, 2].map((generation) => ({ generation, host: 'h', key: 'U' }));
  refuses(t, decodeSlotRecord, { replica: 0, stage: 1, host: 'h', generation: 2, signers: signers.map((s, i) => (i === 2 ? { ...s, key: null } : s)) }, 'slot record slot.0.1', 'signers[2].key', /must be a string, got null$/);
  refuses(t, decodeSlotRecord, { replica: 0, stage: 1, host: 'h', generation: 2, signers: [{ ...signers[0], until: { act: 'x' } }] }, 'slot record', 'signers[0].until.act', /got "x"$/);
  refuses(t, decodeRunState, { status: 'running', step: 42, loss: 4.1, tokens_per_s: 1, started_at: 1, updated: 'u', metrics: { ...metrics, edges: [{ ...metrics.edges[0], grad: { frames: 8 } }] } }, 'run state', 'metrics.edges[0].grad.f32_bytes', /is missing$/);
  refuses(t, decodeRunState, { status: 'running', step: 42, loss: 4.1, tokens_per_s: 1, started_at: 1, updated: 'u', recoveries: { ...recoveries, hosts_lost: 0.5 } }, 'run state', 'recoveries.hosts_lost', /got 0\.5$/);
  refuses(t, decodeRunSummary, { ...summary, bridge_syncs: [sync, { ...sync, replicas: [0, -1] }] }, 'run summary', 'bridge_syncs[1].replicas[1]', /got -1$/);
  refuses(t, decodeRunSummary, { ...summary, losses_by_replica: [[1], [2, true]] }, 'run summary', 'losses_by_replica[1][1]', /must be a finite number or null, got true$/);
  refuses(t, decodeRunSummary, { ...summary, wire: { ...summary.wire, ratio_vs_f32: null } }, 'run summary', 'wire.ratio_vs_f32', /got null$/);
  refuses(t, decodeRunSummary, { ...summary, skipped_steps: [{ replica: 0 }] }, 'run summary', 'skipped_steps[0].step', /is missing$/);
});

test('a long value is cut short in the error', (t) => {
  const error = t.throws(() => decodeRunFailure(encodeJson({ reason: Array.from({ length: 500 }, (_, i) => i) })), { instanceOf: ControlMessageError });
  t.true(error!.message.length < 140, error!.message);
  t.regex(error!.message, /^run failure: 'reason' must be a string, got \[0,1,2,.*\.\.\.$/);
});
