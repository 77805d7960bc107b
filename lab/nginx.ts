/**
 * Debian's nginx as a lab workload (tests, and the README's example): a configuration that runs
 * in the foreground under `godwit run` (master + workers, workers as root: the agents here lack
 * CAP_SYS_RESOURCE, which CRIU needs for another user's processes), logs to stderr (the
 * workload's output file, `godwit logs`), keeps its files in one folder, and answers every
 * request with `<prefix> <uri>\n` so that a client can check every body
 * (lab/http-keepalive-client.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const NGINX = '/usr/sbin/nginx';
export const NGINX_BODY_PREFIX = 'godwit-nginx';

/** Writes DIR/nginx.conf; returns the command line for `godwit run`. */
export function nginxWorkload(dir: string, address: string, port: number, workers = 2): string[] {
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    `user root;
worker_processes ${workers};
daemon off;
pid ${join(dir, 'nginx.pid')};
error_log stderr notice;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${join(dir, 'tmp', 'body')};
  proxy_temp_path ${join(dir, 'tmp', 'proxy')};
  fastcgi_temp_path ${join(dir, 'tmp', 'fastcgi')};
  uwsgi_temp_path ${join(dir, 'tmp', 'uwsgi')};
  scgi_temp_path ${join(dir, 'tmp', 'scgi')};
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  default_type text/plain;
  server {
    listen ${address}:${port};
    location / { return 200 "${NGINX_BODY_PREFIX} $uri\\n"; }
  }
}
`,
  );
  return [NGINX, '-p', dir, '-c', conf, '-e', 'stderr'];
}
