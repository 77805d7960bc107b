/**
 * What every godwit gRPC server serves besides its own API, so generic tools work on it:
 * gRPC health checking (grpc.health.v1.Health: Check, Watch; load balancers and probes ask it)
 * and server reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo; grpcurl lists and
 * calls the services without the .proto files).
 */
import type * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { LOADER_OPTIONS } from './rpc.js';

/** The health service's name, as health checks name it. */
export const HEALTH_SERVICE = 'grpc.health.v1.Health';
/** The services reflection serves, as a reflection client names them. */
export const REFLECTION_SERVICES = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'] as const;

export interface ServerHealth {
  /** Answers NOT_SERVING for the server and each service (on shutdown: probes stop sending first). */
  notServing(): void;
}

/**
 * Adds health and reflection to `server`. `protoFiles` are the files of the services the server
 * already serves ('godwit/v1/agent.proto'...); each service they define, and the server as a
 * whole (""), answers SERVING. The files are loaded together with health's in one package
 * definition: reflection indexes files by name, and separate loads each carry their own copy of
 * the shared godwit/v1 files, so the last would hide the others' services.
 */
export function addHealthAndReflection(server: grpc.Server, protoFiles: readonly string[]): ServerHealth {
  const merged = protoLoader.loadSync([...protoFiles, healthProtoPath], LOADER_OPTIONS);
  const services = Object.keys(merged).filter((name) => isService(merged[name]));
  const health = new HealthImplementation(Object.fromEntries(['', ...services].map((s) => [s, 'SERVING' as const])));
  health.addToServer(server);
  new ReflectionService(merged).addToServer(server);
  return {
    notServing: () => {
      for (const s of ['', ...services]) health.setStatus(s, 'NOT_SERVING');
    },
  };
}

/** A service's entry is a map of method definitions (each with a `path`); a message's has a `format`. */
function isService(entry: protoLoader.AnyDefinition): boolean {
  return !('format' in entry) && Object.values(entry).some((m) => typeof (m as { path?: unknown }).path === 'string');
}
