// The tensor frame: one microbatch's activations or gradients crossing one
// pipeline edge, as the bytes of one JetStream message. Pure: encode, decode
// and validate; no IO (zlib.crc32 is a pure function).
//
// Wire layout: one CBOR map (RFC 8949) with short text keys.
//
//   key  field       CBOR type
//   d    data        byte string: the payload as sent (float32 little-endian
//                    when cx is empty, else the output of the last codec)
//   v    version     uint (FRAME_VERSION)
//   run  run         text
//   r    replica     uint
//   s    stage       uint: the destination stage
//   t    step        uint
//   mb   microbatch  uint
//   k    kind        text: 'act' | 'grad'
//   dt   dtype       text: 'f32'
//   sh   shape       array of uint: [B, T, d]
//   cx   codecs      array of text, applied in order by the sender ([] = raw f32)
//   crc  checksum    uint: CRC-32 (zlib) of the payload bytes as sent
//   at   attempt     uint, only when > 0: the step's attempt (a post-validated
//                    step that was rolled back is redone as attempt 1;
//                    actors/stage-machine.ts). Absent means 0, so 1F1B's
//                    frames are byte for byte what they were.
//
// The encoder always writes `d` first with a 4-byte length, so the payload
// starts at byte 8 of the frame: when the message buffer is 4-byte aligned the
// decoder hands back a view, not a copy. Any conforming CBOR map decodes; a
// frame with keys this version does not know is refused rather than half-read
// (new fields come with a new version). The checksum covers the payload only:
// it is there to catch a buffer reused or torn between compute and wire; the
// header is small and fully validated field by field.
//
// Codecs are passed in (FrameCodec), so this file stays free of native code:
// runtime/codecs holds mxint8 and lz4. A receiver judges the checksum on the
// bytes as sent, then undoes the codecs last to first, each told the exact
// length its output must have, so a hostile length cannot make it allocate
// more than the shape implies. Not here: subjects and NATS headers
// (runtime/transport).

import { crc32 } from 'node:zlib';
import { Decoder, Encoder } from 'cbor-x';
import { cborFailure } from './cbor-error.ts';

export const FRAME_VERSION = 1;

/** 'act': activations into a stage (forward); 'grad': gradients into a stage (backward). */
export type FrameKind = 'act' | 'grad';

export interface FrameContent {
  readonly run: string;
  readonly replica: number;
  /** The destination stage. */
  readonly stage: number;
  readonly step: number;
  readonly microbatch: number;
  /** The step's attempt: 0 unless the step was redone after a roll-back. */
  readonly attempt?: number;
  readonly kind: FrameKind;
  /** [B, T, d] */
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

/** A decoded frame: the content plus what the envelope says about it. */
export interface TensorFrame extends FrameContent {
  readonly version: number;
  readonly attempt: number;
  readonly dtype: 'f32';
  readonly codecs: readonly string[];
  /** CRC-32 of the payload bytes as sent. */
  readonly checksum: number;
}

/**
 * One step of a frame's payload encoding. A codec that `takes` 'f32' must come
 * first (it reads the float32 tensor); 'bytes' codecs take whatever the
 * previous one wrote. Every call is told the tensor's row width (the last
 * dimension of the shape), for codecs that work row by row.
 */
export interface FrameCodec {
  readonly name: string;
  readonly takes: 'f32' | 'bytes';
  /** Output length for an input of n bytes, where it depends on n (and the width) alone; absent for entropy coders. */
  encodedLength?(inputBytes: number, width: number): number;
  /** The encoded bytes, or undefined when this frame is not worth encoding (the codec is then left out of `cx`). */
  encode(input: Uint8Array, width: number): Uint8Array | undefined;
  /** Inverse of encode; must produce exactly `outputBytes` bytes or throw saying why. */
  decode(input: Uint8Array, outputBytes: number, width: number): Uint8Array;
}

/** The codecs a receiver can undo, by name. */
export type CodecRegistry = ReadonlyMap<string, FrameCodec>;

export type FrameFault = 'malformed' | 'version' | 'run' | 'route' | 'shape' | 'checksum' | 'codec';

export class FrameError extends Error {
  readonly fault: FrameFault;
  constructor(fault: FrameFault, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FrameError';
    this.fault = fault;
  }
}

/** What the receiving stage knows it should get. */
export interface FrameExpectation {
  readonly run: string;
  readonly replica: number;
  readonly stage: number;
  readonly kind: FrameKind;
  /** d: the last dimension of the shape. */
  readonly width: number;
  readonly maxSeqLen: number;
  /** Codecs this receiver can undo; none when absent. */
  readonly codecs?: CodecRegistry;
}

const KEYS = ['d', 'v', 'run', 'r', 's', 't', 'mb', 'k', 'dt', 'sh', 'cx', 'crc'] as const;
const KNOWN_KEYS: ReadonlySet<string> = new Set([...KEYS, 'at']);
const MAX_PAYLOAD_BYTES = 0xffffffff; // the 4-byte CBOR length the encoder writes
// map head (1) + text "d" (2) + byte string head with 4-byte length (5)
const PAYLOAD_OFFSET = 8;

// The wire is little-endian; Float32Array uses the host's order. Every host
// caravan targets is little-endian, so rather than an untested swap path the
// codec refuses to run elsewhere.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

function requireLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) throw new Error('tensor frames need a little-endian host');
}

const headerEncoder = new Encoder({ useRecords: false });
// Byte strings decode as views of the input (copyBuffers off), maps as plain objects.
const frameDecoder = new Decoder({ useRecords: false, mapsAsObjects: true });

function isIndex(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (Array.isArray(value)) return `[${value.map(describe).join(', ')}]`;
  if (value instanceof Uint8Array) return `${value.constructor.name}(${value.byteLength})`;
  if (value === null || typeof value !== 'object') return String(value);
  return Object.prototype.toString.call(value);
}

/** `${run}/${replica}/${step}/${microbatch}/${edge}/${dir}` (and `/a${attempt}` after a roll-back): the Nats-Msg-Id that makes a re-sent frame a duplicate. */
export function frameMsgId(
  run: string,
  replica: number,
  step: number,
  microbatch: number,
  kind: FrameKind,
  stage: number,
  attempt = 0,
): string {
  if (!isIndex(attempt)) throw new RangeError(`frameMsgId: attempt must be a non-negative integer, got ${describe(attempt)}`);
  return frameEdgeId(run, replica, step, microbatch, kind, stage) + (attempt > 0 ? `/a${attempt}` : '');
}

function frameEdgeId(run: string, replica: number, step: number, microbatch: number, kind: FrameKind, stage: number): string {
  if (typeof run !== 'string' || run.length === 0 || run.includes('/')) {
    throw new RangeError(`frameMsgId: run must be a non-empty string without '/', got ${describe(run)}`);
  }
  for (const [name, value] of [['replica', replica], ['step', step], ['microbatch', microbatch], ['stage', stage]] as const) {
    if (!isIndex(value)) throw new RangeError(`frameMsgId: ${name} must be a non-negative integer, got ${describe(value)}`);
  }
  if (kind === 'act') {
    if (stage === 0) throw new RangeError(`frameMsgId: stage 0 takes no activations (run ${run} replica ${replica})`);
    return `${run}/${replica}/${step}/${microbatch}/${stage - 1}-${stage}/fwd`;
  }
  if (kind === 'grad') return `${run}/${replica}/${step}/${microbatch}/${stage + 1}-${stage}/bwd`;
  throw new RangeError(`frameMsgId: kind must be 'act' or 'grad', got ${describe(kind)}`);
}

function contentLabel(f: FrameContent): string {
  return `frame run=${f.run} replica=${f.replica} stage=${f.stage} step=${f.step} mb=${f.microbatch} kind=${f.kind}`;
}

function checkContent(frame: FrameContent): void {
  if (typeof frame.run !== 'string' || frame.run.length === 0) {
    throw new FrameError('malformed', `encodeFrame: run must be a non-empty string, got ${describe(frame.run)}`);
  }
  for (const key of ['replica', 'stage', 'step', 'microbatch', 'attempt'] as const) {
    if (key === 'attempt' && frame.attempt === undefined) continue;
    if (!isIndex(frame[key])) {
      throw new FrameError('malformed', `encodeFrame: ${key} must be a non-negative integer, got ${describe(frame[key])} (run ${frame.run})`);
    }
  }
  if (frame.kind !== 'act' && frame.kind !== 'grad') {
    throw new FrameError('malformed', `encodeFrame: kind must be 'act' or 'grad', got ${describe(frame.kind)}`);
  }
  if (frame.kind === 'act' && frame.stage === 0) {
    throw new FrameError('route', `${contentLabel(frame)}: stage 0 takes no activations`);
  }
  if (!(frame.data instanceof Float32Array)) {
    throw new FrameError('malformed', `${contentLabel(frame)}: data must be a Float32Array, got ${describe(frame.data)}`);
  }
  const { shape } = frame;
  if (!Array.isArray(shape) || shape.length !== 3 || !shape.every((n) => isIndex(n) && n > 0)) {
    throw new FrameError('shape', `${contentLabel(frame)}: shape must be [B, T, d] of positive integers, got ${describe(shape)}`);
  }
  const elements = shape[0] * shape[1] * shape[2];
  if (elements !== frame.data.length) {
    throw new FrameError('shape', `${contentLabel(frame)}: shape ${describe(shape)} holds ${elements} values, data has ${frame.data.length}`);
  }
  if (frame.data.byteLength > MAX_PAYLOAD_BYTES) {
    throw new FrameError('shape', `${contentLabel(frame)}: payload of ${frame.data.byteLength} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  }
}

/**
 * One CBOR map, payload first (see the header). Applies `codecs` in order
 * (each may decline a frame that does not pay), then copies the payload once,
 * into a buffer of exactly the frame's size that the caller owns: a new one,
 * or `into(bytes)` (every byte of which is written).
 */
export function encodeFrame(frame: FrameContent, codecs: readonly FrameCodec[] = []): Uint8Array {
  return encodeFrameWithCodecs(frame, codecs).bytes;
}

/** encodeFrame, also saying which codecs it applied (a codec may decline a frame). */
export function encodeFrameWithCodecs(
  frame: FrameContent, codecs: readonly FrameCodec[] = [], into: (bytes: number) => Uint8Array = (bytes) => new Uint8Array(bytes),
): { bytes: Uint8Array; codecs: readonly string[] } {
  requireLittleEndianHost();
  checkContent(frame);
  let payload = new Uint8Array(frame.data.buffer, frame.data.byteOffset, frame.data.byteLength);
  const applied: string[] = [];
  codecs.forEach((codec, i) => {
    if (codec.takes === 'f32' && i > 0) throw new Error(`encodeFrame: codec ${codec.name} reads float32 and must come first, got [${codecs.map((c) => c.name).join(', ')}]`);
    const encoded = codec.encode(payload, frame.shape[2]);
    if (encoded === undefined) return;
    payload = encoded;
    applied.push(codec.name);
  });
  const header: Record<string, unknown> = {
    v: FRAME_VERSION,
    run: frame.run,
    r: frame.replica,
    s: frame.stage,
    t: frame.step,
    mb: frame.microbatch,
    k: frame.kind,
    dt: 'f32',
    sh: [frame.shape[0], frame.shape[1], frame.shape[2]],
    cx: applied,
    crc: crc32(payload),
    ...(frame.attempt ? { at: frame.attempt } : {}),
  };
  const encoded = headerEncoder.encode(header);
  // Skip cbor-x's own map head (1 to 3 bytes); ours counts the payload entry too.
  const head = encoded[0];
  const [headLength, headerEntries] =
    head >= 0xa0 && head <= 0xb7 ? [1, head - 0xa0] : head === 0xb8 ? [2, encoded[1]] : head === 0xb9 ? [3, (encoded[1] << 8) | encoded[2]] : [0, -1];
  const entries = Object.keys(header).length + 1;
  if (headerEntries !== entries - 1) {
    throw new Error(`encodeFrame: the header encoder wrote map head 0x${head.toString(16)}, not a map of ${entries - 1} entries`);
  }
  const size = PAYLOAD_OFFSET + payload.byteLength + encoded.length - headLength;
  const out = into(size);
  if (out.byteLength !== size) throw new Error(`encodeFrame: a buffer of ${out.byteLength} bytes was given for a frame of ${size}`);
  out[0] = 0xa0 + entries; // a map of `entries` pairs (< 24, so one byte)
  out[1] = 0x61; // text string of length 1
  out[2] = 0x64; // "d"
  out[3] = 0x5a; // byte string, 4-byte big-endian length follows
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(4, payload.byteLength);
  out.set(payload, PAYLOAD_OFFSET);
  out.set(encoded.subarray(headLength), PAYLOAD_OFFSET + payload.byteLength);
  return { bytes: out, codecs: applied };
}

/** The payload of an encoded frame, as sent (after its codecs): a view of `bytes`, or undefined where `bytes` is too short to hold the payload its length field names. */
export function framePayload(bytes: Uint8Array): Uint8Array | undefined {
  if (bytes.byteLength < PAYLOAD_OFFSET) return undefined;
  const length = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(4);
  return PAYLOAD_OFFSET + length <= bytes.byteLength ? bytes.subarray(PAYLOAD_OFFSET, PAYLOAD_OFFSET + length) : undefined;
}

function malformed(label: string, key: string, what: string, value: unknown): FrameError {
  return new FrameError('malformed', `${label}: field '${key}' must be ${what}, got ${describe(value)}`);
}

/**
 * Decodes and validates every field against what the receiving stage expects;
 * throws FrameError naming the fault and the values. The returned data is a
 * view of `bytes` when the payload is 4-byte aligned (do not reuse `bytes`),
 * else a copy.
 */
export function decodeFrame(bytes: Uint8Array, expect: FrameExpectation): TensorFrame {
  requireLittleEndianHost();
  if (!(bytes instanceof Uint8Array)) {
    throw new FrameError('malformed', `malformed frame: expected bytes, got ${describe(bytes)}`);
  }
  let value: unknown;
  try {
    value = frameDecoder.decode(bytes);
  } catch (error) {
    throw new FrameError('malformed', `malformed frame (${bytes.byteLength} bytes): not one complete CBOR item: ${cborFailure(error)}`, { cause: error });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value) || value instanceof Map) {
    throw new FrameError('malformed', `malformed frame: expected a CBOR map with text keys, got ${describe(value)}`);
  }
  const map = value as Record<string, unknown>;

  // Version first: a frame of another version may carry other fields.
  if (!isIndex(map.v)) throw malformed('malformed frame', 'v', 'the schema version', map.v);
  if (map.v !== FRAME_VERSION) {
    throw new FrameError('version', `unknown frame schema version ${map.v} (this build reads ${FRAME_VERSION})`);
  }
  for (const key of Object.keys(map)) {
    if (!KNOWN_KEYS.has(key)) throw new FrameError('malformed', `malformed frame: unknown field ${describe(key)} in a version ${FRAME_VERSION} frame`);
  }

  const { run, r: replica, s: stage, t: step, mb: microbatch, k: kind } = map;
  if (typeof run !== 'string') throw malformed('malformed frame', 'run', 'a text run id', run);
  if (!isIndex(replica)) throw malformed(`malformed frame for run ${run}`, 'r', 'the replica, a non-negative integer', replica);
  if (!isIndex(stage)) throw malformed(`malformed frame for run ${run}`, 's', 'the stage, a non-negative integer', stage);
  if (kind !== 'act' && kind !== 'grad') throw malformed(`malformed frame for run ${run}`, 'k', "'act' or 'grad'", kind);
  if (!isIndex(step)) throw malformed(`malformed frame for run ${run}`, 't', 'the step, a non-negative integer', step);
  if (!isIndex(microbatch)) throw malformed(`malformed frame for run ${run}`, 'mb', 'the microbatch, a non-negative integer', microbatch);
  const label = `frame run=${run} replica=${replica} stage=${stage} step=${step} mb=${microbatch} kind=${kind}`;
  const { dt: dtype, sh: shape, cx: codecs, crc: checksum, d: payload, at: attempt = 0 } = map;
  if (!isIndex(attempt)) throw malformed(label, 'at', 'the attempt, a non-negative integer', attempt);
  if (typeof dtype !== 'string') throw malformed(label, 'dt', 'the dtype as text', dtype);
  if (!Array.isArray(shape)) throw malformed(label, 'sh', 'the shape, an array', shape);
  if (!Array.isArray(codecs) || !codecs.every((c) => typeof c === 'string')) throw malformed(label, 'cx', 'an array of codec names', codecs);
  if (!isIndex(checksum) || checksum > 0xffffffff) throw malformed(label, 'crc', 'a CRC-32, an unsigned 32-bit integer', checksum);
  if (!(payload instanceof Uint8Array)) throw malformed(label, 'd', 'the payload, a byte string', payload);

  if (run !== expect.run) throw new FrameError('run', `frame for run ${run}, this stage is in run ${expect.run}`);
  if (replica !== expect.replica || stage !== expect.stage || kind !== expect.kind) {
    throw new FrameError(
      'route',
      `${label}: misrouted, this stage takes ${expect.kind} frames for replica ${expect.replica} stage ${expect.stage}`,
    );
  }

  if (dtype !== 'f32') throw new FrameError('shape', `${label}: dtype ${describe(dtype)} (this build reads 'f32')`);
  const [B, T, width] = shape;
  if (shape.length !== 3 || !shape.every((n) => isIndex(n) && n > 0)) {
    throw new FrameError('shape', `${label}: shape ${describe(shape)} is not [B, T, ${expect.width}] of positive integers`);
  }
  if (width !== expect.width) throw new FrameError('shape', `${label}: shape ${describe(shape)} has width ${width}, this stage takes ${expect.width}`);
  if (T > expect.maxSeqLen) throw new FrameError('shape', `${label}: shape ${describe(shape)} has T=${T} > maxSeqLen ${expect.maxSeqLen}`);

  // Codecs are judged before the payload: they change its length.
  const chain = codecs.map((name) => {
    const codec = expect.codecs?.get(name);
    if (!codec) {
      const known = expect.codecs && expect.codecs.size > 0 ? [...expect.codecs.keys()].join(', ') : 'none';
      throw new FrameError('codec', `${label}: frame uses codec ${describe(name)}, which this receiver lacks (it has: ${known})`);
    }
    return codec;
  });
  // The exact length each codec's input has, from the raw f32 length onward.
  const lengths = [B * T * width * 4];
  chain.forEach((codec, i) => {
    if (codec.takes === 'f32' && i > 0) throw new FrameError('codec', `${label}: codec ${codec.name} reads float32 and cannot follow [${codecs.slice(0, i).join(', ')}]`);
    const before = lengths[i];
    lengths.push(codec.encodedLength ? codec.encodedLength(before, width) : NaN);
  });
  for (let i = 0; i < chain.length - 1; i++) {
    if (Number.isNaN(lengths[i + 1])) throw new FrameError('codec', `${label}: codec ${chain[i].name} has no fixed output length, so it must come last (got [${codecs.join(', ')}])`);
  }
  const sentBytes = lengths[chain.length];
  if (!Number.isNaN(sentBytes) && payload.byteLength !== sentBytes) {
    const what = chain.length === 0 ? 'of f32' : `after [${codecs.join(', ')}]`;
    throw new FrameError('shape', `${label}: payload has ${payload.byteLength} bytes, shape ${describe(shape)} ${what} needs ${sentBytes}`);
  }
  const actual = crc32(payload);
  if (actual !== checksum) {
    throw new FrameError('checksum', `${label}: payload CRC-32 is 0x${actual.toString(16).padStart(8, '0')}, frame says 0x${checksum.toString(16).padStart(8, '0')}`);
  }
  let raw: Uint8Array = payload;
  for (let i = chain.length - 1; i >= 0; i--) {
    try {
      raw = chain[i].decode(raw, lengths[i], width);
    } catch (error) {
      throw new FrameError('codec', `${label}: codec ${chain[i].name} cannot decode the payload: ${(error as Error).message}`, { cause: error });
    }
    if (raw.byteLength !== lengths[i]) throw new FrameError('codec', `${label}: codec ${chain[i].name} decoded ${raw.byteLength} bytes, expected ${lengths[i]}`);
  }

  const data = raw.byteOffset % 4 === 0
    ? new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
    : new Float32Array(new Uint8Array(raw).buffer); // copies (Buffer#slice would not)
  return {
    version: FRAME_VERSION,
    run,
    replica,
    stage,
    step,
    microbatch,
    attempt,
    kind,
    dtype: 'f32',
    shape: [B, T, width],
    codecs: [...codecs],
    checksum,
    data,
  };
}
