// The safetensors container (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the bytes. Only F32 is written here; the
// reader validates everything a truncated or foreign file could get wrong.

export interface SafeTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly data: Float32Array;
}

export interface SafeTensorsFile {
  readonly metadata: Record<string, string>;
  readonly tensors: Map<string, SafeTensor>;
}

/** Serialises tensors in the given order; the header is padded so every tensor is 8-byte aligned. */
export function encodeSafeTensors(tensors: readonly SafeTensor[], metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    const numel = t.shape.reduce((n, s) => n * s, 1);
    if (numel !== t.data.length) {
      throw new Error(`safetensors: tensor ${t.name} has shape [${t.shape.join(', ')}] (${numel} values) but ${t.data.length} values`);
    }
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const headerBytes = Buffer.from(json, 'utf8');
  const out = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const t of tensors) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}

/** Parses and validates; `source` names the blob in errors (a file path, "stage state", ...). */
export function decodeSafeTensors(bytes: Uint8Array, source: string): SafeTensorsFile {
  const fail = (why: string): never => {
    throw new Error(`${source}: not a valid safetensors blob: ${why}`);
  };
  if (bytes.length < 8) fail(`${bytes.length} bytes, shorter than the 8-byte header length`);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > bytes.length - 8) fail(`header length ${headerLen} exceeds the ${bytes.length - 8} bytes that follow (truncated?)`);
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset + 8, headerLen).toString('utf8'));
  } catch (err) {
    fail(`header is not JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');
  const dataStart = 8 + headerLen;
  const dataLen = bytes.length - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, SafeTensor>();
  const spans: Array<[number, number, string]> = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null) fail('__metadata__ is not an object');
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`metadata ${k} is not a string`);
        metadata[k] = v as string;
      }
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e.dtype !== 'F32') fail(`tensor ${name} has dtype ${String(e.dtype)}; only F32 is supported`);
    if (!Array.isArray(e.shape) || !e.shape.every((s) => Number.isSafeInteger(s) && s >= 0)) fail(`tensor ${name} has a bad shape`);
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
      fail(`tensor ${name} has bad data_offsets`);
    }
    const [begin, end] = offsets as [number, number];
    const shape = e.shape as number[];
    const numel = shape.reduce((n, s) => n * s, 1);
    if (end - begin !== numel * 4) fail(`tensor ${name}: shape [${shape.join(', ')}] needs ${numel * 4} bytes, data_offsets span ${end - begin}`);
    if (end > dataLen) fail(`tensor ${name} ends at byte ${end} but the data section has ${dataLen} bytes (truncated?)`);
    spans.push([begin, end, name]);
    const absolute = bytes.byteOffset + dataStart + begin;
    // A view when aligned (the usual case for files this module wrote), else a copy.
    const data =
      absolute % 4 === 0
        ? new Float32Array(bytes.buffer, absolute, numel)
        : new Float32Array(new Uint8Array(bytes.subarray(dataStart + begin, dataStart + end)).buffer);  // a copy: a Buffer's slice() would be a view of its pool
    tensors.set(name, { name, shape, data });
  }
  spans.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < spans.length; i++) {
    if (spans[i][0] < spans[i - 1][1]) fail(`tensors ${spans[i - 1][2]} and ${spans[i][2]} overlap`);
  }
  return { metadata, tensors };
}
