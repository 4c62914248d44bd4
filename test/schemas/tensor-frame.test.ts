import test, { type ExecutionContext } from 'ava';
import { decode as decodeCbor, Encoder } from 'cbor-x';
import {
  decodeFrame,
  encodeFrame,
  FRAME_VERSION,
  FrameError,
  frameMsgId,
  type FrameContent,
  type FrameExpectation,
  type FrameFault,
} from '../../schemas/index.ts';
import { mulberry32 } from '../support/random-weights.ts';

const cbor = new Encoder({ useRecords: false });


function randomFloats(n: number, seed: number): Float32Array {
  const next = mulberry32(seed);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (next() - 0.5) * 8;
  return data;
}

// Values whose bits a lossy path would change: -0, NaN payloads, infinities, subnormals.
function specialFloats(): Float32Array {
  const bits = Uint32Array.of(0x80000000, 0x7fc00001, 0xffc12345, 0x7f800000, 0xff800000, 0x00000001, 0x807fffff, 0x3f800000);
  return new Float32Array(bits.buffer);
}

const EXPECT: FrameExpectation = { run: 'run-a', replica: 1, stage: 2, kind: 'act', width: 4, maxSeqLen: 8 };

function content(overrides: Partial<FrameContent> = {}): FrameContent {
  const shape = overrides.shape ?? [2, 3, 4];
  return {
    run: 'run-a',
    replica: 1,
    stage: 2,
    step: 17,
    microbatch: 3,
    kind: 'act',
    shape,
    data: overrides.data ?? randomFloats(shape[0] * shape[1] * shape[2], 7),
    ...overrides,
  };
}

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
  return x.every((v, i) => v === y[i]);
}

/** A valid frame's fields as a plain map, edited, then re-encoded as any CBOR writer might. */
function rewritten(edit: (map: Record<string, unknown>) => void, base: FrameContent = content()): Uint8Array {
  const map = { ...(decodeCbor(encodeFrame(base)) as Record<string, unknown>) };
  edit(map);
  return cbor.encode(map);
}

function refuses(t: ExecutionContext, bytes: Uint8Array, fault: FrameFault, message: RegExp | string, expect = EXPECT): void {
  const error = t.throws(() => decodeFrame(bytes, expect), { instanceOf: FrameError });
  if (!error) return;
  t.is((error as FrameError).fault, fault, error.message);
  if (typeof message === 'string') t.is(error.message, message);
  else t.regex(error.message, message);
}

test('round trip: every field, values bitwise equal, data a view of an aligned frame', (t) => {
  const sent = content({ shape: [1, 2, 4], data: specialFloats() });
  const bytes = encodeFrame(sent);
  t.is(bytes.byteOffset, 0);
  t.is(bytes.buffer.byteLength, bytes.byteLength, 'the frame owns a buffer of exactly its size');
  const frame = decodeFrame(bytes, EXPECT);
  t.like(frame, {
    version: FRAME_VERSION,
    run: 'run-a',
    replica: 1,
    stage: 2,
    step: 17,
    microbatch: 3,
    kind: 'act',
    dtype: 'f32',
  });
  t.deepEqual(frame.shape, [1, 2, 4]);
  t.deepEqual(frame.codecs, []);
  t.true(bitsEqual(sent.data, frame.data));
  t.is(frame.data.buffer, bytes.buffer, 'aligned payload: a view, not a copy');
  t.is(frame.data.byteOffset, 8);
});

test('round trip: an unaligned frame decodes to a copy with the same bits', (t) => {
  const sent = content({ shape: [1, 2, 4], data: specialFloats() });
  const bytes = encodeFrame(sent);
  const shifted = new Uint8Array(bytes.byteLength + 1).subarray(1);
  shifted.set(bytes);
  const frame = decodeFrame(shifted, EXPECT);
  t.not(frame.data.buffer, shifted.buffer);
  t.true(bitsEqual(sent.data, frame.data));
  // A Node Buffer (as a NATS message may hand over) decodes too.
  t.true(bitsEqual(sent.data, decodeFrame(Buffer.from(bytes), EXPECT).data));
});

test('round trip: data that is itself a view at an offset; grad frames', (t) => {
  const backing = randomFloats(2 * 3 * 4 + 5, 11);
  const data = backing.subarray(5);
  const sent = content({ kind: 'grad', data });
  const frame = decodeFrame(encodeFrame(sent), { ...EXPECT, kind: 'grad' });
  t.is(frame.kind, 'grad');
  t.true(bitsEqual(data, frame.data));
});

test('the wire form is one compact CBOR map with short keys, payload as a byte string', (t) => {
  const sent = content();
  const bytes = encodeFrame(sent);
  const map = decodeCbor(bytes) as Record<string, unknown>;
  t.deepEqual(Object.keys(map).sort(), ['crc', 'cx', 'd', 'dt', 'k', 'mb', 'r', 'run', 's', 'sh', 't', 'v']);
  t.true(map.d instanceof Uint8Array);
  t.is((map.d as Uint8Array).byteLength, sent.data.byteLength);
  t.deepEqual(map.cx, []);
  t.true(bytes.byteLength - sent.data.byteLength < 80, `header of ${bytes.byteLength - sent.data.byteLength} bytes`);
  // Any conforming writer's map (other key order, shortest lengths) reads the same.
  const reordered = cbor.encode(Object.fromEntries(Object.entries(map).reverse()));
  t.notDeepEqual(reordered, bytes);
  t.true(bitsEqual(sent.data, decodeFrame(reordered, EXPECT).data));
});

test('malformed: not CBOR, trailing bytes, not a map, missing, mistyped and unknown fields', (t) => {
  refuses(t, new Uint8Array(0), 'malformed', /not one complete CBOR item/);
  refuses(t, Uint8Array.of(0xff, 0x00), 'malformed', /not one complete CBOR item/);
  const valid = encodeFrame(content());
  const trailing = new Uint8Array(valid.byteLength + 1);
  trailing.set(valid);
  refuses(t, trailing, 'malformed', /not one complete CBOR item/);
  refuses(t, cbor.encode([1, 2, 3]), 'malformed', /expected a CBOR map/);
  refuses(t, cbor.encode('frame'), 'malformed', /expected a CBOR map/);
  refuses(t, cbor.encode(new Map<unknown, unknown>([[1, 2]])), 'malformed', /expected a CBOR map with text keys/);
  refuses(t, rewritten((m) => delete m.v), 'malformed', /field 'v' must be the schema version, got undefined/);
  refuses(t, rewritten((m) => (m.v = '1')), 'malformed', /field 'v' must be the schema version, got "1"/);
  refuses(t, rewritten((m) => delete m.crc), 'malformed', /run=run-a replica=1 stage=2 step=17 mb=3 kind=act: field 'crc'.*got undefined/);
  refuses(t, rewritten((m) => (m.r = '1')), 'malformed', /field 'r' must be the replica.*got "1"/);
  refuses(t, rewritten((m) => (m.run = 5)), 'malformed', /field 'run' must be a text run id, got 5/);
  refuses(t, rewritten((m) => (m.k = 'loss')), 'malformed', /field 'k' must be 'act' or 'grad', got "loss"/);
  refuses(t, rewritten((m) => (m.sh = '2x3x4')), 'malformed', /field 'sh' must be the shape/);
  refuses(t, rewritten((m) => (m.cx = [1])), 'malformed', /field 'cx'/);
  refuses(t, rewritten((m) => (m.d = [1, 2])), 'malformed', /field 'd' must be the payload, a byte string, got \[1, 2\]/);
  refuses(t, rewritten((m) => (m.crc = -1)), 'malformed', /field 'crc'.*got -1/);
  refuses(t, rewritten((m) => (m.crc = 2 ** 32)), 'malformed', /field 'crc'.*got 4294967296/);
  refuses(t, rewritten((m) => (m.extra = 1)), 'malformed', /unknown field "extra" in a version 1 frame/);
});

test('malformed: step and microbatch must be non-negative safe integers', (t) => {
  refuses(t, rewritten((m) => (m.t = -1)), 'malformed', /field 't' must be the step, a non-negative integer, got -1/);
  refuses(t, rewritten((m) => (m.t = 1.5)), 'malformed', /field 't'.*got 1\.5/);
  refuses(t, rewritten((m) => (m.t = 2 ** 53)), 'malformed', /field 't'.*got 9007199254740992/);
  refuses(t, rewritten((m) => (m.mb = -2)), 'malformed', /field 'mb' must be the microbatch, a non-negative integer, got -2/);
  refuses(t, rewritten((m) => (m.mb = null)), 'malformed', /field 'mb'.*got null/);
});

test('version: another schema version is named, even when its fields differ', (t) => {
  refuses(t, rewritten((m) => (m.v = 7)), 'version', 'unknown frame schema version 7 (this build reads 1)');
  refuses(t, cbor.encode({ v: 2, payload: new Uint8Array(4) }), 'version', 'unknown frame schema version 2 (this build reads 1)');
});

test('run: a frame from another run is refused, naming both runs', (t) => {
  refuses(t, encodeFrame(content({ run: 'run-b' })), 'run', 'frame for run run-b, this stage is in run run-a');
});

test('route: wrong replica, stage or kind', (t) => {
  const misrouted = /^frame run=run-a replica=\d stage=\d step=17 mb=3 kind=\w+: misrouted, this stage takes act frames for replica 1 stage 2$/;
  refuses(t, encodeFrame(content({ replica: 0 })), 'route', misrouted);
  refuses(t, encodeFrame(content({ stage: 3 })), 'route', misrouted);
  refuses(t, encodeFrame(content({ kind: 'grad' })), 'route', misrouted);
  refuses(t, encodeFrame(content()), 'route', /kind=act: misrouted, this stage takes grad frames/, { ...EXPECT, kind: 'grad' });
});

test('shape: dtype, rank, non-positive or fractional dims, width, sequence length, payload length', (t) => {
  refuses(t, rewritten((m) => (m.dt = 'bf16')), 'shape', /dtype "bf16" \(this build reads 'f32'\)/);
  refuses(t, rewritten((m) => (m.sh = [6, 4])), 'shape', /shape \[6, 4\] is not \[B, T, 4\] of positive integers/);
  refuses(t, rewritten((m) => (m.sh = [2, 3, 4, 1])), 'shape', /shape \[2, 3, 4, 1\] is not/);
  refuses(t, rewritten((m) => (m.sh = [0, 3, 4])), 'shape', /shape \[0, 3, 4\] is not/);
  refuses(t, rewritten((m) => (m.sh = [2, 1.5, 4])), 'shape', /shape \[2, 1\.5, 4\] is not/);
  refuses(t, rewritten((m) => (m.sh = [2, '3', 4])), 'shape', /shape \[2, "3", 4\] is not/);
  refuses(t, encodeFrame(content({ shape: [2, 3, 4] })), 'shape', /shape \[2, 3, 4\] has width 4, this stage takes 8/, { ...EXPECT, width: 8 });
  refuses(t, encodeFrame(content({ shape: [1, 9, 4] })), 'shape', /shape \[1, 9, 4\] has T=9 > maxSeqLen 8/);
  refuses(t, rewritten((m) => (m.sh = [1, 3, 4])), 'shape', /payload has 96 bytes, shape \[1, 3, 4\] of f32 needs 48/);
  refuses(t, rewritten((m) => (m.d = (m.d as Uint8Array).subarray(4))), 'shape', /payload has 92 bytes/);
});

test('checksum: a changed payload or checksum is caught, naming both sums', (t) => {
  const bytes = encodeFrame(content());
  bytes[8 + 13] ^= 0x10;
  refuses(t, bytes, 'checksum', /^frame run=run-a replica=1 stage=2 step=17 mb=3 kind=act: payload CRC-32 is 0x[0-9a-f]{8}, frame says 0x[0-9a-f]{8}$/);
  refuses(t, rewritten((m) => (m.crc = ((m.crc as number) ^ 1) >>> 0)), 'checksum', /payload CRC-32/);
});

test('codec: a receiver without codecs refuses a frame that lists one, naming it', (t) => {
  refuses(t, rewritten((m) => (m.cx = ['lz4', 'q8'])), 'codec', /frame uses codec "lz4", which this receiver lacks \(it has: none\)/);
});

test('encodeFrame refuses content it could not describe', (t) => {
  const fault = (c: FrameContent) => (t.throws(() => encodeFrame(c), { instanceOf: FrameError }) as FrameError).fault;
  t.is(fault(content({ shape: [2, 3, 5], data: new Float32Array(24) })), 'shape');
  t.is(fault(content({ shape: [24], data: new Float32Array(24) })), 'shape');
  t.is(fault(content({ shape: [2, 0, 4], data: new Float32Array(0) })), 'shape');
  t.is(fault(content({ step: -1 })), 'malformed');
  t.is(fault(content({ microbatch: 0.5 })), 'malformed');
  t.is(fault(content({ run: '' })), 'malformed');
  t.is(fault(content({ kind: 'act', stage: 0 })), 'route');
  t.is(fault({ ...content(), data: new Float64Array(24) as unknown as Float32Array }), 'malformed');
});

test('every truncation of a frame is refused with a FrameError', (t) => {
  const bytes = encodeFrame(content({ shape: [1, 2, 4] }));
  const wrong: string[] = [];
  for (let cut = 0; cut < bytes.byteLength; cut++) {
    let error: unknown;
    try {
      decodeFrame(bytes.subarray(0, cut), EXPECT);
    } catch (caught) {
      error = caught;
    }
    if (!(error instanceof FrameError) || !['malformed', 'shape', 'checksum'].includes(error.fault)) {
      wrong.push(`cut at ${cut} of ${bytes.byteLength}: ${error === undefined ? 'decoded' : String(error)}`);
    }
  }
  t.deepEqual(wrong.slice(0, 5), [], 'every truncation is refused as malformed, a shape or a checksum fault');
});

test('byte flips never yield different data unnoticed', (t) => {
  const sent = content({ shape: [1, 2, 4] });
  const valid = encodeFrame(sent);
  const outcomes = new Map<string, number>();
  const tally = (key: string) => outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  const attempt = (bytes: Uint8Array, what: string): boolean => {
    try {
      const frame = decodeFrame(bytes, EXPECT);
      if (!bitsEqual(sent.data, frame.data)) {
        t.fail(`${what}: decoded to different data`);
        return false;
      }
      // Only the payload is checksummed: a flip in step or microbatch can pass (see schemas/tensor-frame.ts).
      const changed = (['run', 'replica', 'stage', 'step', 'microbatch', 'kind'] as const).filter((k) => frame[k] !== sent[k]);
      tally(changed.length === 0 ? 'decoded, same frame' : `decoded, same data, other ${changed.join('+')}`);
    } catch (error) {
      if (!(error instanceof FrameError)) {
        t.fail(`${what}: threw ${String(error)}`);
        return false;
      }
      tally(error.fault);
    }
    return true;
  };
  // Every single bit.
  for (let bit = 0; bit < valid.byteLength * 8; bit++) {
    const bytes = valid.slice();
    bytes[bit >> 3] ^= 1 << (bit & 7);
    if (!attempt(bytes, `bit ${bit}`)) return;
  }
  // Random bytes, 1 to 4 at a time.
  const next = mulberry32(1234);
  for (let trial = 0; trial < 20_000; trial++) {
    const bytes = valid.slice();
    const flips = 1 + Math.floor(next() * 4);
    for (let i = 0; i < flips; i++) bytes[Math.floor(next() * bytes.length)] ^= 1 + Math.floor(next() * 255);
    if (!attempt(bytes, `trial ${trial}`)) return;
  }
  t.log(Object.fromEntries(outcomes));
  t.true((outcomes.get('checksum') ?? 0) > 0);
});

// Speed is the transport benchmark's to claim (bench/transport.ts, frame
// encode/decode against raw JetStream); here only that a 4 MiB frame makes
// the round trip bit for bit.
test('a 4 MiB frame round-trips bit for bit', (t) => {
  const shape = [4, 256, 1024]; // 1 Mi floats
  const data = randomFloats(shape[0] * shape[1] * shape[2], 3);
  const frame = decodeFrame(encodeFrame(content({ shape, data })), { ...EXPECT, width: 1024, maxSeqLen: 256 });
  t.deepEqual(frame.shape, shape);
  t.deepEqual(new Uint8Array(frame.data.buffer, frame.data.byteOffset, frame.data.byteLength), new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
});

test('frameMsgId: run/replica/step/microbatch/edge/direction', (t) => {
  t.is(frameMsgId('run-a', 1, 17, 3, 'act', 2), 'run-a/1/17/3/1-2/fwd');
  t.is(frameMsgId('run-a', 0, 0, 0, 'grad', 2), 'run-a/0/0/0/3-2/bwd');
  t.is(frameMsgId('run-a', 2, 5, 7, 'grad', 0), 'run-a/2/5/7/1-0/bwd');
  t.throws(() => frameMsgId('run-a', 0, 0, 0, 'act', 0), { instanceOf: RangeError, message: /stage 0 takes no activations/ });
  t.throws(() => frameMsgId('a/b', 0, 0, 0, 'act', 1), { instanceOf: RangeError, message: /without '\/'/ });
  t.throws(() => frameMsgId('run-a', 0, -1, 0, 'act', 1), { instanceOf: RangeError, message: /step must be a non-negative integer, got -1/ });
  t.throws(() => frameMsgId('run-a', 0, 0, 0, 'fwd' as 'act', 1), { instanceOf: RangeError, message: /kind must be/ });
});
