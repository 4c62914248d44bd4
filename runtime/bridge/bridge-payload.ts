// What travels through the Object Store for a sync: a replica's contribution
// to an outer step (its stage's parameters as they are, fp32, or its
// pseudo-gradient Δ = θ(last sync) − θ(now) in MX int8: one power-of-two
// scale per block of 32, 8.25 bits a value) and the Bridge's result (the new
// parameters, and the outer momentum, fp32). Every blob is CBOR with its
// format, version, kind and length, LZ4 where it pays; a blob that is not
// one, or not the length the stage has, is refused with the reason.
import { decode as decodeCbor, Encoder } from 'cbor-x';
import { lz4Decode, lz4Encode, MX_BLOCK, mxint8Decode, mxint8Encode } from '../codecs/index.ts';

export type PayloadKind = 'fp32' | 'mxint8';

const FORMAT = 'caravan-bridge';
const VERSION = 1;
const cbor = new Encoder({ useRecords: false });

export interface EncodedPayload {
  readonly bytes: Uint8Array;
  /** The values as fp32, and the blob's size: what a sync moves, raw and on the wire. */
  readonly rawBytes: number;
}

export function encodeParams(values: Float32Array, kind: PayloadKind): EncodedPayload {
  let data: Uint8Array;
  if (kind === 'mxint8') {
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
    throw new Error(`${where}: not a Bridge payload (${(err as Error).message})`);
  }
  if (!m || m.f !== FORMAT) throw new Error(`${where}: not a Bridge payload`);
  if (m.v !== VERSION) throw new Error(`${where}: unknown Bridge payload version ${JSON.stringify(m.v)} (this build reads ${VERSION})`);
  if (m.kind !== 'fp32' && m.kind !== 'mxint8') throw new Error(`${where}: unknown payload kind ${JSON.stringify(m.kind)}`);
  if (expect.kind && m.kind !== expect.kind) throw new Error(`${where}: payload is ${m.kind}, this run sends ${expect.kind}`);
  if (m.n !== expect.length) throw new Error(`${where}: ${JSON.stringify(m.n)} values, the stage has ${expect.length}`);
  if (!(m.data instanceof Uint8Array) || !Number.isSafeInteger(m.lz4) || (m.lz4 as number) < 0) throw new Error(`${where}: malformed payload`);
  const n = expect.length;
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
