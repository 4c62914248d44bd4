// What travels through the Object Store for a sync: a replica's contribution
// to an outer step (its stage's parameters as they are, fp32; its
// pseudo-gradient Δ = θ(last sync) − θ(now) in MX int8: one power-of-two
// scale per block of 32, 8.25 bits a value; or the largest-magnitude
// entries of Δ plus the replica's error-feedback residual, as indices and
// fp32 values) and the Bridge's result (the new parameters, and the outer
// momentum, fp32). Every blob is CBOR with its format, version, kind and
// length, LZ4 where it pays; a blob that is not one, or not the length the
// stage has, is refused with the reason.
import { decode as decodeCbor, Encoder } from 'cbor-x';
import { lz4Decode, lz4Encode, MX_BLOCK, mxint8Decode, mxint8Encode } from '../codecs/index.ts';
import { cborFailure } from '../../schemas/cbor-error.ts';

export type PayloadKind = 'fp32' | 'mxint8' | 'topk';

const FORMAT = 'caravan-bridge';
const VERSION = 1;
const cbor = new Encoder({ useRecords: false });

export interface EncodedPayload {
  readonly bytes: Uint8Array;
  /** The values as fp32, and the blob's size: what a sync moves, raw and on the wire. */
  readonly rawBytes: number;
}

/**
 * The k = max(1, round(fraction·n)) entries of x largest in magnitude (ties
 * to the lower index), as ascending indices and their values: a sparse x.
 */
export function topK(x: Float32Array, fraction: number): { indices: Uint32Array; values: Float32Array } {
  const k = Math.min(x.length, Math.max(1, Math.round(fraction * x.length)));
  const order = Uint32Array.from({ length: x.length }, (_, i) => i).sort((a, b) => Math.abs(x[b]) - Math.abs(x[a]) || a - b);
  const indices = order.subarray(0, k).sort();
  return { indices, values: Float32Array.from(indices, (i) => x[i]) };
}

export function encodeParams(values: Float32Array, kind: PayloadKind, topkFraction = 0.01): EncodedPayload {
  let data: Uint8Array;
  if (kind === 'topk') {
    // [k: u32][indices: u32 × k][values: f32 × k], little-endian
    const { indices, values: kept } = topK(values, topkFraction);
    const k = indices.length;
    const words = new Uint32Array(1 + 2 * k);
    words[0] = k;
    words.set(indices, 1);
    new Float32Array(words.buffer, 4 * (1 + k), k).set(kept);
    data = new Uint8Array(words.buffer);
  } else if (kind === 'mxint8') {
    const padded = new Float32Array(Math.ceil(values.length / MX_BLOCK) * MX_BLOCK);
    padded.set(values);
    data = mxint8Encode(padded, MX_BLOCK);
  } else {
    data = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  }
  const packed = lz4Encode(data);
  const bytes = cbor.encode({ f: FORMAT, v: VERSION, kind, n: values.length, lz4: packed ? data.length : 0, data: packed ?? data });
  return { bytes, rawBytes: values.byteLength };
}

export function decodeParams(bytes: Uint8Array, expect: { length: number; kind?: PayloadKind }, where: string): { kind: PayloadKind; values: Float32Array } {
  let m: { f?: unknown; v?: unknown; kind?: unknown; n?: unknown; lz4?: unknown; data?: unknown };
  try {
    m = decodeCbor(bytes) as typeof m;
  } catch (err) {
    throw new Error(`${where}: not a Bridge payload (${cborFailure(err)})`);
  }
  if (!m || m.f !== FORMAT) throw new Error(`${where}: not a Bridge payload`);
  if (m.v !== VERSION) throw new Error(`${where}: unknown Bridge payload version ${JSON.stringify(m.v)} (this build reads ${VERSION})`);
  if (m.kind !== 'fp32' && m.kind !== 'mxint8' && m.kind !== 'topk') throw new Error(`${where}: unknown payload kind ${JSON.stringify(m.kind)}`);
  if (expect.kind && m.kind !== expect.kind) throw new Error(`${where}: payload is ${m.kind}, this run sends ${expect.kind}`);
  if (m.n !== expect.length) throw new Error(`${where}: ${JSON.stringify(m.n)} values, the stage has ${expect.length}`);
  if (!(m.data instanceof Uint8Array) || !Number.isSafeInteger(m.lz4) || (m.lz4 as number) < 0) throw new Error(`${where}: malformed payload`);
  const n = expect.length;
  if (m.kind === 'topk') return { kind: 'topk', values: decodeTopK(m.lz4 ? lz4Decode(m.data, m.lz4 as number) : m.data, n, where) };
  const padded = Math.ceil(n / MX_BLOCK) * MX_BLOCK;
  const dataBytes = m.kind === 'mxint8' ? padded + padded / MX_BLOCK : n * 4;
  if (m.lz4 !== 0 && m.lz4 !== dataBytes) throw new Error(`${where}: payload says ${m.lz4} bytes before LZ4, the stage needs ${dataBytes}`);
  const data = m.lz4 ? lz4Decode(m.data, dataBytes) : m.data;
  if (data.length !== dataBytes) throw new Error(`${where}: ${data.length} bytes of data, the stage needs ${dataBytes}`);
  if (m.kind === 'mxint8') return { kind: 'mxint8', values: mxint8Decode(data, padded, MX_BLOCK).subarray(0, n) };
  const values = new Float32Array(n);
  new Uint8Array(values.buffer).set(data);
  return { kind: 'fp32', values };
}

/** A dense x[n] from [k][indices][values]: indices ascending, each below n. */
function decodeTopK(data: Uint8Array, n: number, where: string): Float32Array {
  if (data.length < 4 || data.length % 4 !== 0) throw new Error(`${where}: malformed top-k payload (${data.length} bytes)`);
  const words = new Uint32Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.length));
  const k = words[0];
  if (k > n || words.length !== 1 + 2 * k) throw new Error(`${where}: top-k payload says ${k} entries in ${data.length} bytes, for a stage of ${n}`);
  const indices = words.subarray(1, 1 + k);
  const values = new Float32Array(words.buffer, 4 * (1 + k), k);
  const out = new Float32Array(n);
  for (let j = 0; j < k; j++) {
    const i = indices[j];
    if (i >= n || (j > 0 && i <= indices[j - 1])) throw new Error(`${where}: top-k index ${i} at entry ${j} is out of order or past the stage's ${n} values`);
    out[i] = values[j];
  }
  return out;
}
