/**
 * Benchmarks, each a subcommand with a readable table on stdout and `--json` for machines:
 *   npm run bench -- lock      migrations under each lock mode vs live connections
 *   npm run bench -- lockops   lock/unlock of many entries, per method
 *   npm run bench -- lock-progrun   the lock program's CPU per packet (BPF_PROG_TEST_RUN): miss, endpoint, address-wide
 *   npm run bench -- steer-converge   rule change -> every agent's ack, at 10, 50, 100 agents
 *   npm run bench -- steer-dataplane   CPU per packet: godwit steering vs iptables / nftables DNAT vs no rule
 *   npm run bench -- follow   steering state following a workload: map handoff, migrations in the routed lab
 *   npm run bench -- bad-input   malformed requests to every public gRPC method: refused, nothing changed
 *   npm run bench -- freeze   where a migration's freeze goes: every phase and agent step, godwit's share vs CRIU alone
 *   npm run bench -- drain    a host of live workloads drained onto the rest of the lab; migrations at once vs alone
 *   npm run bench -- faults   the fault matrix: controller, agents, nats-server killed at each point of a migration
 */
const [which, ...rest] = process.argv.slice(2);
const benches: Record<string, () => Promise<{ run(argv: string[]): Promise<number> }>> = {
  lock: () => import('./lock.js'),
  lockops: () => import('./lockops.js'),
  'lock-progrun': () => import('./lock-progrun.js'),
  'steer-converge': () => import('./steer-converge.js'),
  'steer-dataplane': () => import('./steer-dataplane.js'),
  follow: () => import('./follow.js'),
  freeze: () => import('./freeze.js'),
  faults: () => import('./faults.js'),
  'bad-input': () => import('./bad-input.js'),
  drain: () => import('./drain.js'),
};
const load = which ? benches[which] : undefined;
if (!load) {
  process.stderr.write(`usage: npm run bench -- <${Object.keys(benches).join('|')}> [options]\n`);
  process.exit(2);
}
load()
  .then((b) => b.run(rest))
  .then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`bench ${which} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
