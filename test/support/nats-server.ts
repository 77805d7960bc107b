/**
 * A real nats-server with JetStream on loopback, on a port it picks (`-p -1`, read back from its
 * ports file), with its store in a temporary folder. restart() stops it and starts it again on
 * the same port and store, as a NATS outage would look to clients.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServer {
  url: string;
  port: number;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startNatsServer(): Promise<NatsServer> {
  const dir = mkdtempSync(join(tmpdir(), 'godwit-h3-nats-'));
  let child: ChildProcess;
  const launch = async (port: number): Promise<number> => {
    child = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(dir, 'js'), '--ports_file_dir', dir], { stdio: 'ignore' });
    const pid = child.pid;
    for (let i = 0; i < 100; i++) {
      const f = readdirSync(dir).find((n) => n === `nats-server_${pid}.ports`);
      if (f) {
        try {
          const url = (JSON.parse(readFileSync(join(dir, f), 'utf8')) as { nats: string[] }).nats[0];
          return Number(new URL(url).port);
        } catch {
          // written but not complete yet
        }
      }
      if (child.exitCode !== null) break;
      await sleep(50);
    }
    throw new Error(`nats-server did not start (is it installed? apt-get install nats-server); store ${dir}`);
  };
  const halt = async () => {
    if (child.exitCode !== null || child.pid === undefined) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await Promise.race([exited, sleep(3000)]);
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  const port = await launch(-1);
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    async restart() {
      await halt();
      await launch(port);
    },
    async stop() {
      await halt();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
