// Placeholder until the handoff file lands (helper h9-handoff); replaced at merge.
import type { SteeringHandoff } from './steering.js';
export async function writeHandoffFile(_dir: string, _h: SteeringHandoff): Promise<void> {}
export async function readHandoffFile(_dir: string): Promise<SteeringHandoff | undefined> {
  return undefined;
}
export async function removeHandoffFile(_dir: string): Promise<void> {}
