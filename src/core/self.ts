/**
 * How to start this same stoa again: the compiled binary's real path, or — run from source —
 * bun and the entry script. For processes stoa starts itself (the supervisor's workers) and for
 * the command lines it writes for others (systemd units).
 */
import { realpathSync } from "node:fs";
import { buildInfo } from "./buildinfo.ts";

/** The argv prefix that runs this stoa: `[binary]` or `[bun, main.ts]`, real paths. */
export function selfArgv(): string[] {
  if (buildInfo().compiled) return [realpathSync(process.execPath)];
  return [realpathSync(process.execPath), realpathSync(Bun.main)];
}
