// Control messages and run records are small JSON objects, readable in
// `nats sub` and `nats kv get` output. Reading one is two checks: the bytes
// are JSON, and every field is what the protocol says. Both failures throw a
// ControlMessageError naming what was read and which field is wrong, the way
// decodeFrame's FrameError does for tensor frames, so a reader can count and
// log a bad message and go on.
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

/** A control message or run record that is not what the protocol says: `what` was read, `field` is wrong ('' for the whole). */
export class ControlMessageError extends Error {
  constructor(readonly what: string, readonly field: string, detail: string) {
    super(`${what}: ${field ? `'${field}' ` : ''}${detail}`);
    this.name = 'ControlMessageError';
  }
}

/** JSON bytes to a value, unchecked: decoders of the protocol's messages start here. */
export function decodeJson<T = unknown>(bytes: Uint8Array, what: string): T {
  try {
    return JSON.parse(decoder.decode(bytes)) as T;
  } catch (err) {
    throw new ControlMessageError(what, '', `is not valid JSON: ${(err as Error).message}`);
  }
}
