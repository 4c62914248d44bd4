// Field readers for the control protocol's JSON messages: a decoder is a list
// of its fields, each with the reader that checks it, and `jsonDecoder`
// runs the list over the parsed bytes. A reader returns the value it was given
// (typed), or throws naming the field by its path from the message's root
// (`counters.compute.busy_ms`, `signers[2].key`); jsonDecoder turns that
// into a ControlMessageError of the message being read.
//
// Unknown fields: lenient. Objects are checked, not copied: fields a reader
// does not list are left as they are, unchecked, so a newer peer may add
// fields (forward compatibility) and a reader that rewrites a record
// (`{ ...before, status }`) keeps them. A field that is listed is always
// checked: required ones must be present, optional ones may be absent but,
// present, must be right (null is not absent: only a nullable field takes it).
//
// Numbers: JSON cannot hold NaN or ±Infinity (JSON.stringify writes null), and
// every JSON number parses finite except a literal beyond float64's range
// (1e999), which no encoder writes: `real` refuses it. Where a producer may
// send a value that is not finite, the field reads `nullable(real)` and the
// type says `number | null`.
import { ControlMessageError, decodeJson } from './json-message.ts';

/** Checks the value at `at` and returns it typed, or throws a FieldError naming `at`. */
export type FieldReader<T> = (value: unknown, at: string) => T;

/** A field that may be absent (`undefined` after parsing): checked by `read` when present. */
export interface OptionalField<T> {
  readonly optional: FieldReader<T>;
}

export type FieldList = Readonly<Record<string, FieldReader<unknown> | OptionalField<unknown>>>;

type RequiredKeys<F extends FieldList> = { [K in keyof F]: F[K] extends OptionalField<unknown> ? never : K }[keyof F];
type OptionalKeys<F extends FieldList> = Exclude<keyof F, RequiredKeys<F>>;
/** The object a field list describes: required fields as their readers return them, optional ones with `?`. */
export type FieldsOf<F extends FieldList> =
  & { [K in RequiredKeys<F>]: F[K] extends FieldReader<infer T> ? T : never }
  & { [K in OptionalKeys<F>]?: F[K] extends OptionalField<infer T> ? T : never };

/** What a field reader throws: the path of the field and what is wrong with it. */
export class FieldError extends Error {
  constructor(readonly field: string, readonly detail: string) {
    super(`${field ? `'${field}' ` : ''}${detail}`);
    this.name = 'FieldError';
  }
}

/** A short rendering of a JSON value for an error: the value as JSON, cut at 60 characters. */
export function describeJson(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);  // 1e999 parses to Infinity
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** The error for a value that is not what the field must be, or is not there at all. */
function wrong(at: string, value: unknown, must: string): FieldError {
  return new FieldError(at, value === undefined ? 'is missing' : `must be ${must}, got ${describeJson(value)}`);
}

/** A reader of one JSON scalar: a test of the value, and what the field must be ("a non-negative integer"). */
export interface ScalarReader<T> extends FieldReader<T> {
  readonly test: (value: unknown) => boolean;
  readonly must: string;
}

function scalar<T>(test: (value: unknown) => boolean, must: string): ScalarReader<T> {
  const read = (value: unknown, at: string): T => {
    if (!test(value)) throw wrong(at, value, must);
    return value as T;
  };
  return Object.assign(read, { test, must });
}

/** Counts, indices, steps, generations, sequences, byte sizes, pids. */
export const count = scalar<number>((v) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0, 'a non-negative integer');
/** A measurement (a time, a rate, a fraction, a loss): any finite number. */
export const real = scalar<number>((v) => typeof v === 'number' && Number.isFinite(v), 'a finite number');
export const text = scalar<string>((v) => typeof v === 'string', 'a string');
export const flag = scalar<boolean>((v) => typeof v === 'boolean', 'true or false');
/** A SHA-256 digest as lowercase hex: what a holder reports of an object it put in the store, for its reader to check. */
export const sha256Digest = scalar<string>((v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v), 'a SHA-256 digest (64 lowercase hex digits)');

/** One of a few strings (or other JSON scalars): an enum such as a message's `type`. */
export function oneOf<const V extends string | number | boolean>(values: readonly V[]): ScalarReader<V> {
  return scalar<V>((v) => values.includes(v as V), values.length === 1 ? JSON.stringify(values[0]) : `one of ${values.map((x) => JSON.stringify(x)).join(', ')}`);
}

/** null, or what `read` accepts: where a producer writes a value JSON cannot hold (NaN) or has none yet. */
export function nullable<T>(read: ScalarReader<T>): ScalarReader<T | null>;
export function nullable<T>(read: FieldReader<T>): FieldReader<T | null>;
export function nullable<T>(read: FieldReader<T> | ScalarReader<T>): FieldReader<T | null> {
  if ('must' in read) return scalar<T | null>((v) => v === null || read.test(v), `${read.must} or null`);
  return (value, at) => (value === null ? null : read(value, at));
}

export function optional<T>(read: FieldReader<T>): OptionalField<T> {
  return { optional: read };
}

/** An array whose every element `read` accepts; elements are named `at[i]`. */
export function arrayOf<T>(read: FieldReader<T>): FieldReader<T[]> {
  return (value, at) => {
    if (!Array.isArray(value)) throw wrong(at, value, 'an array');
    value.forEach((element, i) => read(element, `${at}[${i}]`));
    return value as T[];
  };
}

/** An array of exactly two elements, read by `first` and `second`. */
export function pair<A, B>(first: FieldReader<A>, second: FieldReader<B>): FieldReader<[A, B]> {
  return (value, at) => {
    if (!Array.isArray(value) || value.length !== 2) throw wrong(at, value, 'an array of two');
    first(value[0], `${at}[0]`);
    second(value[1], `${at}[1]`);
    return value as [A, B];
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function readFields(fields: FieldList, value: Record<string, unknown>, at: string): void {
  for (const [key, field] of Object.entries(fields)) {
    const path = at ? `${at}.${key}` : key;
    const present = Object.hasOwn(value, key) ? value[key] : undefined;
    if (typeof field === 'function') field(present, path);
    else if (present !== undefined) field.optional(present, path);
  }
}

function requireObject(value: unknown, at: string): Record<string, unknown> {
  if (!isObject(value)) throw wrong(at, value, 'an object');
  return value;
}

/** An object with the listed fields (others are left unchecked: see the header). */
export function object<const F extends FieldList>(fields: F): FieldReader<FieldsOf<F>> {
  return (value, at) => {
    readFields(fields, requireObject(value, at), at);
    return value as FieldsOf<F>;
  };
}

/** One of several kinds of object, told apart by the string in `tag`; each kind lists its other fields. */
export function tagged<const K extends string, const V extends Readonly<Record<string, FieldList>>>(
  tag: K, kinds: V,
): FieldReader<{ [T in keyof V & string]: { [_ in K]: T } & FieldsOf<V[T]> }[keyof V & string]> {
  const readTag = oneOf(Object.keys(kinds));
  return (value, at) => {
    const map = requireObject(value, at);
    const kind = readTag(Object.hasOwn(map, tag) ? map[tag] : undefined, at ? `${at}.${tag}` : tag);
    readFields(kinds[kind] as FieldList, map, at);
    return value as never;
  };
}

/**
 * A message's decoder: parses `bytes` as JSON and reads the message with
 * `read`; throws a ControlMessageError naming what was read (`what`, by
 * default `name`) and the field.
 */
export function jsonDecoder<T>(name: string, read: FieldReader<T>): (bytes: Uint8Array, what?: string) => T {
  return (bytes, what = name) => {
    const value = decodeJson(bytes, what);
    try {
      return read(value, '');
    } catch (err) {
      if (err instanceof FieldError) throw new ControlMessageError(what, err.field, err.detail);
      throw err;
    }
  };
}
