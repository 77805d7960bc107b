import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GodwitError } from '../../lib/errors.js';
import { applyOp, EMPTY_TABLE, liveFlowsNeeded, type FleetView, type RuleTable, type ServiceKey, type SteeringOp } from '../../controller/steering-table.js';

const hosts = new Map([
  ['a', '198.18.9.1'],
  ['b', '198.18.9.2'],
]);
const fleet: FleetView = { hosts };
const web: ServiceKey = { proto: 'tcp', vip: '198.18.9.200', port: 80 };

function run(table: RuleTable, ...ops: SteeringOp[]): RuleTable {
  for (const op of ops) table = applyOp(table, op, fleet).table;
  return table;
}

const create = (service = web): SteeringOp => ({ op: 'create-service', service });
const add = (address: string, port = 8080, host = 'a', weight = 10, service = web): SteeringOp => ({ op: 'add-backend', service, backend: { address, port }, weight, host });

/** The table after a web service with two backends: generation 3. */
function base(): RuleTable {
  return run(EMPTY_TABLE, create(), add('198.18.9.201', 8080, 'a'), add('198.18.9.202', 8080, 'b'));
}

/** Applying `op` fails with `code` and a message matching `message`, and the table is untouched. */
function expectRefused(table: RuleTable, op: SteeringOp, code: status, message: RegExp, f: FleetView = fleet) {
  const before = structuredClone(table);
  let err: unknown;
  try {
    applyOp(table, op, f);
  } catch (e) {
    err = e;
  }
  expect(err, 'refused').toBeInstanceOf(GodwitError);
  expect(status[(err as GodwitError).code]).toBe(status[code]);
  expect((err as Error).message).toMatch(message);
  expect(table, 'the table is unchanged').toEqual(before);
}

describe('steering rule table', () => {
  it('each change adds one to the generation, and ids are assigned once', () => {
    let t = EMPTY_TABLE;
    t = run(t, create());
    expect(t.generation).toBe(1);
    expect(t.services).toEqual([{ id: 1, proto: 'tcp', vip: web.vip, vipPort: 80, backends: [] }]);
    t = run(t, add('198.18.9.201'));
    expect(t.generation).toBe(2);
    expect(t.services[0].backends).toEqual([
      { id: 1, address: '198.18.9.201', port: 8080, weight: 10, host: 'a', hostAddress: '198.18.9.1', draining: false },
    ]);
    t = run(t, add('198.18.9.202', 8080, 'b', 5));
    expect(t.generation).toBe(3);
    expect(t.services[0].backends.map((b) => [b.id, b.hostAddress])).toEqual([
      [1, '198.18.9.1'],
      [2, '198.18.9.2'],
    ]);
    expect(EMPTY_TABLE.generation, 'the input is never modified').toBe(0);
  });

  it('ids stay with their service and backend, and are never reused after a removal', () => {
    let t = base();
    t = run(t, { op: 'remove-backend', service: web, backend: { address: '198.18.9.201', port: 8080 } });
    expect(t.services[0].backends.map((b) => b.id)).toEqual([2]);
    t = run(t, add('198.18.9.201'));
    expect(t.services[0].backends.map((b) => [b.address, b.id])).toEqual([
      ['198.18.9.201', 3],
      ['198.18.9.202', 2],
    ]);
    const dns: ServiceKey = { proto: 'udp', vip: '198.18.9.210', port: 53 };
    t = run(t, create(dns), { op: 'delete-service', service: web }, create(web));
    expect(t.services.map((s) => [s.proto, s.vip, s.id])).toEqual([
      ['tcp', '198.18.9.200', 3],
      ['udp', '198.18.9.210', 2],
    ]);
  });

  it('drain marks a backend draining and weight changes it; repeating either changes nothing (no generation spent)', () => {
    const t = base();
    const backend = { address: '198.18.9.201', port: 8080 };
    const drained = applyOp(t, { op: 'drain-backend', service: web, backend }, fleet);
    expect(drained.changed).toBe(true);
    expect(drained.table.generation).toBe(4);
    expect(drained.table.services[0].backends[0].draining).toBe(true);
    const again = applyOp(drained.table, { op: 'drain-backend', service: web, backend }, fleet);
    expect(again.changed).toBe(false);
    expect(again.table).toBe(drained.table);
    const weighted = applyOp(drained.table, { op: 'set-weight', service: web, backend, weight: 1000 }, fleet);
    expect(weighted.table.generation).toBe(5);
    expect(weighted.table.services[0].backends[0]).toMatchObject({ weight: 1000, draining: true, id: 1 });
    expect(applyOp(weighted.table, { op: 'set-weight', service: web, backend, weight: 1000 }, fleet).changed).toBe(false);
  });

  it('the same VIP and port may serve TCP and UDP as two services', () => {
    const t = run(base(), create({ ...web, proto: 'udp' }));
    expect(t.services.map((s) => s.proto).sort()).toEqual(['tcp', 'udp']);
  });

  describe('bad input is refused with the right status and changes nothing', () => {
    it('ALREADY_EXISTS: a VIP:port that exists; a backend twice', () => {
      expectRefused(base(), create(), status.ALREADY_EXISTS, /service tcp:\/\/198\.18\.9\.200:80 exists already \(id 1\)/);
      expectRefused(base(), add('198.18.9.201'), status.ALREADY_EXISTS, /has backend 198\.18\.9\.201:8080 already/);
    });

    it('INVALID_ARGUMENT: port 0 or above 65535, for the VIP and for a backend', () => {
      expectRefused(base(), create({ ...web, port: 0 }), status.INVALID_ARGUMENT, /service\.port must be 1-65535, got 0/);
      expectRefused(base(), create({ ...web, port: 70000 }), status.INVALID_ARGUMENT, /service\.port must be 1-65535/);
      expectRefused(base(), add('198.18.9.203', 0), status.INVALID_ARGUMENT, /backend\.port must be 1-65535, got 0/);
    });

    it('INVALID_ARGUMENT: an address that is not IPv4 (or not a unicast one)', () => {
      for (const vip of ['fd00::1', 'example.com', '198.18.9', '']) expectRefused(base(), create({ ...web, vip }), status.INVALID_ARGUMENT, /must be an IPv4 address/);
      for (const vip of ['0.0.0.0', '127.0.0.1', '224.0.0.1', '255.255.255.255']) expectRefused(base(), create({ ...web, vip }), status.INVALID_ARGUMENT, /must be a unicast address/);
      expectRefused(base(), add('fd00::2'), status.INVALID_ARGUMENT, /backend\.address "fd00::2" must be an IPv4 address/);
    });

    it('INVALID_ARGUMENT: a VIP that is a host\'s address or a workload\'s (a backend\'s)', () => {
      expectRefused(base(), create({ ...web, vip: '198.18.9.2', port: 81 }), status.INVALID_ARGUMENT, /vip 198\.18\.9\.2 is the address of host "b"/);
      expectRefused(base(), create({ ...web, vip: '198.18.9.201', port: 81 }), status.INVALID_ARGUMENT, /vip 198\.18\.9\.201 is the address of backend 198\.18\.9\.201:8080 of service tcp:\/\/198\.18\.9\.200:80/);
      expectRefused(base(), add('198.18.9.200', 9000), status.INVALID_ARGUMENT, /backend address 198\.18\.9\.200 is the VIP of service/);
    });

    it('INVALID_ARGUMENT: weights outside 1..1000', () => {
      for (const weight of [0, -1, 1001, 2.5]) expectRefused(base(), add('198.18.9.203', 8080, 'a', weight), status.INVALID_ARGUMENT, /weight must be an integer 1-1000/);
      expectRefused(base(), { op: 'set-weight', service: web, backend: { address: '198.18.9.201', port: 8080 }, weight: 1001 }, status.INVALID_ARGUMENT, /got 1001/);
    });

    it('INVALID_ARGUMENT: a protocol other than TCP or UDP', () => {
      expectRefused(base(), create({ ...web, proto: 'sctp' as 'tcp' }), status.INVALID_ARGUMENT, /must be TCP or UDP/);
    });

    it('NOT_FOUND: an unknown service, an unknown backend, a backend on an unknown host', () => {
      const other: ServiceKey = { ...web, port: 443 };
      expectRefused(base(), add('198.18.9.203', 8080, 'a', 1, other), status.NOT_FOUND, /no service tcp:\/\/198\.18\.9\.200:443 \(services: tcp:\/\/198\.18\.9\.200:80\)/);
      expectRefused(base(), { op: 'delete-service', service: other }, status.NOT_FOUND, /no service/);
      expectRefused(base(), { op: 'drain-backend', service: web, backend: { address: '198.18.9.209', port: 8080 } }, status.NOT_FOUND, /has no backend 198\.18\.9\.209:8080 \(its backends: 198\.18\.9\.201:8080, 198\.18\.9\.202:8080\)/);
      expectRefused(base(), { op: 'remove-backend', service: web, backend: { address: '198.18.9.201', port: 9 } }, status.NOT_FOUND, /has no backend/);
      expectRefused(base(), add('198.18.9.203', 8080, 'zz'), status.NOT_FOUND, /host "zz" is not registered with the controller \(known hosts: a, b\)/);
    });

    it('FAILED_PRECONDITION: the last backend of a service with live flows, without force', () => {
      let t = run(base(), { op: 'remove-backend', service: web, backend: { address: '198.18.9.201', port: 8080 } });
      const last: SteeringOp = { op: 'remove-backend', service: web, backend: { address: '198.18.9.202', port: 8080 } };
      expect(liveFlowsNeeded(t, last)).toEqual([2]);
      expectRefused(t, last, status.FAILED_PRECONDITION, /cannot remove the last backend 198\.18\.9\.202:8080 .* hold 3 live flow\(s\).* pass force/, { hosts, liveFlows: new Map([[2, 3]]) });
      // No live flows: it goes. With force: it goes even with flows.
      expect(applyOp(t, last, { hosts, liveFlows: new Map([[2, 0]]) }).table.services[0].backends).toEqual([]);
      t = applyOp(t, { ...last, force: true } as SteeringOp, { hosts, liveFlows: new Map([[2, 3]]) }).table;
      expect(t.services[0].backends).toEqual([]);
      expect(liveFlowsNeeded(t, { ...last, force: true } as SteeringOp)).toEqual([]);
    });

    it('FAILED_PRECONDITION: deleting a service whose backends hold live flows, without force', () => {
      const del: SteeringOp = { op: 'delete-service', service: web };
      expect(liveFlowsNeeded(base(), del)).toEqual([1, 2]);
      expectRefused(base(), del, status.FAILED_PRECONDITION, /cannot delete service tcp:\/\/198\.18\.9\.200:80/, { hosts, liveFlows: new Map([[1, 1]]) });
      expect(applyOp(base(), { op: 'delete-service', service: web, force: true }, { hosts, liveFlows: new Map([[1, 1]]) }).table.services).toEqual([]);
    });

    it('removing a backend that is not the last needs no live-flow count', () => {
      expect(liveFlowsNeeded(base(), { op: 'remove-backend', service: web, backend: { address: '198.18.9.201', port: 8080 } })).toEqual([]);
    });
  });
});
