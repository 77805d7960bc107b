/**
 * How a long-running godwit process (controller, agent) stops: on SIGINT or SIGTERM it runs its
 * stop steps in order (timers, gRPC server, NATS) and exits 0; if they do not finish within a
 * bound it exits 1 anyway, naming the step that hung. A second signal during the stop gets the
 * default action (the process ends at once), as the handlers are removed on the first.
 */
import type { Logger } from './log.js';

/**
 * Below the 2.5 s the lab gives a process between SIGTERM and SIGKILL (lab/lab.ts stopPid), so a
 * hung step is logged by name rather than cut off by the kill.
 */
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 2_000;

/** One thing to stop; a step that throws is logged and the next one still runs. */
export interface ShutdownStep {
  name: string;
  run: () => unknown;
}

export interface ShutdownOptions {
  log: Logger;
  /** Logged with the signal when the stop begins. */
  message?: string;
  timeoutMs?: number;
  signals?: readonly NodeJS.Signals[];
  /** Where the signals arrive: process; replaced in tests. */
  signalSource?: Pick<NodeJS.EventEmitter, 'on' | 'off'>;
  /** process.exit; replaced in tests. */
  exit?: (code: number) => void;
}

function defaultShutdownOpts(): Required<Omit<ShutdownOptions, 'log'>> {
  return {
    message: 'shutting down',
    timeoutMs: DEFAULT_SHUTDOWN_TIMEOUT_MS,
    signals: ['SIGINT', 'SIGTERM'],
    signalSource: process,
    exit: (code) => process.exit(code),
  };
}

/**
 * Installs the signal handlers. Returns a function that removes them (for tests; a process
 * keeps them for its life).
 */
export function exitOnSignals(steps: readonly ShutdownStep[], options: ShutdownOptions): () => void {
  const opts = { ...defaultShutdownOpts(), ...options };
  const { log } = opts;
  const onSignal = (signal: NodeJS.Signals) => void stop(signal);
  const remove = () => {
    for (const s of opts.signals) opts.signalSource.off(s, onSignal);
  };

  async function stop(signal: NodeJS.Signals): Promise<void> {
    remove();
    log.info({ signal }, opts.message);
    let exited = false;
    const exit = (code: number) => {
      if (exited) return;
      exited = true;
      opts.exit(code);
    };
    let current = '';
    const timer = setTimeout(() => {
      log.error({ signal, step: current, timeoutMs: opts.timeoutMs }, 'shutdown did not finish in time; exiting anyway');
      exit(1);
    }, opts.timeoutMs);
    for (const step of steps) {
      current = step.name;
      try {
        await step.run();
      } catch (err) {
        log.warn({ err, step: step.name }, 'shutdown step failed; going on');
      }
    }
    clearTimeout(timer);
    exit(0);
  }

  for (const s of opts.signals) opts.signalSource.on(s, onSignal);
  return remove;
}
