/**
 * outbound-server: the far end of a workload's outgoing connections (echo-server --outbound),
 * what a database or a primary is to a real workload. A standalone program, run as plain JS from
 * tsc's output inside the client's namespace:
 *
 *   nsenter --net=/run/netns/<client ns> node dist/lab/outbound-server.js --address A --port P
 *
 * Each accepted connection starts with an 8-byte hello (u32 LE connection index, u32 LE run seed);
 * every byte after it is checked against that connection's stream (lab/byte-stream.ts) and echoed
 * back unchanged, so that the workload checks the way back. Gap: the longest time between two
 * arrivals of data on a connection (the workload sends every interval, so a long gap is a stall).
 *
 * Control: JSON lines on stdin, one JSON line on stdout per command (`id` echoed):
 *   {"cmd":"stats"}                                   per-connection counters now
 *   {"cmd":"ask","address":A,"port":P,"line":"stats"} one request to a workload's control port
 *                                                      (from this namespace); its JSON answer
 *   {"cmd":"quit"}                                    close every socket and exit 0 (also when stdin closes)
 * Events: {"event":"ready","address","port"} once listening; {"event":"error",...} and exit 1 if not.
 * Dependency-free on purpose (node: modules and ./byte-stream.js only).
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { out, serveJsonLines } from './json-line-serve.js';
import { parseArgs } from 'node:util';
import { StreamVerifier, streamSeed } from './byte-stream.js';

const HELLO_BYTES = 8;
/** How far beyond the verified bytes a gap is searched for (a mismatch only). */
const SEARCH_AHEAD = 1 << 20;

interface Conn {
  socket: net.Socket;
  remote: string;
  hello: Buffer;
  index?: number;
  verifier?: StreamVerifier;
  echoed: number;
  closed: boolean;
  reset: boolean;
  error?: string;
  lastDataAt: number;
  maxGapMs: number;
}

const round = (ms: number) => Math.round(ms * 10) / 10;

class OutboundServer {
  readonly conns: Conn[] = [];
  private readonly server: net.Server;

  constructor() {
    this.server = net.createServer((s) => this.adopt(s));
  }

  listen(address: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen({ host: address, port, backlog: 4096 }, () => resolve());
    });
  }

  private adopt(socket: net.Socket): void {
    socket.setNoDelay(true);
    const c: Conn = {
      socket,
      remote: `${socket.remoteAddress}:${socket.remotePort}`,
      hello: Buffer.alloc(0),
      echoed: 0,
      closed: false,
      reset: false,
      lastDataAt: performance.now(),
      maxGapMs: 0,
    };
    this.conns.push(c);
    socket.on('data', (data: Buffer) => {
      const now = performance.now();
      c.maxGapMs = Math.max(c.maxGapMs, now - c.lastDataAt);
      c.lastDataAt = now;
      if (!c.verifier) {
        c.hello = Buffer.concat([c.hello, data]);
        if (c.hello.length < HELLO_BYTES) return;
        c.index = c.hello.readUInt32LE(0);
        c.verifier = new StreamVerifier(streamSeed(c.index, c.hello.readUInt32LE(4)));
        data = c.hello.subarray(HELLO_BYTES);
      }
      if (data.length === 0) return;
      c.verifier.feed(data, c.verifier.highWater + data.length + SEARCH_AHEAD);
      socket.write(data);
      c.echoed += data.length;
    });
    socket.on('error', (e: NodeJS.ErrnoException) => {
      c.error = e.message;
      if (e.code === 'ECONNRESET') c.reset = true;
    });
    socket.on('close', () => (c.closed = true));
  }

  stats(): Record<string, unknown> {
    const now = performance.now();
    return {
      perConnection: this.conns.map((c) => {
        const v = c.verifier;
        return {
          index: c.index ?? -1,
          remote: c.remote,
          received: v?.received ?? 0,
          verified: v?.highWater ?? 0,
          skipped: v?.skipped ?? 0,
          duplicated: v?.duplicated ?? 0,
          corruptAt: v?.corruptAt ?? -1,
          echoed: c.echoed,
          closed: c.closed,
          reset: c.reset,
          error: c.error ?? '',
          // A gap still going on counts too (an open connection that nothing reached for a while).
          maxGapMs: round(Math.max(c.maxGapMs, c.closed ? 0 : now - c.lastDataAt)),
        };
      }),
    };
  }

  close(): void {
    this.server.close();
    for (const c of this.conns) c.socket.destroy();
  }
}

/** One request line to a workload's control port; resolves with its JSON answer. */
function ask(address: string, port: number, line: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: address, port });
    let text = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer from ${address}:${port} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write(line + '\n'));
    s.on('data', (d) => (text += d.toString()));
    s.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    s.on('end', () => {
      clearTimeout(timer);
      s.destroy();
      try {
        resolve(JSON.parse(text));
      } catch {
        reject(new Error(`not JSON from ${address}:${port}: ${text.slice(0, 200)}`));
      }
    });
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { address: { type: 'string' }, port: { type: 'string' } }, strict: true });
  const port = Number(values.port);
  if (!values.address || !Number.isInteger(port) || port < 1 || port > 65535) {
    out({ event: 'error', error: '--address IPv4 and --port 1-65535 are required' }, () => process.exit(2));
    return;
  }
  const address = values.address;
  const server = new OutboundServer();
  await serveJsonLines({
    commands: {
      stats: () => ({ ...server.stats() }),
      ask: async (msg) => ({ answer: await ask(String(msg.address), Number(msg.port), String(msg.line ?? 'stats')) }),
    },
    start: () => server.listen(address, port).catch((e: Error) => Promise.reject(new Error(`listen ${address}:${port}: ${e.message}`))),
    ready: { address, port },
    close: () => server.close(),
  });
}

void main();
