// Every decoder and parser that takes input from outside the process, fed
// generated and mutated inputs (fast-check): frame envelopes with every codec
// chain, the codec streams alone, Bridge payloads, checkpoints (the
// safetensors reader and the engine's own loader), token shards, run
// configs (text and values), signature headers, registrations, slot records,
// and every control message and run record (schemas/control-messages.ts,
// schemas/run-records.ts). Each input must give either a result that keeps
// the decoder's promises or an Error that names what is wrong: never a crash,
// a hang, a TypeError from deep inside, or an error without a message.
//
// CI runs CARAVAN_FUZZ_RUNS (default 1500) inputs per target, and a fifth of
// that for each of the 16 control message decoders twice (valid messages,
// then hostile ones): 28,100 in all; `CARAVAN_FUZZ_RUNS=10000 npx ava
// test/fuzz` runs 187,334, and CARAVAN_FUZZ_SEED picks other inputs.
import { isDeepStrictEqual } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { EngineStage, encodeSafeTensors, decodeSafeTensors } from '../../native/index.ts';
import { decodeParams, encodeParams } from '../../runtime/bridge/bridge-payload.ts';
import { FRAME_CODECS, lz4Codec, lz4Decode, lz4Encode, mxint8Codec, mxint8Decode, mxint8Encode } from '../../runtime/codecs/index.ts';
import { parseConfigText } from '../../runtime/config/load-run-config.ts';
import { parseTokenShard, serializeTokenShard } from '../../runtime/data/token-shard.ts';
import { newHostKey } from '../../runtime/security/host-key.ts';
import { parseSignatureHeader, signatureHeader } from '../../runtime/security/message-signature.ts';
import { checkRegistration, registrationProof } from '../../runtime/security/registration.ts';
import { preset } from '../../runtime/config/presets.ts';
import { decodeSlot } from '../../runtime/transport/slots.ts';
import {
  decodeFaultReached, decodeFaultReply, decodeFaultRequest, decodeHostAnnouncement, decodeProgress, decodeRegistration, decodeRegistrationReply,
  decodeRunFailure, decodeStageReport, decodeStepControl, FAULT_POINTS, type CheckpointPointer, type StageCounters,
} from '../../schemas/control-messages.ts';
import { ControlMessageError, encodeJson } from '../../schemas/json-message.ts';
import {
  decodeBridgeRecord, decodeCoordinatorRecord, decodeCounterRecord, decodeHostEntry, decodeRunState, decodeRunSummary, decodeSlotRecord, type BridgeRecord, type SlotRecord,
} from '../../schemas/run-records.ts';
import * as arbitrary from '../support/control-message-arbitraries.ts';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { decodeFrame, encodeFrame, FrameError, type FrameCodec } from '../../schemas/tensor-frame.ts';

const RUNS = Number(process.env.CARAVAN_FUZZ_RUNS ?? 1500);
const SLOW_MS = 2000;  // no single input may take this long: a decoder that loops on a hostile length is a hang
const params = { numRuns: RUNS, seed: Number(process.env.CARAVAN_FUZZ_SEED ?? 20261126) };

/** Errors a decoder may not throw at outside input: they mean it read past what it checked. */
const UNCLEAR = /Cannot read|Cannot set|of undefined|of null|is not a function|is not iterable|outside the bounds|Invalid typed array length|Maximum call stack|out of range index|Array buffer allocation failed|Invalid array length/;

type Outcome = 'accepted' | 'refused';

/**
 * Runs one decoder on one input: returns whether it took the input (and its
 * result kept `check`'s promises) or refused it clearly (and the error kept
 * `refusal`'s: its class, the field it names).
 */
function expectClear(what: string, f: () => unknown, check?: (result: unknown) => void, refusal?: (err: Error) => void): Outcome {
  const started = performance.now();
  let result: unknown;
  try {
    result = f();
  } catch (err) {
    if (!(err instanceof Error)) throw new Error(`${what}: threw a non-Error: ${String(err)}`);
    if (err instanceof TypeError || UNCLEAR.test(err.message)) throw new Error(`${what}: an error that names nothing: ${err.name}: ${err.message}`);
    if (err.message.length < 16) throw new Error(`${what}: an error too short to say what is wrong: '${err.message}'`);
    refusal?.(err);
    return 'refused';
  } finally {
    const ms = performance.now() - started;
    if (ms > SLOW_MS) throw new Error(`${what}: took ${ms.toFixed(0)} ms on one input`);
  }
  check?.(result);
  return 'accepted';
}

/** How often each target took and refused its inputs: a target must meet both, or its generators never reached one side. */
class Tally {
  private readonly counts = new Map<string, Record<Outcome, number>>();
  add(what: string, outcome: Outcome): void {
    const c = this.counts.get(what) ?? { accepted: 0, refused: 0 };
    c[outcome]++;
    this.counts.set(what, c);
  }
  assertBothSides(t: ExecutionContext): void {
    for (const [what, c] of this.counts) t.true(c.accepted > 0 && c.refused > 0, `${what}: ${c.accepted} accepted, ${c.refused} refused`);
  }
}

/** A valid input, then byte flips, truncation, extension, splices and overwritten runs. */
function mutated(valid: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  const edit = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('extend' as const), bytes: fc.uint8Array({ maxLength: 64 }) }),
    fc.record({ kind: fc.constant('splice' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
    fc.record({ kind: fc.constant('fill' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 64 }), value: fc.constantFrom(0, 0xff, 0x7f, 0x80) }),
  );
  return fc.tuple(valid, fc.array(edit, { minLength: 1, maxLength: 4 })).map(([bytes, edits]) => {
    let b = Uint8Array.from(bytes);
    for (const e of edits) {
      if (b.length === 0 && e.kind !== 'extend') continue;
      if (e.kind === 'flip') b[e.at % b.length] = e.value;
      else if (e.kind === 'truncate') b = b.slice(0, e.at % b.length);
      else if (e.kind === 'extend') b = Uint8Array.from([...b, ...e.bytes]);
      else if (e.kind === 'splice') { const at = e.at % b.length; b = Uint8Array.from([...b.subarray(0, at), ...e.bytes, ...b.subarray(at)]); }
      else { const at = e.at % b.length; b.fill(e.value, at, Math.min(b.length, at + e.length)); }
    }
    return b;
  });
}

const anyBytes = fc.uint8Array({ maxLength: 512 });
// Tensors a model could send: finite, within ±1e30. (MX int8 cannot carry values within 2^-6 of float32's largest: their
// block decodes to ±Inf, which the decoder refuses; hostile extremes still come from the random and mutated bytes.)
const floats = (n: number) => fc.float32Array({ minLength: n, maxLength: n, min: Math.fround(-1e30), max: Math.fround(1e30), noNaN: true, noDefaultInfinity: true });

// Frames: [B, T, d] of a few shapes, through each codec chain a boundary can use.
const CHAINS: ReadonlyArray<readonly FrameCodec[]> = [[], [lz4Codec], [mxint8Codec], [mxint8Codec, lz4Codec]];
const frameCase = fc.record({ B: fc.integer({ min: 1, max: 3 }), T: fc.integer({ min: 1, max: 8 }), d: fc.constantFrom(4, 32, 40), chain: fc.nat(CHAINS.length - 1), step: fc.nat(1000), mb: fc.nat(7) })
  .chain((c) => floats(c.B * c.T * c.d).map((data) => ({ ...c, data })));
const validFrame = frameCase.map((c) => encodeFrame({ run: 'fuzz', replica: 0, stage: 1, step: c.step, microbatch: c.mb, kind: 'act', shape: [c.B, c.T, c.d], data: c.data }, CHAINS[c.chain]));

test('frame envelopes: every input decodes to a frame that meets the expectation, or is a FrameError naming its fault', (t) => {
  const faults = new Set(['malformed', 'version', 'run', 'route', 'shape', 'checksum', 'codec']);
  const seen = new Set<string>();
  for (const width of [4, 32, 40]) {
    const expect = { run: 'fuzz', replica: 0, stage: 1, kind: 'act' as const, width, maxSeqLen: 8, codecs: FRAME_CODECS };
    fc.assert(fc.property(fc.oneof(anyBytes, validFrame, mutated(validFrame)), (bytes) => {
      try {
        const frame = decodeFrame(bytes, expect);
        if (frame.shape[2] !== width || frame.data.length !== frame.shape[0] * frame.shape[1] * frame.shape[2]) throw new Error(`decoded a frame of shape [${frame.shape}] for width ${width} with ${frame.data.length} values`);
        seen.add('ok');
      } catch (err) {
        if (!(err instanceof FrameError) || !faults.has(err.fault)) throw new Error(`not a FrameError with a known fault: ${(err as Error).name}: ${(err as Error).message}`);
        expectClear('decodeFrame', () => { throw err; });
        seen.add(err.fault);
      }
    }), params);
  }
  t.true(seen.has('ok') && seen.has('malformed') && seen.has('checksum'), `valid, malformed and corrupted inputs were all generated (${[...seen]})`);
});

test('codec streams alone: lz4 and mxint8 decode to exactly the length asked for, or refuse', (t) => {
  const tally = new Tally();
  // A valid stream with the length it decodes to, or anything with any length.
  const lz4Valid = fc.uint8Array({ maxLength: 2048 }).map((b) => Uint8Array.from([...b, ...new Uint8Array(256)])).map((raw) => ({ bytes: lz4Encode(raw, 1)!, n: raw.length }));
  const lz4Input = fc.oneof(lz4Valid, fc.tuple(fc.oneof(anyBytes, mutated(lz4Valid.map((v) => v.bytes))), fc.integer({ min: 0, max: 1 << 16 })).map(([bytes, n]) => ({ bytes, n })));
  fc.assert(fc.property(lz4Input, ({ bytes, n }) => {
    tally.add('lz4Decode', expectClear('lz4Decode', () => lz4Decode(bytes, n), (out) => { if ((out as Uint8Array).length !== n) throw new Error(`lz4Decode returned ${(out as Uint8Array).length} bytes for ${n}`); }));
  }), params);
  const mxValid = floats(64).map((x) => mxint8Encode(x, 32));
  fc.assert(fc.property(fc.oneof(mxValid, anyBytes, mutated(mxValid)), fc.constantFrom(32, 64, 96), fc.constantFrom(32, 16), (bytes, n, width) => {
    tally.add('mxint8Decode', expectClear('mxint8Decode', () => mxint8Decode(bytes, n, width), (out) => {
      const x = out as Float32Array;
      if (x.length !== n || !x.every(Number.isFinite)) throw new Error(`mxint8Decode returned ${x.length} values (asked ${n}), or non-finite ones`);
    }));
  }), params);
  tally.assertBothSides(t);
});

test('Bridge payloads: decoded to the stage\'s length, or refused naming the payload', (t) => {
  const valid = fc.tuple(floats(70), fc.constantFrom('fp32' as const, 'mxint8' as const, 'topk' as const)).map(([x, kind]) => encodeParams(x, kind, 0.1).bytes);
  const tally = new Tally();
  fc.assert(fc.property(fc.oneof(valid, anyBytes, mutated(valid)), (bytes) => {
    tally.add('decodeParams', expectClear('decodeParams', () => decodeParams(bytes, { length: 70 }, 'fuzzed payload'), (out) => {
      if ((out as { values: Float32Array }).values.length !== 70) throw new Error('decodeParams returned the wrong length');
    }));
  }), params);
  tally.assertBothSides(t);
});

test('checkpoints: the safetensors reader and the engine\'s loader take a state or refuse it, and a refused load leaves the engine as it was', (t) => {
  const model = { vocabSize: 16, dModel: 8, nLayers: 2, nHeads: 2, nKvHeads: 1, ffnHidden: 16, maxSeqLen: 8, ropeTheta: 10000, normEps: 1e-5, tiedEmbeddings: false };
  const optim = { lr: 1e-3, minLrRatio: 0.1, warmupSteps: 1, totalSteps: 10, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
  const engine = new EngineStage({ model, optim, layerBegin: 0, layerEnd: 1, seed: 1, threads: 1 });
  const state = engine.state();
  const other = new EngineStage({ model, optim, layerBegin: 0, layerEnd: 1, seed: 2, threads: 1 }).state();
  const before = engine.paramHash();
  const small = fc.array(fc.record({ name: fc.string({ minLength: 1, maxLength: 12 }), n: fc.integer({ min: 1, max: 6 }) }), { maxLength: 3 })
    .map((ts) => encodeSafeTensors(ts.map((x, i) => ({ name: `${x.name}${i}`, shape: [x.n], data: new Float32Array(x.n).fill(i) }))));
  const tally = new Tally();
  fc.assert(fc.property(fc.oneof(anyBytes, small, fc.constant(other), mutated(small), mutated(fc.constant(state)), mutated(fc.constant(other))), (bytes) => {
    tally.add('decodeSafeTensors', expectClear('decodeSafeTensors', () => decodeSafeTensors(bytes, 'fuzzed checkpoint')));
    tally.add('EngineStage.loadState', expectClear('EngineStage.loadState', () => engine.loadState(bytes, 'fuzzed checkpoint')));
    if (engine.paramHash() !== before) engine.loadState(state, 'the original state');  // a mutation that is still a valid state (a changed value)
  }), { ...params, numRuns: Math.ceil(RUNS / 3) });
  engine.loadState(state, 'the original state');
  t.is(engine.paramHash(), before);
  tally.assertBothSides(t);
});

test('token shards: parsed to tokens below the vocabulary, or refused naming the shard', (t) => {
  // llm.c shards with their header, and nanoGPT's headerless uint16 arrays.
  const tokens = fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 300 });
  const valid = fc.oneof(tokens.map((x) => serializeTokenShard(x)), tokens.map((x) => new Uint8Array(Uint16Array.from(x).buffer)));
  const tally = new Tally();
  fc.assert(fc.property(fc.oneof(anyBytes, valid, mutated(valid)), (bytes) => {
    tally.add('parseTokenShard', expectClear('parseTokenShard', () => parseTokenShard(bytes, 'fuzzed.bin', { vocabSize: 256 }), (out) => {
      const tokens = (out as { tokens: ArrayLike<number> }).tokens;
      for (let i = 0; i < tokens.length; i++) if (!(tokens[i] >= 0 && tokens[i] < 256)) throw new Error(`token ${tokens[i]} at ${i} is outside the vocabulary`);
    }));
  }), params);
  tally.assertBothSides(t);
});

test('run configs: text in YAML, JSON and TOML, and values in every field, are accepted valid or refused naming the field', (t) => {
  const base = preset('tiny');
  const field = fc.constantFrom(
    ...Object.keys(base.model).map((k) => ['model', k]), ...Object.keys(base.optim).map((k) => ['optim', k]), ...Object.keys(base.training).map((k) => ['training', k]),
  );
  const tally = new Tally();
  const value = fc.oneof(fc.jsonValue(), fc.double(), fc.integer({ min: -5, max: 1 << 20 }), fc.constant(undefined));
  fc.assert(fc.property(fc.array(fc.tuple(field, value), { minLength: 1, maxLength: 3 }), (edits) => {
    const config = JSON.parse(JSON.stringify(base)) as Record<string, Record<string, unknown>>;
    for (const [[section, key], v] of edits) config[section][key] = v;
    tally.add('validateRunConfig', expectClear('validateRunConfig', () => validateRunConfig(config)));
  }), params);
  const yamlish = fc.oneof(fc.string({ maxLength: 200 }), fc.jsonValue().map((v) => JSON.stringify(v)), fc.constant('training:\n  steps: [1, 2\n'), fc.constant('model: {dModel: 64}\nbogus: 1\n'), fc.constant('{"preset": "tiny", "training": {"steps": 3}}'));
  fc.assert(fc.property(yamlish, fc.constantFrom('run.yaml', 'run.json', 'run.toml'), (text, file) => {
    tally.add('parseConfigText', expectClear('parseConfigText', () => parseConfigText(text, file)));
  }), params);
  tally.assertBothSides(t);
});

test('signature headers, registrations and slot records from the wire: parsed or refused with a reason', (t) => {
  const key = newHostKey();
  const body = new Uint8Array([1, 2, 3]);
  const good = signatureHeader(key, 3, 'frame', 'caravan.r.act.0.1', body);
  const tally = new Tally();
  fc.assert(fc.property(fc.oneof(fc.string({ maxLength: 120 }), fc.constant(good), mutated(fc.constant(new TextEncoder().encode(good))).map((b) => new TextDecoder().decode(b))), (header) => {
    const parsed = parseSignatureHeader(header, 'frame', 'caravan.r.act.0.1', body);
    if (typeof parsed === 'string' ? parsed.length < 16 : !(parsed.generation >= 0 && parsed.signature.length === 64)) throw new Error(`parseSignatureHeader: ${JSON.stringify(parsed)}`);
    tally.add('parseSignatureHeader', typeof parsed === 'string' ? 'refused' : 'accepted');
  }), params);
  const proof = registrationProof(key, 'r', 'host-1');
  const registration = fc.record({ host: fc.oneof(fc.constant('host-1'), fc.string({ maxLength: 70 }), fc.jsonValue()), key: fc.oneof(fc.constant(key.publicKey), fc.string({ maxLength: 60 })), proof: fc.oneof(fc.constant(proof), fc.string({ maxLength: 90 }), fc.jsonValue()) }, { requiredKeys: [] });
  fc.assert(fc.property(registration, (r) => {
    const why = checkRegistration('r', r as Record<string, unknown>);
    if (why !== undefined && why.length < 16) throw new Error(`checkRegistration: an unclear reason: ${why}`);
    tally.add('checkRegistration', why === undefined ? 'accepted' : 'refused');
  }), params);
  const slot = encodeJson({ replica: 0, stage: 1, host: 'h', generation: 2, signers: [{ generation: 2, host: 'h', key: key.publicKey }] });
  fc.assert(fc.property(fc.oneof(fc.constant(slot), anyBytes, mutated(fc.constant(slot))), (bytes) => {
    tally.add('decodeSlot', expectClear('decodeSlot', () => decodeSlot(bytes, 'slot.0.1'), keeps('decodeSlot', slotPromises), namesField('slot record slot.0.1')));
  }), params);
  tally.assertBothSides(t);
});

// Control messages and run records. What an accepted message promises is
// checked here again, field by field, without the decoders' own readers.
const isCount = (v: unknown): boolean => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isReal = (v: unknown): boolean => typeof v === 'number' && Number.isFinite(v);
const isRealOrNull = (v: unknown): boolean => v === null || isReal(v);
const isText = (v: unknown): boolean => typeof v === 'string';
const isDigest = (v: unknown): boolean => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v);
const isFlag = (v: unknown): boolean => typeof v === 'boolean';
const absentOr = (test: (v: unknown) => boolean) => (v: unknown): boolean => v === undefined || test(v);
const every = (test: (v: unknown) => boolean) => (v: unknown): boolean => Array.isArray(v) && v.every(test);
const isIn = (values: readonly unknown[]) => (v: unknown): boolean => values.includes(v);
const isWire = (w: { frames: unknown; f32_bytes: unknown; wire_bytes: unknown }): boolean => isCount(w.frames) && isCount(w.f32_bytes) && isCount(w.wire_bytes);
const isRecoveries = (r: { hosts_lost: unknown; slots_reassigned: unknown; coordinator_restarts: unknown }): boolean =>
  isCount(r.hosts_lost) && isCount(r.slots_reassigned) && isCount(r.coordinator_restarts);
const isCheckpoint = (c: CheckpointPointer): boolean => isCount(c.step) && isText(c.object) && isCount(c.resume.control) && absentOr(isCount)(c.resume.act) && absentOr(isCount)(c.resume.grad) && absentOr(isText)(c.sha256)
  && absentOr(isDigest)(c.residual_sha256);
const areCounters = (c: StageCounters): boolean => isCount(c.queued) && isWire(c.sent_by_kind.act) && isWire(c.sent_by_kind.grad)
  && [c.compute.busy_ms, c.compute.first_ms, c.compute.last_ms, c.compute.peak_gflops].every(isReal) && isText(c.compute.device);
const isBridgeRecord = (r: BridgeRecord): boolean => [r.stage, r.outer, r.bytes_raw, r.bytes_wire].every(isCount) && every(isCount)(r.replicas)
  && (r.refused === undefined || every(isCount)(r.refused)) && isText(r.theta) && isDigest(r.theta_sha256) && absentOr(isText)(r.momentum)
  && absentOr(isDigest)(r.momentum_sha256) && isReal(r.first_ms) && isReal(r.finished_ms);
const slotPromises = (m: SlotRecord) => ({
  'replica, stage, generation': [m.replica, m.stage, m.generation].every(isCount),
  host: isText(m.host),
  checkpoint: m.checkpoint === undefined || isCheckpoint(m.checkpoint),
  signers: m.signers === undefined || m.signers.every((s) => isCount(s.generation) && isText(s.host) && isText(s.key)
    && (s.until === undefined || (absentOr(isCount)(s.until.act) && absentOr(isCount)(s.until.grad)))),
});

interface MessageTarget<T> {
  readonly decode: (bytes: Uint8Array, what?: string) => T;
  /** Messages as their producers write them. */
  readonly valid: fc.Arbitrary<unknown>;
  /** What an accepted message promises, by field: each must be true. */
  readonly promises: (m: T) => Record<string, boolean>;
}
const target = <T>(decode: (bytes: Uint8Array, what?: string) => T, valid: fc.Arbitrary<unknown>, promises: (m: T) => Record<string, boolean>): MessageTarget<unknown> =>
  ({ decode, valid, promises: promises as (m: unknown) => Record<string, boolean> });

const MESSAGE_TARGETS: Record<string, MessageTarget<unknown>> = {
  decodeStepControl: target(decodeStepControl, arbitrary.stepControl, (m) => ({
    type: isIn(['open', 'commit', 'rewind'])(m.type),
    step: isCount(m.step),
    'gradScale, gradNorm, loss, skip': m.type !== 'commit' || (isReal(m.gradScale) && isRealOrNull(m.gradNorm) && isRealOrNull(m.loss) && absentOr(isIn([true]))(m.skip)),
    'epoch, generations, resume, culprit': m.type !== 'rewind' || (m.step === 0 && isCount(m.epoch) && m.generations.every(isCount) && m.resume.every((r) => absentOr(isCount)(r.act) && absentOr(isCount)(r.grad))
      && isCount(m.culprit.stage) && isCount(m.culprit.step) && isText(m.culprit.host) && isCount(m.discarded_steps)),
  })),
  decodeStageReport: target(decodeStageReport, arbitrary.stageReport, (m) => ({
    type: isIn(['done', 'stepped', 'checkpoint', 'final', 'contribution', 'failed'])(m.type),
    'replica, stage, generation': [m.replica, m.stage, m.generation].every(isCount),
    host: isText(m.host),
    step: m.type === 'final' || m.type === 'failed' || isCount(m.step),
    done: m.type !== 'done' || (every(isRealOrNull)(m.sumSquares) && absentOr(isRealOrNull)(m.loss) && areCounters(m.counters)),
    stepped: m.type !== 'stepped' || every(isCount)(m.contributions),
    checkpoint: m.type !== 'checkpoint' || isCheckpoint(m.checkpoint),
    final: m.type !== 'final' || (isText(m.name) && isText(m.sha256) && areCounters(m.counters)),
    contribution: m.type !== 'contribution' || ([m.outer, m.bytes_raw, m.bytes_wire].every(isCount) && isText(m.object) && isDigest(m.sha256)),
    failed: m.type !== 'failed' || isText(m.reason),
  })),
  decodeRegistration: target(decodeRegistration, arbitrary.registration, (m) => ({
    'host, datacenter, key, proof': [m.host, m.datacenter, m.key, m.proof].every(isText),
    'device, gpu': [m.device, m.gpu].every(absentOr(isText)),
  })),
  decodeRegistrationReply: target(decodeRegistrationReply, arbitrary.registrationReply, (m) => ({ ok: isFlag(m.ok), 'run, reason': [m.run, m.reason].every(absentOr(isText)) })),
  decodeHostAnnouncement: target(decodeHostAnnouncement, arbitrary.hostAnnouncement, (m) => ({ host: isText(m.host) })),
  decodeRunFailure: target(decodeRunFailure, arbitrary.runFailure, (m) => ({ reason: isText(m.reason) })),
  decodeProgress: target(decodeProgress, arbitrary.progress, (m) => ({
    'replica, step, steps': [m.replica, m.step, m.steps].every(isCount),
    'loss, gradNorm': [m.loss, m.gradNorm].every(isRealOrNull),
    tokensPerSecond: isReal(m.tokensPerSecond),
  })),
  decodeFaultRequest: target(decodeFaultRequest, arbitrary.faultRequest, (m) => ({ point: isIn(FAULT_POINTS)(m.point), after: isCount(m.after) })),
  decodeFaultReply: target(decodeFaultReply, arbitrary.faultReply, (m) => ({ ok: isFlag(m.ok), error: absentOr(isText)(m.error) })),
  decodeFaultReached: target(decodeFaultReached, arbitrary.faultReached, (m) => ({ host: isText(m.host), pid: isCount(m.pid), point: isIn(FAULT_POINTS)(m.point) })),
  decodeRunState: target(decodeRunState, arbitrary.runState, (m) => ({
    status: isIn(['gathering', 'running', 'finishing', 'finished', 'failed'])(m.status),
    step: isCount(m.step),
    'loss, tokens_per_s, started_at': [m.loss, m.tokens_per_s, m.started_at].every(isRealOrNull),
    'updated, reason': isText(m.updated) && absentOr(isText)(m.reason),
    recoveries: m.recoveries === undefined || isRecoveries(m.recoveries),
    metrics: m.metrics === undefined || (isCount(m.metrics.step) && every(isCount)(m.metrics.queued_by_stage) && isRecoveries(m.metrics.recoveries)
      && m.metrics.edges.every((e) => isText(e.edge) && isWire(e.act) && isWire(e.grad)) && every(isReal)(m.metrics.utilization_by_stage) && every(isText)(m.metrics.devices_by_stage)
      && [m.metrics.tokens_per_s, m.metrics.mfu_pct, m.metrics.bubble, m.metrics.bubble_bound].every(isReal)),
  })),
  decodeRunSummary: target(decodeRunSummary, arbitrary.runSummary, (m) => ({
    'steps, stages, replicas, dead_letters': [m.steps, m.stages, m.replicas, m.dead_letters].every(isCount),
    'losses, final_loss': every(isRealOrNull)(m.losses) && m.losses_by_replica.every(every(isRealOrNull)) && isRealOrNull(m.final_loss),
    'run, params': isText(m.run) && isText(m.params_sha256) && every(isText)(m.params_sha256_by_replica),
    wire: isWire(m.wire) && isReal(m.wire.ratio_vs_f32),
    'rates and fractions': [m.tokens_per_s, m.wall_seconds, m.bubble, m.bubble_bound, m.mfu_pct].every(isReal) && every(isReal)(m.utilization_by_stage),
    devices_by_stage: every(isText)(m.devices_by_stage),
    recoveries: isRecoveries(m.recoveries),
    skipped_steps: m.skipped_steps.every((s) => isCount(s.replica) && isCount(s.step)),
    'outer_steps, bridge_syncs': absentOr(isCount)(m.outer_steps) && (m.bridge_syncs === undefined || m.bridge_syncs.every(isBridgeRecord)),
  })),
  decodeHostEntry: target(decodeHostEntry, arbitrary.hostEntry, (m) => ({
    status: isIn(['joined', 'standby', 'assigned', 'lost'])(m.status),
    'host, datacenter, joined': [m.host, m.datacenter, m.joined].every(isText),
    'key, replica, stage': absentOr(isText)(m.key) && [m.replica, m.stage].every(absentOr(isCount)),
    layers: m.layers === undefined || (m.layers.length === 2 && m.layers.every(isCount)),
    slot: m.slot === undefined || m.slot === null || (isCount(m.slot.replica) && isCount(m.slot.stage)),
  })),
  decodeSlotRecord: target(decodeSlotRecord, arbitrary.slotRecord, slotPromises),
  decodeBridgeRecord: target(decodeBridgeRecord, arbitrary.bridgeRecord, (m) => ({ record: isBridgeRecord(m) })),
  decodeCounterRecord: target(decodeCounterRecord, arbitrary.counterRecord, (m) => ({ value: isCount(m.value) })),
  decodeCoordinatorRecord: target(decodeCoordinatorRecord, arbitrary.coordinatorRecord, (m) => ({ keys: m.keys.every(isText) })),
};

/** Throws unless every promise holds of an accepted message (a promise that cannot even be evaluated is broken too). */
function keeps<T>(what: string, promises: (m: T) => Record<string, boolean>) {
  return (m: unknown): void => {
    let broken: string[];
    try {
      broken = Object.entries(promises(m as T)).filter(([, ok]) => !ok).map(([field]) => field);
    } catch (err) {
      broken = [`(checking threw ${(err as Error).message})`];
    }
    if (broken.length) throw new Error(`${what} accepted ${JSON.stringify(m).slice(0, 300)}, breaking its promise of ${broken.join('; ')}`);
  };
}

const FIELD_PATH = /^[A-Za-z_]\w*(\[\d+\]|\.[A-Za-z_]\w*)*$/;

/** A refusal must be a ControlMessageError of the message read, naming the field by its path (or the whole, when it is no JSON object). */
function namesField(what: string) {
  return (err: Error): void => {
    if (!(err instanceof ControlMessageError) || err.what !== what) throw new Error(`${what}: refused with something else than a ControlMessageError of what was read: ${err.name}: ${err.message}`);
    const named = err.field === ''
      ? /^[^:]+: (is not valid JSON|must be an object, got)/.test(err.message)
      : FIELD_PATH.test(err.field) && err.message.startsWith(`${what}: '${err.field}' `);
    if (!named) throw new Error(`${what}: a refusal that does not name its field clearly: field '${err.field}', ${err.message}`);
  };
}

const jsonImage = (value: unknown): unknown => JSON.parse(JSON.stringify(value));

type JsonPath = Array<string | number>;
function pathsOf(value: unknown, at: JsonPath = []): JsonPath[] {
  if (typeof value !== 'object' || value === null) return [];
  const entries: Array<[string | number, unknown]> = Array.isArray(value) ? value.map((x, i) => [i, x]) : Object.entries(value);
  return entries.flatMap(([key, child]) => [[...at, key], ...pathsOf(child, [...at, key])]);
}

/** A valid message with one field (at any depth, array elements too) dropped or replaced by another JSON value. */
function edited(valid: fc.Arbitrary<unknown>): fc.Arbitrary<Uint8Array> {
  const other = fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.constantFrom(-1, 0.5, 2 ** 53, '', '3', null, true, [], {}));
  return fc.tuple(valid, fc.nat(), fc.boolean(), other).map(([message, pick, drop, value]) => {
    const image = jsonImage(message);
    const paths = pathsOf(image);
    const path = paths[pick % paths.length];  // every message has a field
    const parent = path.slice(0, -1).reduce<unknown>((o, k) => (o as Record<string | number, unknown>)[k], image) as Record<string | number, unknown>;
    const key = path[path.length - 1];
    if (!drop) parent[key] = value;
    else if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete parent[key];
    return encodeJson(image);
  });
}

const messageParams = { ...params, numRuns: Math.ceil(RUNS / 5) };

for (const [name, { decode, valid, promises }] of Object.entries(MESSAGE_TARGETS)) {
  test(`${name}: messages as producers write them come back equal (unknown fields kept); hostile ones are refused naming the field`, (t) => {
    const what = `fuzzed ${name}`;
    const tally = new Tally();
    const promised = keeps(name, promises);
    fc.assert(fc.property(valid, fc.option(fc.jsonValue({ maxDepth: 2 }), { nil: undefined }), (message, later) => {
      const sent = jsonImage(later === undefined ? message : { ...(message as object), x_later_field: later });
      const decoded = decode(encodeJson(sent), what);
      if (!isDeepStrictEqual(decoded, sent)) throw new Error(`${name}: sent ${JSON.stringify(sent)}, decoded ${JSON.stringify(decoded)}`);
      promised(decoded);
      tally.add(name, 'accepted');
    }), messageParams);
    const hostile = fc.oneof(edited(valid), mutated(valid.map(encodeJson)), fc.jsonValue().map(encodeJson), anyBytes);
    fc.assert(fc.property(hostile, (bytes) => {
      tally.add(name, expectClear(name, () => decode(bytes, what), promised, namesField(what)));
    }), messageParams);
    tally.assertBothSides(t);
  });
}
