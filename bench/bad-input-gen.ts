/**
 * Malformed requests for every public gRPC method, generated from the proto files themselves so
 * that a method or field added later is covered without touching this file.
 *
 * Each request is malformed on purpose, in one of two ways:
 *  - bytes that are not a valid message at all (a truncated field, a length past the end, a
 *    wire type that does not exist, a known field sent with another wire type);
 *  - a well-formed message that carries at least one value no server may accept: path
 *    characters, NUL, `..` and very long strings in ids and names, unknown enum numbers,
 *    negative and out-of-range numbers, empty and duplicated lists. Other fields get random
 *    plausible or implausible values around it.
 * Every path-like string carries `canary`, so that a file written where it should not be can be
 * found afterwards by name.
 */
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { REPO_ROOT } from '../lib/rpc.js';

export interface MethodShape {
  service: string;
  method: string;
  /** /godwit.v1.Agent/Lock */
  path: string;
  requestType: protobuf.Type;
  clientStream: boolean;
  serverStream: boolean;
}

export interface BadRequest {
  /** For the report: what makes it malformed. */
  kind: 'undecodable' | 'bad-value';
  bytes: Buffer;
}

/** Every method of every service in the proto files, as protobufjs reflects it. */
export function loadMethods(services: readonly string[]): MethodShape[] {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (target.startsWith('/') ? target : join(REPO_ROOT, 'proto', target));
  root.loadSync(['godwit/v1/agent.proto', 'godwit/v1/controller.proto', 'godwit/v1/steering.proto'], { keepCase: false });
  root.resolveAll();
  const out: MethodShape[] = [];
  for (const name of services) {
    const svc = root.lookupService(`godwit.v1.${name}`);
    for (const m of svc.methodsArray) {
      out.push({
        service: name,
        method: m.name,
        path: `/godwit.v1.${name}/${m.name}`,
        requestType: m.resolvedRequestType!,
        clientStream: m.requestStream === true,
        serverStream: m.responseStream === true,
      });
    }
  }
  return out;
}

/** A small deterministic generator, so that a failing request can be produced again from its seed. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }
  next(): number {
    // xorshift32
    let x = this.s;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s / 0x1_0000_0000;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

/** Strings no id, name, host, address or path field may accept. */
function badStrings(canary: string): string[] {
  return [
    '..',
    `../../../tmp/${canary}`,
    `/tmp/${canary}`,
    `a/${canary}`,
    `${canary}\0x`,
    `${canary}\0`,
    '\0',
    `${canary}-${'x'.repeat(10_000)}`,
    `..\\..\\${canary}`,
    `${canary}/../../..`,
  ];
}

/** Values that are fine in some field, so that they fill the fields around the bad one. */
function noiseString(rng: Rng, canary: string): string {
  return rng.pick(['', 'a', 'b', 'c', 'm-0000-000000', canary, '198.18.0.1', 'tcp://198.18.0.1:1', ' ', 'é', '*']);
}

/**
 * Fields where every value of the type is valid by design, so none of them can carry the fault:
 * lock versions are any uint64 (a later migration's is larger), and a steering query for flow
 * counts of backends a host does not have answers zero flows.
 */
const ACCEPTS_ANY = new Set(['godwit.v1.LockRequest.version', 'godwit.v1.UnlockRequest.version', 'godwit.v1.SteeringStateRequest.liveFlowBackendIds']);

function fieldName(f: protobuf.Field): string {
  return `${f.parent!.fullName.slice(1)}.${f.name}`;
}

/** Lists whose emptiness is a valid request (a drain's `targets`: no list means any host). */
const EMPTY_OK = new Set(['godwit.v1.DrainRequest.targets']);

/**
 * Absolute paths to ask about (CheckFiles: is this file here?): an absolute, normalized path is a
 * fair question even when no such file exists; only relative, `..`, NUL or overlong ones are bad.
 */
const ABSOLUTE_PATH = new Set(['godwit.v1.WorkloadFile.path']);

/** Free text (an operator's words, how a process uses a file): only a control character or an overlong value is wrong. */
const FREE_TEXT = new Set(['godwit.v1.CordonRequest.reason', 'godwit.v1.WorkloadFile.usage']);

/** A field no value of which is wrong alone is never the one a request is built around. */
function canCarryFault(f: protobuf.Field): boolean {
  if (f.type === 'bool' || ACCEPTS_ANY.has(fieldName(f))) return false;
  if (f.resolvedType instanceof protobuf.Type) return f.resolvedType.fieldsArray.some(canCarryFault) || f.repeated;
  return true;
}

/** Out of range for every counted thing godwit takes (ports, PIDs, milliseconds, bytes, ids). */
const BAD_SIGNED = [-1, -2147483648, -(2 ** 40)];
const BAD_UNSIGNED = [4294967295, 2 ** 31 + 1];
const BAD_LONGS = ['-1', '-9223372036854775808', '9223372036854775807'];

function isLong(f: protobuf.Field): boolean {
  return ['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64'].includes(f.type);
}

function isNumber(f: protobuf.Field): boolean {
  return ['int32', 'uint32', 'sint32', 'fixed32', 'sfixed32', 'double', 'float'].includes(f.type) || isLong(f);
}

/** A bad value for a field: the one the request is built around. */
function badValue(f: protobuf.Field, rng: Rng, canary: string, depth: number): unknown {
  // A map<string, string> (labels): a key or a value no label may have, or very many entries.
  if (f.map) {
    const bad = rng.pick(badStrings(canary));
    switch (rng.int(3)) {
      case 0:
        return { [bad]: 'x' };
      case 1:
        return { app: bad };
      default:
        return Object.fromEntries(Array.from({ length: 2000 }, (_, i) => [`k${i}`, 'v']));
    }
  }
  const one = (): unknown => {
    if (f.resolvedType instanceof protobuf.Enum) return rng.pick([999, -1, 2 ** 30]);
    if (f.resolvedType instanceof protobuf.Type) return badMessage(f.resolvedType, rng, canary, depth + 1);
    if (f.type === 'string' && FREE_TEXT.has(fieldName(f))) return rng.pick([`${canary}\0`, `${canary}\n`, 'x'.repeat(10_000)]);
    if (f.type === 'string' && ABSOLUTE_PATH.has(fieldName(f))) return rng.pick(badStrings(canary).filter((x) => !x.startsWith('/') || x.includes('\0')));
    if (f.type === 'string') return rng.pick(badStrings(canary));
    if (f.type === 'bytes') return Buffer.alloc(rng.pick([0, 1, 300_000]), rng.int(256));
    if (isLong(f)) return rng.pick(BAD_LONGS);
    if (isNumber(f)) return rng.pick(f.type.startsWith('u') || f.type.startsWith('fixed') ? BAD_UNSIGNED : [...BAD_SIGNED, ...BAD_UNSIGNED]);
    return rng.next() < 0.5; // bool: no bool is bad alone; the other fields carry the fault
  };
  if (!f.repeated) return one();
  switch (EMPTY_OK.has(fieldName(f)) ? 1 + rng.int(2) : rng.int(3)) {
    case 0:
      return [];
    case 1: {
      const v = one();
      return Array.from({ length: rng.pick([2, 3, 200]) }, () => v); // the same entry many times
    }
    default:
      return Array.from({ length: 1 + rng.int(4) }, one);
  }
}

function noiseValue(f: protobuf.Field, rng: Rng, canary: string, depth: number): unknown {
  if (f.map) return rng.pick([{}, { app: 'web' }, { tier: 'cache', zone: 'a' }]);
  const one = (): unknown => {
    if (f.resolvedType instanceof protobuf.Enum) return rng.pick(Object.values(f.resolvedType.values));
    if (f.resolvedType instanceof protobuf.Type) return depth > 2 ? {} : noiseMessage(f.resolvedType, rng, canary, depth + 1);
    if (f.type === 'string') return noiseString(rng, canary);
    if (f.type === 'bytes') return Buffer.alloc(rng.int(16), 7);
    if (isLong(f)) return String(rng.pick([0, 1, 1000, 60_000]));
    if (isNumber(f)) return rng.pick([0, 1, 80, 1000, 60_000]);
    return rng.next() < 0.5;
  };
  return f.repeated ? Array.from({ length: rng.int(3) }, one) : one();
}

function noiseMessage(t: protobuf.Type, rng: Rng, canary: string, depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const f of t.fieldsArray) if (rng.next() < 0.5) o[f.name] = noiseValue(f, rng, canary, depth);
  return o;
}

/** Noise everywhere, and at least one field (recursively) set to a bad value. */
function badMessage(t: protobuf.Type, rng: Rng, canary: string, depth: number): Record<string, unknown> {
  const o = noiseMessage(t, rng, canary, depth);
  const fields = t.fieldsArray.filter(canCarryFault);
  if (fields.length === 0 || depth > 3) return o;
  const n = 1 + rng.int(Math.min(3, fields.length));
  for (let i = 0; i < n; i++) {
    const f = rng.pick(fields);
    o[f.name] = badValue(f, rng, canary, depth);
  }
  return o;
}

/**
 * Bytes that cannot be read as `t`. protobufjs reads a known field by its declared type whatever
 * the wire type says, and cuts a string short at the end of the buffer instead of failing, so
 * the damage goes into a field number the message does not have (which the reader must skip,
 * and skipping checks bounds and wire types) or uses a wire type that does not exist.
 */
function undecodable(t: protobuf.Type, rng: Rng): Buffer {
  const unknown = Math.max(0, ...t.fieldsArray.map((f) => f.id)) + 1 + rng.int(100);
  const tag = (field: number, wire: number) => varint((field << 3) | wire);
  switch (rng.int(5)) {
    case 0:
      return Buffer.concat([tag(unknown, 2), varint(1000 + rng.int(1_000_000)), Buffer.from('short')]); // length past the end
    case 1:
      return Buffer.concat([tag(unknown, 0), Buffer.from([0xff, 0xff, 0xff])]); // varint cut off
    case 2:
      return tag(t.fieldsArray.length > 0 && rng.next() < 0.5 ? rng.pick(t.fieldsArray).id : unknown, rng.pick([6, 7])); // no such wire type
    case 3:
      return Buffer.concat([tag(unknown, 5), Buffer.from([1, 2])]); // fixed32 cut off
    default:
      return Buffer.concat([tag(unknown, 1), Buffer.from([1, 2, 3, 4, 5])]); // fixed64 cut off
  }
}

function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n >>> 0;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return Buffer.from(out);
}

/** `count` malformed requests for one method; a fifth are undecodable bytes, the rest bad values. */
export function* badRequests(m: MethodShape, count: number, seed: number, canary: string): Generator<BadRequest> {
  const rng = new Rng(seed);
  const t = m.requestType;
  for (let i = 0; i < count; i++) {
    // A message with no field that can be wrong alone (none, or only bools) is malformed only as bytes that do not decode.
    if (!t.fieldsArray.some(canCarryFault) || rng.next() < 0.2) {
      yield { kind: 'undecodable', bytes: undecodable(t, rng) };
      continue;
    }
    const obj = badMessage(t, rng, canary, 0);
    yield { kind: 'bad-value', bytes: Buffer.from(t.encode(t.fromObject(obj)).finish()) };
  }
}
