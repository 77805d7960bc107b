/**
 * A real nats-server on loopback configured as a fleet's (lib/nats-auth.ts): TLS with client
 * certificates from the fleet's CA, one user per identity with its subject permissions.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Identity } from '../../lib/identity.js';
import { natsServerConfig } from '../../lib/nats-auth.js';
import { tlsFilesIn } from '../../lib/tls.js';
import type { FleetPki } from './fleet-pki.js';

export interface SecureNats {
  url: string;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startSecureNats(pki: FleetPki, users: Identity[]): Promise<SecureNats> {
  await pki.issue('nats', { role: 'nats' }, { ips: ['127.0.0.1'] });
  const dir = join(pki.dir, 'nats-server');
  mkdirSync(dir, { recursive: true });
  const conf = join(dir, 'nats.conf');
  writeFileSync(conf, natsServerConfig({ host: '127.0.0.1', port: -1, storeDir: join(dir, 'js'), tls: tlsFilesIn(pki.tlsDir('nats')), users }));
  const child: ChildProcess = spawn('nats-server', ['-c', conf, '--ports_file_dir', dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let url: string | undefined;
  for (let i = 0; i < 100 && !url; i++) {
    const f = readdirSync(dir).find((n) => n === `nats-server_${child.pid}.ports`);
    if (f) {
      try {
        url = (JSON.parse(readFileSync(join(dir, f), 'utf8')) as { nats: string[] }).nats[0];
      } catch {
        // written but not complete yet
      }
    }
    if (child.exitCode !== null) break;
    if (!url) await sleep(50);
  }
  if (!url) {
    child.kill('SIGKILL');
    throw new Error(`secure nats-server did not start: ${stderr}`);
  }
  return {
    url: url.replace(/^tls:/, 'nats:'),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(3000)]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
