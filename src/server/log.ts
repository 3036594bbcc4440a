import pino from 'pino';

export type Logger = pino.Logger;

// Structured logs on stderr, so stdout stays for the command's own output (and --json).
export function createLogger(level: string = process.env.BUILDCLOUD_LOG_LEVEL || 'info', name = 'buildcloud'): Logger {
  return pino({ name, level, base: undefined, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination(2));
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
