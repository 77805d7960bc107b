/**
 * One migration's steps on this agent, one at a time. A controller that died mid-call and its
 * successor's retry (or a rollback's Abort) can reach the agent while the first call still runs
 * here (a gRPC handler goes on after its caller is gone): the retry then waits for it, and
 * finds its effect in the migration's record (agent/migration-record.ts) instead of running a
 * second CRIU beside the first. Steps of different migrations still run side by side.
 */
export class MigrationSteps {
  private readonly tails = new Map<string, Promise<unknown>>();

  /** Runs `fn` once every earlier step of migration `id` on this agent has ended. */
  run<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(id) ?? Promise.resolve();
    const mine = before.then(fn, fn);
    const tail = mine.catch(() => undefined);
    this.tails.set(id, tail);
    void tail.then(() => {
      if (this.tails.get(id) === tail) this.tails.delete(id);
    });
    return mine;
  }

  /** Migrations with a step running or waiting here. */
  busy(): string[] {
    return [...this.tails.keys()];
  }
}
