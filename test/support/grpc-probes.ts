/**
 * What a generic gRPC tool asks a godwit server: health (grpc.health.v1.Health/Check) and the
 * services reflection lists (grpc.reflection.v1.ServerReflection, as grpcurl's `list` does).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { serviceClient } from '../../lib/rpc.js';

type Ctor = grpc.ServiceClientConstructor;
/** Which godwit server it is: its certificate must say so (lib/tls.ts). */
type Role = 'controller' | 'agent';
const pick = (pkg: grpc.GrpcObject, path: string): Ctor => path.split('.').reduce((o: any, k) => o[k], pkg) as Ctor;

const healthCtor = pick(grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { enums: String })), 'grpc.health.v1.Health');
const reflectionProto = join(dirname(createRequire(import.meta.url).resolve('@grpc/reflection')), '..', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
const reflectionCtor = pick(grpc.loadPackageDefinition(protoLoader.loadSync(reflectionProto, { keepCase: false })), 'grpc.reflection.v1.ServerReflection');

/** The server's answer to Check (e.g. "SERVING"), or the call's error. */
export async function healthStatus(address: string, role: Role, service = ''): Promise<string> {
  const c = serviceClient(healthCtor, address, role) as any;
  try {
    return await new Promise((resolve, reject) =>
      c.Check({ service }, { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, res: { status: string }) => (err ? reject(err) : resolve(String(res.status)))),
    );
  } finally {
    c.close();
  }
}

/** The services the server's reflection lists. */
export async function reflectedServices(address: string, role: Role): Promise<string[]> {
  const c = serviceClient(reflectionCtor, address, role) as any;
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo({ deadline: Date.now() + 10_000 });
      call.on('data', (r: { listServicesResponse?: { service: { name: string }[] }; errorResponse?: { errorMessage: string } }) => {
        if (r.errorResponse) reject(new Error(r.errorResponse.errorMessage));
        else resolve((r.listServicesResponse?.service ?? []).map((s) => s.name));
        call.end();
      });
      call.on('error', reject);
      call.write({ listServices: '*' });
    });
  } finally {
    c.close();
  }
}

/** A file descriptor of `symbol` comes back (what grpcurl needs to call a method without .proto files). */
export async function reflectedFileFor(address: string, role: Role, symbol: string): Promise<number> {
  const c = serviceClient(reflectionCtor, address, role) as any;
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo({ deadline: Date.now() + 10_000 });
      call.on('data', (r: { fileDescriptorResponse?: { fileDescriptorProto: Buffer[] }; errorResponse?: { errorMessage: string } }) => {
        if (r.errorResponse) reject(new Error(r.errorResponse.errorMessage));
        else resolve(r.fileDescriptorResponse?.fileDescriptorProto.length ?? 0);
        call.end();
      });
      call.on('error', reject);
      call.write({ fileContainingSymbol: symbol });
    });
  } finally {
    c.close();
  }
}
