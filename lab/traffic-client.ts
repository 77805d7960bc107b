/**
 * traffic-client: real TCP clients that check every echoed byte. A standalone program, run as
 * plain JS from tsc's output inside the client's namespace:
 *
 *   nsenter --net=/run/netns/<client ns> node dist/lab/traffic-client.js \
 *     --address A --port P --connections N [--interval-ms 20] [--chunk 64]
 *     [--max-outstanding 262144] [--connect-timeout-ms 30000] [--seed 0]
 *
 * Each connection sends `chunk` bytes of its own deterministic stream (lab/byte-stream.ts) every
 * interval while less than max-outstanding bytes wait for their echo, and verifies each echoed
 * byte against the same stream. Stall: how long a connection had bytes outstanding without
 * receiving any; measured on every data event and, for stalls still going on, at report time.
 *
 * Control: JSON lines on stdin, one JSON line on stdout per command (`reply` = the command, `id`
 * echoed when given):
 *   {"cmd":"stats"}                 counters now
 *   {"cmd":"window"}                stats of the window that closes now (its maxStallMs), then a new window
 *   {"cmd":"drain","timeoutMs":N}   stop sending, wait until every live connection got all it sent
 *                                   (its reply adds perConnectionMaxStallMs)
 *   {"cmd":"quit"}                  close every socket and exit 0 (also when stdin closes)
 * Events: {"event":"ready","connections":N} once all are connected; {"event":"error",...} and
 * exit 1 if they cannot connect in time.
 * Dependency-free on purpose (node: modules and ./byte-stream.js only).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { out, serveJsonLines } from './json-line-serve.js';
import { parseArgs } from 'node:util';
import { StreamVerifier, StreamWriter, streamSeed } from './byte-stream.js';

interface Options {
  address: string;
  port: number;
  connections: number;
  intervalMs: number;
  chunk: number;
  maxOutstanding: number;
  connectTimeoutMs: number;
  connectConcurrency: number;
  seed: number;
}

interface Conn {
  index: number;
  socket: net.Socket;
  writer: StreamWriter;
  verifier: StreamVerifier;
  sent: number;
  closed: boolean;
  error?: string;
  /** Since when bytes have been outstanding with nothing received; undefined when nothing is outstanding. */
  stallSince?: number;
  /** This connection's longest stall so far (ms). */
  maxStall: number;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string' },
      port: { type: 'string' },
      connections: { type: 'string', default: '1' },
      'interval-ms': { type: 'string', default: '20' },
      chunk: { type: 'string', default: '64' },
      'max-outstanding': { type: 'string', default: String(256 * 1024) },
      'connect-timeout-ms': { type: 'string', default: '30000' },
      'connect-concurrency': { type: 'string', default: '256' },
      seed: { type: 'string', default: '0' },
    },
    strict: true,
  });
  const int = (name: string, v: string | undefined, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${v}`);
    return n;
  };
  if (!values.address) throw new Error('--address is required');
  return {
    address: values.address,
    port: int('port', values.port, 1),
    connections: int('connections', values.connections, 1),
    intervalMs: int('interval-ms', values['interval-ms'], 1),
    chunk: int('chunk', values.chunk, 1),
    maxOutstanding: int('max-outstanding', values['max-outstanding'], 1),
    connectTimeoutMs: int('connect-timeout-ms', values['connect-timeout-ms'], 1),
    connectConcurrency: int('connect-concurrency', values['connect-concurrency'], 1),
    seed: int('seed', values.seed, 0),
  };
}

class TrafficClient {
  private readonly conns: Conn[] = [];
  private sending = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt = performance.now();
  private maxStall = 0;
  private maxStallConn = -1;
  private windowStart = performance.now();
  private windowMaxStall = 0;
  private windowMaxStallConn = -1;
  private readonly errors: string[] = [];

  constructor(private readonly o: Options) {}

  async connectAll(): Promise<void> {
    const o = this.o;
    let next = 0;
    let done = 0;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`only ${done} of ${o.connections} connections to ${o.address}:${o.port} within ${o.connectTimeoutMs} ms`)),
        o.connectTimeoutMs,
      );
      const launch = (): void => {
        while (next < o.connections && next - done < o.connectConcurrency) {
          const index = next++;
          const socket = net.connect({ host: o.address, port: o.port });
          const onError = (e: Error) => {
            clearTimeout(timer);
            reject(new Error(`connection ${index} to ${o.address}:${o.port}: ${e.message}`));
          };
          socket.once('error', onError);
          socket.once('connect', () => {
            socket.off('error', onError);
            this.adopt(index, socket);
            done++;
            if (done === o.connections) {
              clearTimeout(timer);
              resolve();
            } else launch();
          });
        }
      };
      launch();
    });
  }

  private adopt(index: number, socket: net.Socket): void {
    socket.setNoDelay(true);
    const seed = streamSeed(index, this.o.seed);
    const c: Conn = { index, socket, writer: new StreamWriter(seed), verifier: new StreamVerifier(seed), sent: 0, closed: false, maxStall: 0 };
    this.conns[index] = c;
    socket.on('data', (data: Buffer) => this.onData(c, data));
    socket.on('error', (e) => {
      c.error = e.message;
      if (this.errors.length < 10) this.errors.push(`connection ${index}: ${e.message}`);
    });
    socket.on('close', () => {
      c.closed = true;
      c.stallSince = undefined;
    });
  }

  private onData(c: Conn, data: Buffer): void {
    const now = performance.now();
    if (c.stallSince !== undefined) this.noteStall(c, now - c.stallSince);
    c.verifier.feed(data, c.sent);
    c.stallSince = c.verifier.outstanding(c.sent) > 0 ? now : undefined;
  }

  private noteStall(c: Conn, ms: number): void {
    if (ms > c.maxStall) c.maxStall = ms;
    if (ms > this.maxStall) {
      this.maxStall = ms;
      this.maxStallConn = c.index;
    }
    if (ms > this.windowMaxStall) {
      this.windowMaxStall = ms;
      this.windowMaxStallConn = c.index;
    }
  }

  /**
   * Every connection sends once per interval, but the connections are spread over slices of about
   * 5 ms (connection i belongs to slice i % slices): one big burst per interval would block the event
   * loop for a while and show up as stalls of the client's own making.
   */
  startSending(): void {
    this.sending = true;
    const slices = Math.max(1, Math.min(this.conns.length, Math.round(this.o.intervalMs / 5)));
    let slice = 0;
    this.timer = setInterval(() => {
      this.tick(slice, slices);
      slice = (slice + 1) % slices;
    }, this.o.intervalMs / slices);
  }

  stopSending(): void {
    this.sending = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(slice: number, slices: number): void {
    if (!this.sending) return;
    const now = performance.now();
    const { chunk, maxOutstanding } = this.o;
    for (let i = slice; i < this.conns.length; i += slices) {
      const c = this.conns[i];
      if (c.closed || c.socket.writableNeedDrain) continue;
      const outstanding = c.verifier.outstanding(c.sent);
      if (outstanding + chunk > maxOutstanding) continue;
      if (outstanding === 0) c.stallSince = now;
      c.socket.write(c.writer.next(chunk));
      c.sent += chunk;
    }
  }

  /** Stalls still going on, measured now (they are recorded for good on their next data event). */
  private ongoingStall(now: number): { ms: number; conn: number } {
    let ms = 0;
    let conn = -1;
    for (const c of this.conns)
      if (!c.closed && c.stallSince !== undefined && now - c.stallSince > ms) {
        ms = now - c.stallSince;
        conn = c.index;
      }
    return { ms, conn };
  }

  /**
   * Totals. `finalLoss`: count every byte not echoed as lost (after a drain); otherwise only the
   * outstanding bytes of closed connections are lost (the others may still arrive).
   */
  stats(finalLoss = false): Record<string, unknown> {
    const now = performance.now();
    let alive = 0;
    let sent = 0;
    let received = 0;
    let verified = 0;
    let lost = 0;
    let duplicated = 0;
    let reordered = 0;
    let corrupted = 0;
    let outstanding = 0;
    const mismatches: { connection: number; offset: number }[] = [];
    for (const c of this.conns) {
      const v = c.verifier;
      if (!c.closed) alive++;
      sent += c.sent;
      received += v.received;
      verified += v.highWater;
      duplicated += v.duplicated;
      reordered += v.reordered;
      const o = v.outstanding(c.sent);
      lost += v.skipped + (c.closed || finalLoss ? o : 0);
      if (!c.closed) outstanding += o;
      if (v.corruptAt !== undefined) {
        corrupted++;
        if (mismatches.length < 10) mismatches.push({ connection: c.index, offset: v.corruptAt });
      }
    }
    const ongoing = this.ongoingStall(now);
    const maxStallMs = Math.max(this.maxStall, ongoing.ms);
    return {
      connections: this.o.connections,
      alive,
      closed: this.conns.length - alive,
      sentBytes: sent,
      receivedBytes: received,
      verifiedBytes: verified,
      outstandingBytes: outstanding,
      bytesLost: lost,
      bytesDuplicated: duplicated,
      bytesReordered: reordered,
      corrupted,
      maxStallMs: round(maxStallMs),
      maxStallConnection: maxStallMs === this.maxStall ? this.maxStallConn : ongoing.conn,
      currentStallMs: round(ongoing.ms),
      elapsedMs: round(now - this.startedAt),
      sending: this.sending,
      errors: this.errors,
      mismatches,
    };
  }

  window(): Record<string, unknown> {
    const now = performance.now();
    const ongoing = this.ongoingStall(now);
    const max = Math.max(this.windowMaxStall, ongoing.ms);
    const r = {
      ...this.stats(),
      windowMs: round(now - this.windowStart),
      maxStallMs: round(max),
      maxStallConnection: max === this.windowMaxStall ? this.windowMaxStallConn : ongoing.conn,
      totalMaxStallMs: round(Math.max(this.maxStall, ongoing.ms)),
    };
    this.windowStart = now;
    this.windowMaxStall = 0;
    this.windowMaxStallConn = -1;
    return r;
  }

  async drain(timeoutMs: number): Promise<Record<string, unknown>> {
    this.stopSending();
    const start = performance.now();
    const settled = () => this.conns.every((c) => c.closed || (c.verifier.outstanding(c.sent) === 0 && c.verifier.pendingBytes === 0));
    while (!settled() && performance.now() - start < timeoutMs) await new Promise((r) => setTimeout(r, 10));
    const now = performance.now();
    // Per connection, for percentiles over connections (only here: stats() stays small).
    const perConnectionMaxStallMs = this.conns.map((c) => round(Math.max(c.maxStall, !c.closed && c.stallSince !== undefined ? now - c.stallSince : 0)));
    return { ...this.stats(true), drained: settled(), drainMs: round(now - start), perConnectionMaxStallMs };
  }

  closeAll(): void {
    this.stopSending();
    for (const c of this.conns) c?.socket.destroy();
  }
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
}

async function main(): Promise<void> {
  let o: Options;
  try {
    o = parseOptions(process.argv.slice(2));
  } catch (e) {
    out({ event: 'error', error: (e as Error).message }, () => process.exit(2));
    return;
  }
  const client = new TrafficClient(o);
  await serveJsonLines({
    commands: {
      stats: () => ({ ...client.stats() }),
      window: () => ({ ...client.window() }),
      drain: async (msg) => ({ ...(await client.drain(Number(msg.timeoutMs ?? 10_000))) }),
    },
    start: () => client.connectAll(),
    started: () => client.startSending(),
    ready: { connections: o.connections },
    close: () => client.closeAll(),
  });
}

void main();
