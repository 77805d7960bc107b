/**
 * A bench's options, parsed by its commander program (with exitOverride): the options, or the
 * exit code to return when commander has already printed help (0) or a usage problem (2).
 */
export function optionsOrExit<T>(parse: (argv: string[]) => T, argv: string[]): T | { exitCode: number } {
  try {
    return parse(argv);
  } catch (e) {
    return { exitCode: (e as { code?: string }).code === 'commander.helpDisplayed' ? 0 : 2 };
  }
}
