/** Drives the compiled binary as a black box, the way scripts and CI smoke tests do. */
import { existsSync } from "node:fs";
import { join } from "node:path";

export const ROOT = join(import.meta.dir, "..", "..");
export const STOA = join(ROOT, "dist", "stoa");

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs dist/stoa with args (no stdin) and collects its output. */
export function stoa(args: string[], opts: { env?: Record<string, string>; cwd?: string } = {}): Run {
  if (!existsSync(STOA)) throw new Error(`${STOA} is missing: run 'bun run build' (./scripts/test does) first`);
  const proc = Bun.spawnSync([STOA, ...args], {
    cwd: opts.cwd ?? ROOT,
    env: { ...process.env, ...opts.env },
    stdin: "ignore",
  });
  return { code: proc.exitCode ?? -1, stdout: proc.stdout.toString(), stderr: proc.stderr.toString() };
}
