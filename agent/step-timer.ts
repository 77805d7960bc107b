/**
 * Where an agent call's time goes: each call times its steps and returns them with its answer,
 * so the migration record shows the freeze host by host and step by step (not only the
 * controller's phase times). Names are short and stable: the bench groups by them.
 */
export interface StepTime {
  step: string;
  ms: number;
  /** The host that ran it, when not the one answering (the target's part of a transfer). */
  host?: string;
}

/**
 * Names a step that ran alongside the call's other steps (streaming the image while CRIU writes
 * it): its time is shown, never added into the phase's sum.
 */
export const CONCURRENT_STEP = '(concurrent)';

/**
 * Told of every step any timer of this process records itself (not steps another host reported):
 * the agent's metrics (agent/metrics.ts) count them here, so no handler needs to.
 */
export const stepObservers = new Set<(step: string, ms: number) => void>();

export class StepTimer {
  readonly steps: StepTime[] = [];

  /** Times `fn` as step `name` (recorded even when it throws: a failed step's time counts too). */
  async time<T>(name: string, fn: () => Promise<T> | T): Promise<T> {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      this.add(name, performance.now() - t0);
    }
  }

  add(name: string, ms: number): void {
    this.steps.push({ step: name, ms });
    for (const observe of stepObservers) observe(name, ms);
  }

  /** Steps another host reported with its host named (the target's part of a transfer). */
  addFrom(steps: readonly StepTime[]): void {
    for (const s of steps) this.steps.push({ ...s });
  }

  /** The steps for an answer of host `host`: every step names its host. */
  wire(host: string): Required<StepTime>[] {
    return this.steps.map((s) => ({ step: s.step, ms: s.ms, host: s.host || host }));
  }
}
