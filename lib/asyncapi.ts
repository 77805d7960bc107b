/**
 * The event catalogue as an AsyncAPI 3.0 document, generated from the code: the events from
 * lib/subject-catalogue.ts (schemas from lib/event-schemas.ts), the NATS request API from the
 * gRPC service definitions (schemas from the protos' descriptors). `npm run asyncapi` writes it
 * to docs/asyncapi.json; test/unit/asyncapi.test.ts fails when the file and the code disagree.
 */
import type * as grpc from '@grpc/grpc-js';
import type { MessageTypeDefinition, PackageDefinition } from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { z } from 'zod';
import { ControllerService, PROTO_PACKAGES, REPO_ROOT, SteeringService } from './rpc.js';
import { EVENT_CHANNELS, type EventChannel } from './subject-catalogue.js';
import { SUBJECTS } from './subjects.js';

export const ASYNCAPI_FILE = join(REPO_ROOT, 'docs', 'asyncapi.json');

type Json = Record<string, unknown>;

/** The services whose methods are request subjects, and where their message types are. */
export const API_SERVICES: { definition: grpc.ServiceDefinition; types: PackageDefinition }[] = [
  { definition: ControllerService, types: PROTO_PACKAGES.controller },
  { definition: SteeringService, types: PROTO_PACKAGES.steering },
];

const ref = (path: string) => ({ $ref: path });

export function asyncApiDocument(): Json {
  const version = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const channels: Json = {};
  const operations: Json = {};
  const messages: Json = {};
  const schemas: Json = { ApiStatusFrame: statusFrameSchema() };

  for (const [key, c] of Object.entries(EVENT_CHANNELS) as [string, EventChannel][]) {
    channels[key] = {
      address: c.address,
      title: c.messageName,
      description: c.description,
      ...(Object.keys(c.parameters).length ? { parameters: Object.fromEntries(Object.entries(c.parameters).map(([p, d]) => [p, { description: d }])) } : {}),
      messages: { [c.messageName]: ref(`#/components/messages/${c.messageName}`) },
    };
    messages[c.messageName] = {
      name: c.messageName,
      title: c.messageName,
      summary: c.description.split(/(?<=\.) /)[0],
      contentType: 'application/json',
      payload: zodSchema(c.payload),
      examples: [{ name: 'example', payload: c.example }],
    };
    // Described from godwit's side: what it sends, and what it receives from clients.
    operations[key] = {
      action: c.publisher === 'client' ? 'receive' : 'send',
      channel: ref(`#/channels/${key}`),
      summary: `${c.publisher === 'client' ? 'A client publishes' : `The ${c.publisher} publishes`} ${c.messageName}`,
      messages: [ref(`#/channels/${key}/messages/${c.messageName}`)],
    };
  }

  for (const { definition, types } of API_SERVICES) {
    const service = servicePath(definition);
    for (const [method, def] of Object.entries(definition)) {
      const { request, response } = methodTypes(types, service, method);
      collectSchemas(types, request, schemas);
      collectSchemas(types, response, schemas);
      const key = `api.${method}`;
      const streaming = def.responseStream;
      const reqName = `${method}Request`;
      const repName = `${method}Reply`;
      channels[key] = {
        address: SUBJECTS.apiRequest(method),
        title: `${method} (NATS request API)`,
        description: `Requests for ${service}/${method}: a JSON ${request} (proto field names, lowerCamelCase or snake_case; 64-bit integers as strings or numbers; enums by name).`,
        messages: { [reqName]: ref(`#/components/messages/${reqName}`) },
      };
      channels[`${key}.reply`] = {
        address: null,
        title: `${method} replies`,
        description: `The request's reply subject (its NATS inbox). ${
          streaming ? `A result frame per ${response}, then one status frame that ends the stream (code 0: it ended normally).` : `One frame: the ${response} as result, or the status of the failed call.`
        }`,
        messages: { [repName]: ref(`#/components/messages/${repName}`) },
      };
      messages[reqName] = {
        name: reqName,
        title: reqName,
        contentType: 'application/json',
        payload: ref(`#/components/schemas/${request}`),
        examples: [{ name: 'defaults', payload: def.requestDeserialize(Buffer.alloc(0)) }],
      };
      messages[repName] = {
        name: repName,
        title: repName,
        contentType: 'application/json',
        payload: { oneOf: [{ type: 'object', properties: { result: ref(`#/components/schemas/${response}`) }, required: ['result'], additionalProperties: false }, ref('#/components/schemas/ApiStatusFrame')] },
        examples: [
          { name: 'result', payload: { result: def.responseDeserialize(Buffer.alloc(0)) } },
          { name: 'status', payload: streaming ? { status: { code: 0, name: 'OK', message: '' } } : { status: { code: 5, name: 'NOT_FOUND', message: 'no migration with id "m-nope"' } } },
        ],
      };
      operations[key] = {
        action: 'receive',
        channel: ref(`#/channels/${key}`),
        summary: `The controller answers ${method}${streaming ? ' (server streaming)' : ''}`,
        messages: [ref(`#/channels/${key}/messages/${reqName}`)],
        reply: { channel: ref(`#/channels/${key}.reply`), messages: [ref(`#/channels/${key}.reply/messages/${repName}`)] },
      };
    }
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: 'godwit',
      version,
      description:
        'Every NATS subject godwit publishes or answers (lib/subjects.ts), generated from the code by `npm run asyncapi`. ' +
        'Events are JSON; the NATS request API (godwit.api.v1.<Method>) takes the gRPC methods\' requests as JSON and answers with frames: {"result": message} or {"status": {code, name, message}} (lib/api-frames.ts).',
    },
    defaultContentType: 'application/json',
    servers: { nats: { host: 'localhost:4222', protocol: 'nats', description: 'The fleet\'s NATS server (JetStream enabled)' } },
    channels,
    operations,
    components: { messages, schemas: sortKeys(schemas) },
  };
}

/** The document as written to docs/asyncapi.json. */
export function asyncApiText(): string {
  return JSON.stringify(asyncApiDocument(), null, 2) + '\n';
}

function zodSchema(schema: z.ZodType): Json {
  const { $schema, ...rest } = z.toJSONSchema(schema, { target: 'draft-7' }) as Json;
  void $schema;
  return rest;
}

function statusFrameSchema(): Json {
  return {
    type: 'object',
    description: "The call's gRPC status: ends a unary call that failed, and every stream.",
    properties: {
      status: {
        type: 'object',
        properties: { code: { type: 'integer', minimum: 0, maximum: 16 }, name: { type: 'string' }, message: { type: 'string' } },
        required: ['code', 'name', 'message'],
        additionalProperties: false,
      },
    },
    required: ['status'],
    additionalProperties: false,
  };
}

/** "godwit.v1.Controller" from a definition's method paths ("/godwit.v1.Controller/Migrate"). */
function servicePath(definition: grpc.ServiceDefinition): string {
  const first = Object.values(definition)[0];
  return first.path.split('/')[1];
}

interface Field {
  name: string;
  label: string;
  type: string;
  typeName: string;
  oneofIndex?: number;
  proto3Optional?: boolean;
}

interface Descriptor {
  name: string;
  field?: Field[];
  oneofDecl?: { name: string }[];
  value?: { name: string }[];
  enumType?: Descriptor[];
  nestedType?: Descriptor[];
}

function methodTypes(types: PackageDefinition, service: string, method: string): { request: string; response: string } {
  const m = (types[service] as unknown as Record<string, { requestType: MessageTypeDefinition<object, object>; responseType: MessageTypeDefinition<object, object> }>)[method];
  return { request: resolve(types, (m.requestType.type as Descriptor).name, service), response: resolve(types, (m.responseType.type as Descriptor).name, service) };
}

/** A type name as a field names it: absolute, nested in `scope` (a message), or in `scope`'s package. */
function resolve(types: PackageDefinition, name: string, scope: string): string {
  const bare = name.replace(/^\./, '');
  if (types[bare]) return bare;
  if (types[`${scope}.${bare}`]) return `${scope}.${bare}`;
  const pkg = scope.split('.').slice(0, -1).join('.');
  if (types[`${pkg}.${bare}`]) return `${pkg}.${bare}`;
  const found = Object.keys(types).find((k) => k.endsWith(`.${bare}`));
  if (!found) throw new Error(`no type ${name} in the package definition`);
  return found;
}

const SCALARS: Record<string, Json> = {
  TYPE_STRING: { type: 'string' },
  TYPE_BOOL: { type: 'boolean' },
  TYPE_DOUBLE: { type: 'number' },
  TYPE_FLOAT: { type: 'number' },
  TYPE_INT32: { type: 'integer' },
  TYPE_UINT32: { type: 'integer', minimum: 0 },
  TYPE_SINT32: { type: 'integer' },
  TYPE_FIXED32: { type: 'integer', minimum: 0 },
  TYPE_SFIXED32: { type: 'integer' },
  // 64-bit integers: strings in replies (as grpc-js gives them, longs: String), strings or numbers in requests.
  TYPE_INT64: { anyOf: [{ type: 'string', pattern: '^-?\\d+$' }, { type: 'integer' }] },
  TYPE_UINT64: { anyOf: [{ type: 'string', pattern: '^\\d+$' }, { type: 'integer', minimum: 0 }] },
  TYPE_SINT64: { anyOf: [{ type: 'string', pattern: '^-?\\d+$' }, { type: 'integer' }] },
  TYPE_FIXED64: { anyOf: [{ type: 'string', pattern: '^\\d+$' }, { type: 'integer', minimum: 0 }] },
  TYPE_SFIXED64: { anyOf: [{ type: 'string', pattern: '^-?\\d+$' }, { type: 'integer' }] },
  TYPE_BYTES: { type: 'string', contentEncoding: 'base64' },
};

/** JSON Schemas of `name` and every message and enum it uses, into `out` (keyed by full name). */
function collectSchemas(types: PackageDefinition, name: string, out: Json): void {
  if (out[name]) return;
  const def = types[name] as MessageTypeDefinition<object, object> & { format: string };
  const d = def.type as Descriptor;
  if (def.format.includes('EnumDescriptorProto')) {
    out[name] = { type: 'string', enum: (d.value ?? []).map((v) => v.name) };
    return;
  }
  const properties: Json = {};
  out[name] = { type: 'object', properties, additionalProperties: false };
  for (const f of d.field ?? []) {
    let schema: Json;
    const nestedEnum = f.type === 'TYPE_ENUM' ? d.enumType?.find((e) => e.name === f.typeName) : undefined;
    // A map<K, V> field is a repeated message of a nested entry type: in JSON, an object of Vs.
    const mapEntry = f.type === 'TYPE_MESSAGE' ? d.nestedType?.find((n) => n.name === f.typeName || n.name === `${f.typeName}Entry`) : undefined;
    if (mapEntry) {
      const value = mapEntry.field?.find((x) => x.name === 'value');
      properties[f.name] = { type: 'object', additionalProperties: (value && SCALARS[value.type]) ?? {} };
      continue;
    }
    if (nestedEnum) {
      // An enum declared inside the message is not a package entry of its own.
      out[`${name}.${nestedEnum.name}`] = { type: 'string', enum: (nestedEnum.value ?? []).map((v) => v.name) };
      schema = ref(`#/components/schemas/${name}.${nestedEnum.name}`);
    } else if (f.type === 'TYPE_MESSAGE' || f.type === 'TYPE_ENUM') {
      const sub = resolve(types, f.typeName, name);
      collectSchemas(types, sub, out);
      schema = f.type === 'TYPE_MESSAGE' && f.label !== 'LABEL_REPEATED' ? { anyOf: [ref(`#/components/schemas/${sub}`), { type: 'null' }] } : ref(`#/components/schemas/${sub}`);
    } else schema = SCALARS[f.type] ?? {};
    properties[f.name] = f.label === 'LABEL_REPEATED' ? { type: 'array', items: schema } : schema;
  }
  // proto-loader's `oneofs: true` names the member that is set in a field named for the oneof.
  for (const [i, o] of (d.oneofDecl ?? []).entries()) {
    const members = (d.field ?? []).filter((f) => f.oneofIndex === i && !f.proto3Optional).map((f) => f.name);
    if (members.length) properties[o.name] = { type: 'string', enum: members, description: `which of ${members.join(', ')} is set (replies)` };
  }
}

function sortKeys(o: Json): Json {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));
}
