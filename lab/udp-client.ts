/**
 * udp-client: UDP flows that check every echo. A standalone program, run as plain JS from tsc's
 * output inside the client's namespace (lab/udp-traffic.ts starts it):
 *
 *   nsenter --net=/run/netns/<client ns> node dist/lab/udp-client.js \
 *     --address A --port P --flows K [--interval-ms 100] [--size 64] [--seed 0]
 *     [--broken-after-ms 2000]
 *
 * One socket per flow, connected to A:P (a source port of its own: one 5-tuple per flow, which
 * steering keeps on its backend; a connected socket also takes replies only from A:P, so an
 * echo that comes back from the backend's own address instead of the VIP is not counted). Each
 * flow sends one datagram (lab/udp-flow.ts) per interval and checks each echo.
 *
 * Control: JSON lines on stdin, one JSON line on stdout per command (`reply` = the command, `id`
 * echoed when given):
 *   {"cmd":"stats"}                 totals now (lost: the holes below each flow's highest echo)
 *   {"cmd":"window"}                totals, plus the longest gap since the last window
 *   {"cmd":"drain","graceMs":N}     judge broken flows now (still sending), stop sending, wait N ms
 *                                   for the last echoes, then final totals (lost: all missing)
 *   {"cmd":"quit"}                  close every socket and exit 0 (also when stdin closes)
 * Events: {"event":"ready","flows":K} once every socket is bound and connected, and sending has begun.
 * Dependency-free on purpose (node: modules and ./udp-flow.js only).
 */
import dgram from 'node:dgram';
import { performance } from 'node:perf_hooks';
import { out, serveJsonLines } from './json-line-serve.js';
import { parseArgs } from 'node:util';
import { UdpFlowLedger, checkDatagram, encodeDatagram, totals, type UdpFlowStats } from './udp-flow.js';

interface Options {
  address: string;
  port: number;
  flows: number;
  intervalMs: number;
  size: number;
  seed: number;
  brokenAfterMs: number;
}

interface Flow {
  index: number;
  socket: dgram.Socket;
  ledger: UdpFlowLedger;
  error?: string;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      address: { type: 'string' },
      port: { type: 'string' },
      flows: { type: 'string', default: '1' },
      'interval-ms': { type: 'string', default: '100' },
      size: { type: 'string', default: '64' },
      seed: { type: 'string', default: '0' },
      'broken-after-ms': { type: 'string', default: '2000' },
    },
    strict: true,
  });
  const int = (name: string, v: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name} must be an integer in ${min}..${max}, got ${v}`);
    return n;
  };
  if (!values.address) throw new Error('--address is required');
  return {
    address: values.address,
    port: int('port', values.port, 1, 65535),
    flows: int('flows', values.flows, 1),
    intervalMs: int('interval-ms', values['interval-ms'], 1),
    // The echo server takes datagrams up to 2048 bytes (echo-server.c UDP_MAX_DATAGRAM).
    size: int('size', values.size, 16, 2048),
    seed: int('seed', values.seed, 0, 2 ** 32 - 1),
    brokenAfterMs: int('broken-after-ms', values['broken-after-ms'], 1),
  };
}

class UdpClient {
  private readonly flows: Flow[] = [];
  private timer: NodeJS.Timeout | undefined;
  private sending = false;
  private readonly errors: string[] = [];
  private readonly startedAt = performance.now();
  private windowStart = performance.now();

  constructor(private readonly o: Options) {}

  async openAll(): Promise<void> {
    for (let i = 0; i < this.o.flows; i++) this.flows.push(await this.open(i));
  }

  private open(index: number): Promise<Flow> {
    const socket = dgram.createSocket({ type: 'udp4' });
    const flow: Flow = { index, socket, ledger: new UdpFlowLedger(index) };
    socket.on('message', (msg) => this.onEcho(flow, msg));
    // ECONNREFUSED from an ICMP port-unreachable and the like: noted, the flow carries on.
    socket.on('error', (e) => this.noteError(flow, e));
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.connect(this.o.port, this.o.address, () => {
        socket.off('error', reject);
        resolve(flow);
      });
    });
  }

  private noteError(flow: Flow, e: Error): void {
    flow.error = e.message;
    if (this.errors.length < 10) this.errors.push(`flow ${flow.index}: ${e.message}`);
  }

  private onEcho(flow: Flow, msg: Buffer): void {
    const now = performance.now();
    const c = checkDatagram(msg, flow.index, this.o.seed, this.o.size);
    if (c.ok) flow.ledger.noteEcho(c.seq, now);
    else flow.ledger.noteCorrupt(c.why);
  }

  /**
   * Every flow sends once per interval, spread over slices of about 5 ms (flow i in slice
   * i % slices), so that no single burst blocks the event loop (its stalls would show as gaps).
   */
  startSending(): void {
    this.sending = true;
    const slices = Math.max(1, Math.min(this.flows.length, Math.round(this.o.intervalMs / 5)));
    let slice = 0;
    this.timer = setInterval(() => {
      this.tick(slice, slices);
      slice = (slice + 1) % slices;
    }, this.o.intervalMs / slices);
  }

  private tick(slice: number, slices: number): void {
    if (!this.sending) return;
    const now = performance.now();
    for (let i = slice; i < this.flows.length; i += slices) {
      const f = this.flows[i];
      const seq = f.ledger.noteSent(now);
      f.socket.send(encodeDatagram(f.index, seq, this.o.seed, this.o.size), (err) => {
        if (err) this.noteError(f, err);
      });
    }
  }

  stopSending(): void {
    this.sending = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const now = performance.now();
    for (const f of this.flows) f.ledger.noteStopped(now);
  }

  private snapshots(final: boolean): UdpFlowStats[] {
    const now = performance.now();
    return this.flows.map((f) => f.ledger.snapshot(now, { final, brokenAfterMs: this.o.brokenAfterMs }));
  }

  stats(final = false, flows?: UdpFlowStats[]): Record<string, unknown> {
    const per = flows ?? this.snapshots(final);
    return {
      ...totals(per, this.o.brokenAfterMs),
      perFlowMaxGapMs: per.map((f) => round(f.maxGapMs)),
      elapsedMs: round(performance.now() - this.startedAt),
      sending: this.sending,
      errors: this.errors,
    };
  }

  window(): Record<string, unknown> {
    const now = performance.now();
    let max = 0;
    let maxFlow = -1;
    for (const f of this.flows) {
      const g = f.ledger.takeWindowMaxGap(now);
      if (g > max) {
        max = g;
        maxFlow = f.index;
      }
    }
    const r = { ...this.stats(), windowMs: round(now - this.windowStart), windowMaxGapMs: round(max), windowMaxGapFlow: maxFlow };
    this.windowStart = now;
    return r;
  }

  /**
   * Broken is judged while the flows still send (a flow silent for the last brokenAfterMs); then
   * sending stops and the last echoes get graceMs to arrive before lost is counted.
   */
  async drain(graceMs: number): Promise<Record<string, unknown>> {
    const judged = this.snapshots(false);
    this.stopSending();
    await new Promise((r) => setTimeout(r, graceMs));
    const final = this.snapshots(true).map((f, i) => ({ ...f, broken: judged[i].broken || f.corrupt > 0, silentMs: judged[i].silentMs }));
    return { ...this.stats(true, final), drainMs: graceMs };
  }

  closeAll(): void {
    if (this.timer) clearInterval(this.timer);
    this.sending = false;
    for (const f of this.flows) f.socket.close();
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
  const client = new UdpClient(o);
  await serveJsonLines({
    commands: {
      stats: () => ({ ...client.stats() }),
      window: () => ({ ...client.window() }),
      drain: async (msg) => ({ ...(await client.drain(Number(msg.graceMs ?? 1000))) }),
    },
    start: () => client.openAll(),
    started: () => client.startSending(),
    ready: { flows: o.flows },
    close: () => client.closeAll(),
  });
}

void main();
