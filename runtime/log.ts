// pino JSON lines on stderr, one logger per process; children carry the run,
// replica and stage. Pretty on a TTY is left to `pino-pretty` if a user pipes
// through it: the lines stay machine-readable by default.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level = process.env.CARAVAN_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
