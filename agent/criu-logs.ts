/**
 * CRIU's logs of a migration, kept where a failure cannot delete them. CRIU writes dump.log and
 * restore.log into the image folder, which goes when the migration is undone or released; a
 * failed dump or restore copies them to <state>/criu-logs/<migration>/ first, so that
 * `godwit logs MIGRATION_ID` can print them afterwards. They stay there until an operator removes
 * the folder (with the migration's other records under the agent's state folder).
 */
import { copyFile, mkdir, readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';

const LOG_NAME = /^[a-z-]+\.log$/;
/** CRIU's logs (criu.ts DUMP_LOG, RESTORE_LOG); godwit's own files in the folder are not logs. */
const CRIU_LOGS = ['dump.log', 'restore.log'];

export interface MigrationLog {
  name: string;
  text: string;
  kept: boolean;
}

export class CriuLogKeeper {
  constructor(private readonly stateDir: string) {}

  private dir(migrationId: string): string {
    return join(this.stateDir, 'criu-logs', migrationId);
  }

  /** Copies the image folder's CRIU logs to the kept folder (a later copy of the same name replaces it). */
  async keep(migrationId: string, imageDir: string): Promise<string[]> {
    const kept: string[] = [];
    for (const name of CRIU_LOGS) {
      const from = join(imageDir, name);
      try {
        await mkdir(this.dir(migrationId), { recursive: true });
        await copyFile(from, join(this.dir(migrationId), name));
        kept.push(name);
      } catch {
        // not written (the step did not get that far)
      }
    }
    return kept;
  }

  /** The kept logs, then those still in the image folder that were not kept. */
  async read(migrationId: string, imageDir: string): Promise<MigrationLog[]> {
    const out: MigrationLog[] = [];
    const keptNames = (await readdir(this.dir(migrationId)).catch(() => [] as string[])).filter((n) => LOG_NAME.test(n)).sort();
    for (const name of keptNames) out.push({ name, text: await readFile(join(this.dir(migrationId), name), 'utf8'), kept: true });
    for (const name of CRIU_LOGS) {
      if (keptNames.includes(name)) continue;
      const text = await readFile(join(imageDir, name), 'utf8').catch(() => undefined);
      if (text !== undefined) out.push({ name, text, kept: false });
    }
    return out;
  }
}
