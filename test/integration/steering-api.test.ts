/**
 * The steering control plane end to end with real parts: a lab of network-namespace hosts, a
 * real nats-server, the controller and the agents as processes (each agent programs its own
 * kernel's steering data plane), the Steering gRPC API and the `godwit service` CLI.
 */
import { status } from '@grpc/grpc-js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RuleGeneration__Output } from '../../proto/gen/godwit/v1/RuleGeneration.js';
import type { ServiceKey } from '../../proto/gen/godwit/v1/ServiceKey.js';
import { agentAsController } from '../support/lab-agent.js';
import { SteeringApi } from '../../controller/steering-client.js';
import { execCommand } from '../../lib/exec.js';
import { isServiceError, REPO_ROOT } from '../../lib/rpc.js';
import { labUp, type Lab } from '../../lab/lab.js';
import { inNetns } from '../../lab/topology.js';

const HOSTS = ['a', 'b', 'c'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('steering API, CLI and fleet propagation', () => {
  let lab: Lab;
  let api: SteeringApi;
  let vip: string;
  let web: ServiceKey;
  /** A workload address in the lab's block that no host owns. */
  let workload: (i: number) => string;

  beforeAll(async () => {
    // Steering only: this test needs no CRIU, and no lock program on the interfaces.
    lab = await labUp({ hosts: HOSTS, agentFlags: ['--no-checkpoint'] });
    api = new SteeringApi(lab.controllerAddress);
    workload = (i) => lab.topology.workloadAddress(i);
    vip = workload(40);
    web = { protocol: 'TCP', vip, port: 80 };
  });

  afterAll(async () => {
    api?.close();
    await lab?.down();
  });

  async function godwit(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const r = await execCommand(process.execPath, [join(REPO_ROOT, 'dist', 'controller', 'cli.js'), '--controller', lab.controllerAddress, ...args], { allowFailure: true });
    return { code: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  }

  /** Each host's applied generation as its own agent reads it from its kernel maps. */
  async function kernelGenerations(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const h of HOSTS) {
      const agent = agentAsController(lab, h, lab.agentAddress(h));
      try {
        out[h] = Number((await agent.steeringState()).appliedGeneration);
      } finally {
        agent.close();
      }
    }
    return out;
  }

  async function hostGenerations(): Promise<Record<string, number>> {
    const r = await lab.controller.listHosts();
    return Object.fromEntries(r.hosts.map((h) => [h.name, Number(h.steeringGeneration)]));
  }

  const generation = async () => Number((await api.listServices()).generation);
  const everywhere = (g: number) => Object.fromEntries(HOSTS.map((h) => [h, g]));

  it('ListHosts shows every host with a steering data plane, its data address and applied generation', async () => {
    const r = await lab.controller.listHosts();
    const g = await generation();
    for (const name of HOSTS) {
      const h = r.hosts.find((x) => x.name === name)!;
      expect(h.steering, `host ${name} runs a steering data plane`).toBe(true);
      expect(h.dataAddress).toBe(lab.host(name).address);
      expect(Number(h.steeringGeneration)).toBe(g);
    }
  });

  it('create, add, weight, drain, remove and delete through the CLI: one generation each, held by every host', async () => {
    const g0 = await generation();
    let r = await godwit('service', 'create', `tcp://${vip}:80`, '--wait');
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`created TCP ${vip}:80: rule generation ${g0 + 1}`);
    expect(r.stdout).toMatch(new RegExp(`every ready host holds generation ${g0 + 1} \\(\\d+\\.\\d ms after it was accepted\\)`));

    r = await godwit('--json', 'service', 'add-backend', `${vip}:80`, '--real', `${workload(41)}:8080`, '--host', 'a', '--weight', '10', '--wait');
    expect(r.code).toBe(0);
    const change = JSON.parse(r.stdout) as { generation: string; converged: boolean; waited: boolean; convergeMs: number; service: { backends: { id: number; host: string; hostAddress: string; state: string }[] } };
    expect(change).toMatchObject({ generation: String(g0 + 2), waited: true, converged: true });
    expect(change.convergeMs).toBeGreaterThanOrEqual(0);
    expect(change.service.backends).toMatchObject([{ host: 'a', hostAddress: lab.host('a').address, state: 'ACTIVE' }]);
    const firstId = change.service.backends[0].id;

    expect((await godwit('service', 'add-backend', `tcp://${vip}:80`, '-r', `${workload(42)}:8080`, '--host', 'b', '-w', '5', '--wait')).code).toBe(0);
    expect((await godwit('service', 'set-weight', `${vip}:80`, '-r', `${workload(42)}:8080`, '-w', '7', '--wait')).code).toBe(0);
    expect((await godwit('service', 'drain-backend', `${vip}:80`, '-r', `${workload(41)}:8080`, '--wait')).code).toBe(0);
    expect(await hostGenerations()).toEqual(everywhere(g0 + 5));
    expect(await kernelGenerations(), 'every kernel holds it').toEqual(everywhere(g0 + 5));

    const list = await godwit('service', 'list');
    expect(list.code).toBe(0);
    const lines = list.stdout.split('\n');
    expect(lines[0]).toBe(`godwit steering, rule generation ${g0 + 5}`);
    expect(lines[1]).toMatch(/^Prot LocalAddress:Port\s+Host\s+Weight\s+State\s+Flows\s+Pkts\s+Bytes$/);
    expect(lines[2]).toBe('  -> RemoteAddress:Port');
    expect(lines[3]).toMatch(new RegExp(`^TCP  ${vip.replace(/\./g, '\\.')}:80\\s+\\d+\\s+\\d+\\s+\\d+$`));
    expect(lines[4]).toMatch(new RegExp(`^  -> ${workload(41).replace(/\./g, '\\.')}:8080\\s+a\\s+10\\s+Draining\\s+\\d+\\s+\\d+\\s+\\d+$`));
    expect(lines[5]).toMatch(new RegExp(`^  -> ${workload(42).replace(/\./g, '\\.')}:8080\\s+b\\s+7\\s+Active\\s+\\d+\\s+\\d+\\s+\\d+$`));

    const got = JSON.parse((await godwit('--json', 'service', 'get', `tcp://${vip}:80`)).stdout) as { backends: { id: number; weight: number; state: string }[] };
    expect(got.backends.map((b) => [b.id, b.weight, b.state])).toEqual([
      [firstId, 10, 'DRAINING'],
      [firstId + 1, 7, 'ACTIVE'],
    ]);

    expect((await godwit('service', 'remove-backend', `${vip}:80`, '-r', `${workload(41)}:8080`, '--wait')).code).toBe(0);
    // Ids are never reused: the same endpoint added again gets a new one.
    const again = JSON.parse((await godwit('--json', 'service', 'add-backend', `${vip}:80`, '-r', `${workload(41)}:8080`, '--host', 'c')).stdout) as { service: { backends: { id: number }[] } };
    expect(again.service.backends.map((b) => b.id)).toEqual([firstId + 2, firstId + 1]);
    const del = await godwit('service', 'delete', `${vip}:80`, '--wait');
    expect(del.code).toBe(0);
    expect(del.stdout).toContain(`rule generation ${g0 + 8}`);
    expect(await kernelGenerations()).toEqual(everywhere(g0 + 8));
    expect((await api.listServices()).services.find((s) => s.vip === vip)).toBeUndefined();
  });

  it('bad input gets the right status and a message saying what to fix, and changes no generation on any host', async () => {
    await api.createService({ service: web, wait: { wait: true } });
    await api.updateService({ service: web, addBackend: { backend: { address: workload(41), port: 8080 }, host: 'a', weight: 1 }, wait: { wait: true } });
    const g = await generation();
    const kernels = await kernelGenerations();
    const expectRefused = async (call: () => Promise<unknown>, code: status, details: RegExp) => {
      const err = await call().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(isServiceError(err), 'refused').toBe(true);
      if (!isServiceError(err)) return;
      expect(status[err.code]).toBe(status[code]);
      expect(err.details).toMatch(details);
    };
    await expectRefused(() => api.createService({ service: web }), status.ALREADY_EXISTS, /service tcp:\/\/.*:80 exists already/);
    await expectRefused(() => api.createService({ service: { ...web, port: 0 } }), status.INVALID_ARGUMENT, /service\.port must be 1-65535, got 0/);
    await expectRefused(() => api.createService({ service: { ...web, vip: 'fd00::1' } }), status.INVALID_ARGUMENT, /must be an IPv4 address/);
    await expectRefused(() => api.createService({ service: { ...web, vip: lab.host('b').address } }), status.INVALID_ARGUMENT, /is the address of host "b"/);
    await expectRefused(() => api.createService({ service: { ...web, vip: workload(41) } }), status.INVALID_ARGUMENT, /is the address of backend/);
    const add = (weight: number, host = 'a') => () =>
      api.updateService({ service: web, addBackend: { backend: { address: workload(43), port: 8080 }, host, weight } });
    await expectRefused(add(1001), status.INVALID_ARGUMENT, /weight must be an integer 1-1000.*got 1001/);
    await expectRefused(add(1, 'nosuch'), status.NOT_FOUND, /host "nosuch" is not registered .*known hosts: a, b, c/);
    await expectRefused(() => api.updateService({ service: { ...web, port: 81 }, drainBackend: { backend: { address: workload(41), port: 8080 } } }), status.NOT_FOUND, /no service/);
    await expectRefused(() => api.updateService({ service: web, drainBackend: { backend: { address: workload(49), port: 8080 } } }), status.NOT_FOUND, /has no backend/);
    await expectRefused(() => api.updateService({ service: web }), status.INVALID_ARGUMENT, /one change is required/);
    expect(await generation(), 'no generation spent').toBe(g);
    await sleep(300);
    expect(await kernelGenerations(), 'no host wrote its maps').toEqual(kernels);
    expect(await hostGenerations()).toEqual(everywhere(g));

    // The CLI prints CODE: message and exits 2 for each of these.
    let r = await godwit('service', 'create', `tcp://${vip}:80`);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^ALREADY_EXISTS: service tcp:\/\/.*:80 exists already/);
    r = await godwit('service', 'create', `tcp://${workload(44)}:0`);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^INVALID_ARGUMENT: service\.port must be 1-65535, got 0/);
    r = await godwit('service', 'add-backend', `${vip}:80`, '-r', `${workload(43)}:8080`, '--host', 'nosuch');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^NOT_FOUND: host "nosuch"/);
    r = await godwit('service', 'create', 'not-an-endpoint');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/must be \[tcp:\/\/\|udp:\/\/\]VIP:PORT/);
    expect(await generation()).toBe(g);
  });

  it('removing the last backend while a host holds a live flow to it needs force', async () => {
    // The client reaches the VIP through host a (a route, as a router would have); one SYN makes a flow.
    const client = lab.topology.client;
    await execCommand('ip', ['-n', client.netns, 'route', 'replace', `${vip}/32`, 'via', lab.host('a').address]);
    const script = `const s=require('net').connect(80,'${vip}');s.on('error',()=>{});setTimeout(()=>process.exit(0),1500)`;
    const [file, args] = inNetns(client, process.execPath, ['-e', script]);
    await execCommand(file, args);
    const before = await generation();
    const listed = (await api.listServices()).services.find((s) => s.vip === vip)!;
    expect(Number(listed.backends[0].counters?.packets), 'the SYN was steered and counted').toBeGreaterThan(0);
    const r = await godwit('service', 'remove-backend', `${vip}:80`, '-r', `${workload(41)}:8080`);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^FAILED_PRECONDITION: cannot remove the last backend .* hold \d+ live flow\(s\).*pass force/);
    expect(await generation()).toBe(before);
    const forced = await godwit('service', 'remove-backend', `${vip}:80`, '-r', `${workload(41)}:8080`, '--force', '--wait');
    expect(forced.code).toBe(0);
    expect(await generation()).toBe(before + 1);
    await api.deleteService({ service: web, force: true });
  });

  it('WatchSteering gives the current generation first, then each change', async () => {
    const it = api.watch();
    const first = (await it.next()).value as RuleGeneration__Output;
    const g = await generation();
    expect(Number(first.generation)).toBe(g);
    expect(first.hosts.map((h) => h.host).sort()).toEqual(HOSTS);
    const svc: ServiceKey = { protocol: 'UDP', vip: workload(45), port: 53 };
    await api.createService({ service: svc });
    const next = (await it.next()).value as RuleGeneration__Output;
    expect(Number(next.generation)).toBe(g + 1);
    expect(next.services.some((s) => s.vip === svc.vip && s.protocol === 'UDP')).toBe(true);
    await it.return(undefined);
    await api.deleteService({ service: svc });
  });

  it('a host that is down is named as lagging; restarted, its agent catches up to the latest generation by itself', async () => {
    await lab.crash('agent-b');
    const svc: ServiceKey = { protocol: 'TCP', vip: workload(46), port: 443 };
    // b is still "ready" (its last heartbeat is recent) but cannot ack: the wait names it.
    const c = await api.createService({ service: svc, wait: { wait: true, timeoutMs: 1_000 } });
    expect(c).toMatchObject({ waited: true, converged: false, laggingHosts: ['b'] });
    await api.updateService({ service: svc, addBackend: { backend: { address: workload(47), port: 443 }, host: 'c', weight: 3 } });
    const g = await generation();
    await lab.restartAgent('b');
    const deadline = Date.now() + 20_000;
    while ((await hostGenerations()).b !== g) {
      if (Date.now() > deadline) throw new Error(`agent b did not catch up to generation ${g}: ${JSON.stringify(await hostGenerations())}`);
      await sleep(100);
    }
    expect(await kernelGenerations()).toEqual(everywhere(g));
    await api.deleteService({ service: svc, force: true });
  });
});
