import { pino, type Logger } from 'pino';

/**
 * One root logger per process. NDJSON on stderr so stdout stays free for a command's own output
 * (the demo's table, `--json` results). Components take child loggers: log.child({ host }).
 */
export function createLogger(name: string, level = process.env.GODWIT_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}

export type { Logger };
