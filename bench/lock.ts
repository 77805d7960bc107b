/** Placeholder until the benchmark lands. */
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('bench lock: not built yet\n');
  return 2;
}
