/**
 * Where a Bun Worker's code is, from source or from a compiled binary. From source the entry is
 * a .ts file next to its caller. In a `bun build --compile` binary an extra entrypoint is
 * embedded as `<its path relative to the entrypoints' common directory>.js` beside the main
 * module (measured on Bun 1.4.5; `import.meta.url` is not usable there with --bytecode), so it is
 * looked up in the embedded filesystem. Every Worker entry must be listed in scripts/build.ts.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { StoaError } from "./errors.ts";

/**
 * @param source the entry as a URL relative to the caller, e.g. `new URL("./worker.ts", import.meta.url)`
 * @param embedded its path under src/ with a .js extension, e.g. `"gateway/worker.js"`
 * @param fallback what to tell the user when the binary lacks it
 */
export function workerEntry(source: URL, embedded: string, fallback: string): string {
  if (!Bun.main.startsWith("/$bunfs/")) return source.href;
  // The top of the embedded tree ("/$bunfs/root"): inside a Worker, Bun.main is that worker's
  // own file, possibly in a subdirectory.
  const root = Bun.main.split("/").slice(0, 3).join("/");
  const found = readdirSync(root, { recursive: true })
    .map(String)
    .find((p) => p === embedded || p.endsWith(`/${embedded}`));
  if (found === undefined) {
    throw new StoaError(
      "config",
      `this stoa binary was built without src/${embedded.replace(/\.js$/, ".ts")} as a build entrypoint; ${fallback}, or rebuild with scripts/build.ts`,
    );
  }
  return join(root, found);
}
