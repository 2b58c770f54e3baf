/**
 * Standard output as a data stream that its reader may stop reading: `stoa sub NAME | head -1`.
 *
 * When the reader goes away, writes fail with EPIPE (Bun ignores SIGPIPE, so the process is
 * not killed the way a C program's would be). The shell's convention for a producer whose
 * consumer is done is to stop quietly and successfully, so `endOnBrokenStdout()` turns EPIPE on
 * stdout into a clean shutdown with exit 0 — cleanups still run (a publisher deregisters, a
 * daemon removes its sockets), nothing is printed. Any other write error still surfaces.
 * EPIPE on stderr (`stoa … 2>&1 | head -1`) is ignored: nobody is left to read a complaint, and
 * stdout's own EPIPE ends the process. src/cli/run.ts installs it once for every command.
 */
import { errnoCode } from "./errors.ts";
import { shutdown } from "./shutdown.ts";

let installed = false;

/** Whether `err` is a write to a pipe (or socket) whose reader has closed it. */
function isBrokenPipe(err: unknown): boolean {
  const code = errnoCode(err);
  return code === "EPIPE" || code === "ERR_STREAM_DESTROYED";
}

/**
 * Makes EPIPE on stdout end the process quietly with exit 0 (see the module header). Idempotent.
 * @example
 * endOnBrokenStdout();
 * process.stdout.write("a line nobody may read\n");
 */
export function endOnBrokenStdout(): void {
  if (installed) return;
  installed = true;
  let ending = false;
  process.stdout.on("error", (err: unknown) => {
    if (!isBrokenPipe(err)) throw err;
    if (ending) return;
    ending = true;
    void shutdown("stdout closed by its reader", 0);
  });
  process.stderr.on("error", (err: unknown) => {
    if (!isBrokenPipe(err)) throw err;
  });
}
