// Every decoder and parser that takes input from outside the process, fed
// generated and mutated inputs (fast-check): frame envelopes with every codec
// chain, the codec streams alone, Bridge payloads, checkpoints (the
// safetensors reader and the engine's own loader), token shards, run
// configs (text and values), signature headers, registrations, slot records.
// Each input must give either a result that keeps the decoder's promises or
// an Error that names what is wrong: never a crash, a hang, a TypeError from
// deep inside, or an error without a message.
//
// CI runs CARAVAN_FUZZ_RUNS (default 1500) inputs per target, 18,500 in all;
// `CARAVAN_FUZZ_RUNS=10000 npx ava test/fuzz` runs 123,334 (about 20 s), and
// CARAVAN_FUZZ_SEED picks other inputs.
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
import { encodeJson } from '../../schemas/json-message.ts';
import { validateRunConfig } from '../../schemas/run-config.ts';
import { decodeFrame, encodeFrame, FrameError, type FrameCodec } from '../../schemas/tensor-frame.ts';

const RUNS = Number(process.env.CARAVAN_FUZZ_RUNS ?? 1500);
const SLOW_MS = 2000;  // no single input may take this long: a decoder that loops on a hostile length is a hang
const params = { numRuns: RUNS, seed: Number(process.env.CARAVAN_FUZZ_SEED ?? 20261126) };

/** Errors a decoder may not throw at outside input: they mean it read past what it checked. */
const UNCLEAR = /Cannot read|Cannot set|of undefined|of null|is not a function|is not iterable|outside the bounds|Invalid typed array length|Maximum call stack|out of range index|Array buffer allocation failed|Invalid array length/;

type Outcome = 'accepted' | 'refused';

/** Runs one decoder on one input: returns whether it took the input (and its result kept `check`'s promises) or refused it clearly. */
function expectClear(what: string, f: () => unknown, check?: (result: unknown) => void): Outcome {
  const started = performance.now();
  let result: unknown;
  try {
    result = f();
  } catch (err) {
    if (!(err instanceof Error)) throw new Error(`${what}: threw a non-Error: ${String(err)}`);
    if (err instanceof TypeError || UNCLEAR.test(err.message)) throw new Error(`${what}: an error that names nothing: ${err.name}: ${err.message}`);
    if (err.message.length < 16) throw new Error(`${what}: an error too short to say what is wrong: '${err.message}'`);
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
    tally.add('decodeSlot', expectClear('decodeSlot', () => decodeSlot(bytes, 'slot.0.1')));
  }), params);
  tally.assertBothSides(t);
});
