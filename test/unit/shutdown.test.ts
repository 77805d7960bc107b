import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { exitOnSignals, type ShutdownStep } from '../../lib/shutdown.js';

const log = pino({ enabled: false });

/** Installs the handlers on a stand-in for process; resolves with the exit code. */
function install(steps: ShutdownStep[], timeoutMs = 1000) {
  const signals = new EventEmitter();
  let exited: (code: number) => void = () => undefined;
  const exitCode = new Promise<number>((resolve) => (exited = resolve));
  const codes: number[] = [];
  const remove = exitOnSignals(steps, {
    log,
    timeoutMs,
    signalSource: signals,
    exit: (code) => {
      codes.push(code);
      exited(code);
    },
  });
  return { signals, exitCode, codes, remove };
}

describe('exitOnSignals', () => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`runs every step in order on ${signal}, then exits 0`, async () => {
      const ran: string[] = [];
      const { signals, exitCode } = install([
        { name: 'timer', run: () => ran.push('timer') },
        { name: 'server', run: async () => ran.push('server') },
        { name: 'nats', run: () => new Promise((r) => setTimeout(r, 10)).then(() => ran.push('nats')) },
      ]);
      signals.emit(signal, signal);
      expect(await exitCode).toBe(0);
      expect(ran).toEqual(['timer', 'server', 'nats']);
    });
  }

  it('goes on past a step that fails', async () => {
    const ran: string[] = [];
    const { signals, exitCode } = install([
      { name: 'nats', run: () => Promise.reject(new Error('connection closed')) },
      { name: 'server', run: () => ran.push('server') },
    ]);
    signals.emit('SIGTERM', 'SIGTERM');
    expect(await exitCode).toBe(0);
    expect(ran).toEqual(['server']);
  });

  it('exits 1 when the steps do not finish within the bound, and only once', async () => {
    let finish: () => void = () => undefined;
    const { signals, exitCode, codes } = install([{ name: 'nats', run: () => new Promise<void>((r) => (finish = r)) }], 50);
    signals.emit('SIGTERM', 'SIGTERM');
    expect(await exitCode).toBe(1);
    finish();
    await new Promise((r) => setTimeout(r, 10));
    expect(codes).toEqual([1]);
  });

  it('removes its handlers on the first signal, so a second one gets the default action', async () => {
    const { signals, exitCode } = install([{ name: 'noop', run: () => undefined }]);
    expect(signals.listenerCount('SIGINT')).toBe(1);
    signals.emit('SIGINT', 'SIGINT');
    expect(signals.listenerCount('SIGINT')).toBe(0);
    expect(signals.listenerCount('SIGTERM')).toBe(0);
    expect(await exitCode).toBe(0);
  });

  it('can be removed before any signal', () => {
    const { signals, remove } = install([]);
    remove();
    expect(signals.listenerCount('SIGTERM')).toBe(0);
  });
});
