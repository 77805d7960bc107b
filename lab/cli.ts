/**
 * The lab from the command line:
 *   npm run lab -- up [--hosts a,b,c] [--fabric bridge|routed]
 *                                         bring up a fleet on this machine; prints where it is
 *   npm run lab -- down [--index N]       remove lab N, or every godwit lab on this machine
 *   npm run lab -- list                   the labs that exist
 * The lab's services keep running after `up` returns; `down` removes exactly what `up` made.
 */
import { Command } from 'commander';
import { labDown, labUp } from './lab.js';
import { LAB_FABRICS, LAB_MAX_INDEX, labPrefix, listNetns, type LabFabric } from './topology.js';

async function existingLabs(): Promise<number[]> {
  const names = await listNetns();
  const found: number[] = [];
  for (let i = 1; i <= LAB_MAX_INDEX; i++) if (names.some((n) => n.startsWith(`${labPrefix(i)}-`))) found.push(i);
  return found;
}

const program = new Command().name('lab').description('a godwit fleet of network-namespace hosts on this machine');

program
  .command('up')
  .option('--hosts <names>', 'comma-separated host names', 'a,b')
  .option('--index <n>', 'lab number (picks the subnet 198.18.<n>.0/24); default: the first free one', (v) => Number(v))
  .option('--fabric <kind>', `${LAB_FABRICS.join(' | ')}: one L2 segment, or a subnet per host behind a router`, 'bridge')
  .option('--nats-cluster <n>', 'N clustered nats-servers instead of one, KV and events replicated 3 times (lab/nats-cluster.ts)', (v) => Number(v))
  .option('--insecure', 'DEVELOPMENT ONLY: every part with --insecure (no TLS, no authorization, open NATS)')
  .action(async (o: { hosts: string; index?: number; fabric: string; insecure?: boolean; natsCluster?: number }) => {
    if (!(LAB_FABRICS as readonly string[]).includes(o.fabric)) throw new Error(`--fabric ${o.fabric}: want ${LAB_FABRICS.join(' or ')}`);
    const lab = await labUp({ hosts: o.hosts.split(',').map((s) => s.trim()), index: o.index, fabric: o.fabric as LabFabric, insecure: o.insecure, natsCluster: o.natsCluster });
    lab.controller.close();
    const t = lab.topology;
    process.stdout.write(
      JSON.stringify(
        {
          index: t.index,
          fabric: t.fabric,
          controller: lab.controllerAddress,
          nats: lab.natsUrl,
          hosts: t.hosts.map((h) => ({ name: h.name, netns: h.netns, address: h.address, subnet: h.subnet, gateway: h.gateway, agent: lab.agentAddress(h.name) })),
          client: { netns: t.client.netns, address: t.client.address, subnet: t.client.subnet, gateway: t.client.gateway },
          ...(t.router ? { router: { netns: t.router.netns }, vips: t.vipBlock } : {}),
          workloadAddresses: [t.workloadAddress(0), t.workloadAddress(1)],
          logs: `${lab.dir}/logs`,
          // Identity folders for --tls-dir (or GODWIT_TLS_DIR): the CLI as the lab's admin or read-only client.
          ...(lab.pki ? { tls: { admin: lab.pki.tlsDir('client-admin'), read: lab.pki.tlsDir('client-read'), ca: `${lab.pki.dir}/ca` } } : { insecure: true }),
          down: `npm run lab -- down --index ${t.index}`,
        },
        null,
        2,
      ) + '\n',
    );
  });

program
  .command('down')
  .option('--index <n>', 'the lab to remove; default: every godwit lab on this machine', (v) => Number(v))
  .action(async (o: { index?: number }) => {
    const labs = o.index ? [o.index] : await existingLabs();
    for (const i of labs) {
      await labDown(i);
      process.stderr.write(`lab ${i} removed\n`);
    }
    if (labs.length === 0) process.stderr.write('no lab to remove\n');
  });

program.command('list').action(async () => {
  process.stdout.write(JSON.stringify(await existingLabs()) + '\n');
});

program.parseAsync().catch((err: Error) => {
  process.stderr.write(`lab: ${err.message}\n`);
  process.exit(1);
});
