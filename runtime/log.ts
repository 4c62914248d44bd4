// pino JSON lines on stderr, one logger per process; children carry the run,
// replica, stage and, on per-microbatch lines, step, trace_id and span_id.
// On a terminal the same records are written as readable lines instead
// (CARAVAN_LOG_FORMAT=json|pretty overrides the choice), so a newcomer
// watching a host sees sentences and a log shipper still gets JSON.
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

export const LOG_LEVELS = ['silent', 'error', 'warn', 'info', 'debug'] as const;

export function createLogger(name: string, level = process.env.CARAVAN_LOG_LEVEL ?? 'info'): Logger {
  const format = process.env.CARAVAN_LOG_FORMAT ?? (process.stderr.isTTY ? 'pretty' : 'json');
  if (format !== 'json' && format !== 'pretty') throw new Error(`CARAVAN_LOG_FORMAT=${format}: json or pretty`);
  const destination = format === 'pretty' ? prettyStream(process.stderr, Boolean(process.stderr.isTTY)) : pino.destination(2);
  return pino({ name, level, base: { pid: process.pid } }, destination);
}

const LEVELS: Record<number, [string, string]> = {
  10: ['TRACE', '\x1b[90m'], 20: ['DEBUG', '\x1b[36m'], 30: ['INFO ', '\x1b[32m'], 40: ['WARN ', '\x1b[33m'], 50: ['ERROR', '\x1b[31m'], 60: ['FATAL', '\x1b[35m'],
};
// Shown first, in this order, as the line's context; pid and hostname are left out.
const CONTEXT = ['run', 'host', 'replica', 'stage', 'step'];
const HIDDEN = new Set(['level', 'time', 'name', 'msg', 'pid', 'hostname', ...CONTEXT]);

/** One readable line per pino record: time, level, logger, context, message, then the other fields as key=value. */
export function prettyLine(line: string, color: boolean): string {
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(line);
  } catch {
    return line;
  }
  const [label, tint] = LEVELS[Number(r.level)] ?? [String(r.level), ''];
  const time = typeof r.time === 'number' ? new Date(r.time).toISOString().slice(11, 23) : '';
  const context = CONTEXT.filter((k) => r[k] !== undefined).map((k) => `${k}=${r[k]}`).join(' ');
  const fields = Object.entries(r).filter(([k]) => !HIDDEN.has(k)).map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' ');
  const level = color ? `${tint}${label}\x1b[0m` : label;
  return `${time} ${level} ${r.name ?? ''}${context ? ` [${context}]` : ''}: ${r.msg ?? ''}${fields ? `  ${fields}` : ''}`;
}

function prettyStream(out: NodeJS.WritableStream, color: boolean): DestinationStream {
  return { write: (chunk: string) => { for (const line of chunk.split('\n')) if (line) out.write(`${prettyLine(line, color)}\n`); } };
}

/**
 * Where `err` was made, on one line: its innermost stack frames (caravan's files relative to the checkout,
 * node_modules packages by name), for a child whose driver keeps only its last line of stderr — a bare
 * "timeout" from a NATS request says nothing of which request it was.
 */
export function errorFrames(err: unknown, frames = 6): string {
  // An error wrapped with a prefix keeps the one it wraps as its cause: that one's frames say where it was made.
  while (err instanceof Error && err.cause instanceof Error && err.cause.stack) err = err.cause;
  if (!(err instanceof Error) || !err.stack) return '';
  const at = err.stack.split('\n').filter((l) => /^\s+at /.test(l) && !l.includes('node:internal')).slice(0, frames).map((l) => l.trim().slice(3)
    .replace(/\((?:file:\/\/)?\S*?\/node_modules\/((?:@[^/]+\/)?[^/]+)\/\S*?(:\d+):\d+\)/, '($1$2)')
    .replace(/\((?:file:\/\/)?\S*?\/((?:runtime|actors|schemas|native)\/\S*?:\d+):\d+\)/, '($1)'));
  return at.length ? ` [at ${at.join(' < ')}]` : '';
}
