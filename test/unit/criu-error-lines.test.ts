import { describe, expect, it } from 'vitest';
import { errorLines } from '../../agent/linux/criu.js';

// Shaped like a real dump.log of nginx as www-data on these machines (FIELD-NOTES).
const LOG = `(00.000123) Version: 4.2 (gitid 0)
(00.001000) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.010000) Found /usr/lib/x86_64-linux-gnu/libgpg-error.so.0.33.1 mapping
(00.020000) Error (criu/cr-dump.c:812): Can't get rlimit 0: Operation not permitted
pie: 12: Error (criu/pie/parasite.c:588): send_fds failed (-22)
(00.030000) Error (criu/cr-dump.c:2093): Dumping FAILED.
(00.040000) Unlink /var/log/nginx/error.log skipped
(00.050000) Error (criu/cr-dump.c:2100): one more unwinding line
`;

describe('errorLines (the cause quoted in a migration error)', () => {
  it("quotes CRIU's first Error lines, pie lines included, not lines that merely contain \"error\"", () => {
    expect(errorLines(LOG)).toBe(
      "Error (criu/cr-dump.c:812): Can't get rlimit 0: Operation not permitted | pie: 12: Error (criu/pie/parasite.c:588): send_fds failed (-22) | Error (criu/cr-dump.c:2093): Dumping FAILED.",
    );
  });

  it('gives the last lines of a log without an Error line (CRIU was killed)', () => {
    expect(errorLines('(00.1) Dumping task 12\n(00.2) Dumping /usr/lib/libgpg-error.so mappings\n')).toBe('Dumping task 12 | Dumping /usr/lib/libgpg-error.so mappings');
  });
});
