/**
 * Keep-alive HTTP clients that check every response body (run in the lab's client namespace by
 * lab/http-keepalive.ts): K connections, each sending `GET /req/<connection>/<n>` one after the
 * other on the same connection and expecting `<prefix> /req/<connection>/<n>\n` back (the lab's
 * nginx configuration answers that). A connection that breaks counts its request as failed and
 * is reopened (counted). Raw sockets on purpose: an HTTP agent would reconnect without saying.
 *
 * Usage: node http-keepalive-client.js ADDRESS PORT CONNECTIONS PREFIX
 * Commands (JSON lines, lab/json-line-serve.ts): stats; stop (finish in-flight requests, then stats).
 */
import { connect, type Socket } from 'node:net';
import { serveJsonLines } from './json-line-serve.js';

const [address, portText, connectionsText, prefix] = process.argv.slice(2);
const port = Number(portText);
const connections = Number(connectionsText);

const stats = { requests: 0, failures: 0, bodyMismatches: 0, reconnects: 0, maxLatencyMs: 0, errors: [] as string[] };
let sending = true;
const inFlight = new Set<Promise<void>>();

function note(error: string): void {
  if (stats.errors.length < 10) stats.errors.push(error);
}

/** One connection's loop: a request, its whole response checked, the next request. */
async function runConnection(index: number): Promise<void> {
  let n = 0;
  let first = true;
  while (sending) {
    if (!first) stats.reconnects++;
    first = false;
    const socket = await open().catch((e: Error) => {
      note(`connection ${index}: connect: ${e.message}`);
      return undefined;
    });
    if (!socket) {
      await sleep(100);
      continue;
    }
    const reader = responseReader(socket);
    try {
      while (sending) {
        const path = `/req/${index}/${n++}`;
        const t0 = performance.now();
        socket.write(`GET ${path} HTTP/1.1\r\nHost: ${address}\r\n\r\n`);
        const res = await reader.next();
        stats.maxLatencyMs = Math.max(stats.maxLatencyMs, performance.now() - t0);
        if (res.status !== 200 || res.body !== `${prefix} ${path}\n`) {
          stats.bodyMismatches++;
          note(`connection ${index}: ${path}: status ${res.status}, body ${JSON.stringify(res.body.slice(0, 80))}`);
        } else stats.requests++;
      }
      socket.end();
    } catch (e) {
      stats.failures++;
      note(`connection ${index}: ${(e as Error).message}`);
      socket.destroy();
      await sleep(100);
    }
  }
}

function open(): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: address, port });
    s.setNoDelay(true);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Parses HTTP/1.1 responses with Content-Length off a socket, one per next(). */
function responseReader(socket: Socket) {
  let buf = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  let failure: Error | undefined;
  socket.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  socket.on('error', (e) => ((failure = e), wake?.()));
  socket.on('close', () => ((failure ??= new Error('connection closed by the server')), wake?.()));
  return {
    async next(): Promise<{ status: number; body: string }> {
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end >= 0) {
          const head = buf.subarray(0, end).toString('latin1');
          const length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? 0);
          if (buf.length >= end + 4 + length) {
            const body = buf.subarray(end + 4, end + 4 + length).toString('utf8');
            buf = buf.subarray(end + 4 + length);
            return { status: Number(head.split(' ')[1]), body };
          }
        }
        if (failure) throw failure;
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

void serveJsonLines({
  ready: { connections },
  async start() {
    // Every connection must open once before we say ready.
    const probe = await open();
    probe.destroy();
  },
  started() {
    for (let i = 0; i < connections; i++) {
      const run = runConnection(i);
      inFlight.add(run);
    }
  },
  commands: {
    stats: () => ({ ...stats }),
    async stop() {
      sending = false;
      await Promise.all(inFlight);
      return { ...stats };
    },
  },
  close() {
    sending = false;
  },
});
