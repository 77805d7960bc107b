/**
 * The child's side of lab/json-line-child.ts: a lab program (traffic client, UDP client,
 * outbound server) reads commands from stdin ({"cmd":..,"id":N}) one at a time, in order (a
 * drain finishes before the next command), and writes one reply per command to stdout
 * ({"reply":<cmd>,"id":N,...}, or {"reply":"error","error":..}); "quit" is built in. It says
 * {"event":"ready"} once start() has worked, {"event":"error"} when it cannot start.
 */
import readline from 'node:readline';

export function out(obj: Record<string, unknown>, then?: () => void): void {
  process.stdout.write(JSON.stringify(obj) + '\n', then);
}

export interface JsonLineProgram {
  /** Answers per command name: the reply's fields (a throw answers with an error). */
  commands: Record<string, (msg: Record<string, unknown>) => Record<string, unknown> | Promise<Record<string, unknown>>>;
  /** Opens what the program serves; its failure is reported as {"event":"error"} and exits 1. */
  start(): Promise<void>;
  /** Called once start() has worked and the program was not told to quit meanwhile. */
  started?(): void;
  /** The fields of the ready event. */
  ready: Record<string, unknown>;
  /** Closes everything (quit, SIGTERM, the parent gone, or a failed start). */
  close(): void;
}

export async function serveJsonLines(p: JsonLineProgram): Promise<void> {
  let quitting = false;
  const quit = (reply?: Record<string, unknown>) => {
    if (quitting) return;
    quitting = true;
    p.close();
    if (reply) out(reply, () => process.exit(0));
    else process.exit(0);
  };

  let queue = Promise.resolve();
  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line);
      } catch {
        out({ reply: 'error', error: `not JSON: ${line.slice(0, 200)}` });
        return;
      }
      const id = msg.id === undefined ? {} : { id: msg.id };
      const cmd = String(msg.cmd);
      if (cmd === 'quit') return quit({ reply: 'quit', ...id });
      const handler = Object.hasOwn(p.commands, cmd) ? p.commands[cmd] : undefined;
      if (!handler) return out({ reply: 'error', ...id, error: `unknown cmd ${JSON.stringify(msg.cmd)}` });
      try {
        out({ reply: cmd, ...id, ...(await handler(msg)) });
      } catch (e) {
        out({ reply: 'error', ...id, error: (e as Error).message });
      }
    });
  });
  // The parent went away: nobody reads the reports any more.
  rl.on('close', () => void queue.then(() => quit()));
  process.on('SIGTERM', () => quit());

  try {
    await p.start();
  } catch (e) {
    p.close();
    out({ event: 'error', error: (e as Error).message }, () => process.exit(1));
    return;
  }
  if (quitting) return;
  p.started?.();
  out({ event: 'ready', ...p.ready });
}
