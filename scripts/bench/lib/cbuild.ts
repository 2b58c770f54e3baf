/**
 * The benchmarks' C programs (the native baselines in this directory) built with the system
 * compiler: `cc`, else `gcc`, `-O2 -Wall`, into a temp dir removed when the process exits, once
 * per program and process. A benchmark that cannot build one leaves its figure out and prints the
 * reason (or stops, when the program is the benchmark's own load).
 */
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export type Built = { bin: string } | { reason: string };

const built = new Map<string, Built>();
let dir: string | undefined;

/**
 * lib/`name`.c compiled, linked with `libs` (e.g. ["-lssl", "-lcrypto"]); `hint` is added to a
 * compiler failure's reason (say which package brings the headers).
 */
export function buildC(name: string, options: { libs?: string[]; hint?: string } = {}): Built {
  const known = built.get(name);
  if (known !== undefined) return known;
  const result = compile(name, options.libs ?? [], options.hint);
  built.set(name, result);
  return result;
}

function compile(name: string, libs: string[], hint: string | undefined): Built {
  const cc = Bun.which("cc") ?? Bun.which("gcc");
  if (cc === null) return { reason: "no C compiler (cc or gcc) on PATH" };
  if (dir === undefined) {
    const made = mkdtempSync(join(tmpdir(), "stoa-bench-c-"));
    chmodSync(made, 0o755); // a benchmark may run them under another user
    dir = made;
    process.once("exit", () => rmSync(made, { recursive: true, force: true }));
  }
  const bin = join(dir, name);
  const r = Bun.spawnSync([cc, "-O2", "-Wall", "-o", bin, join(import.meta.dir, `${name}.c`), ...libs], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode === 0) return { bin };
  const first = r.stderr.toString().trim().split("\n")[0] ?? "";
  return { reason: `${cc} failed on lib/${name}.c${hint ? ` (${hint})` : ""}: ${first}` };
}
