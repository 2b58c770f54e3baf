/**
 * What this binary is: stoa's version (from package.json), the Bun it runs on, and the git
 * commit and time it was built at. scripts/build.ts injects the last two with `--define`;
 * running from source (`bun src/main.ts`) reports them as "dev" / "unknown".
 */
import pkg from "../../package.json" with { type: "json" };

declare const STOA_BUILD_COMMIT: string;
declare const STOA_BUILD_TIME: string;

interface BuildInfo {
  version: string;
  bun: string;
  commit: string;
  built: string;
  platform: string;
  arch: string;
  compiled: boolean;
}

export function buildInfo(): BuildInfo {
  return {
    version: pkg.version,
    bun: Bun.version,
    commit: typeof STOA_BUILD_COMMIT === "string" ? STOA_BUILD_COMMIT : "dev",
    built: typeof STOA_BUILD_TIME === "string" ? STOA_BUILD_TIME : "unknown",
    platform: process.platform,
    arch: process.arch,
    // A compiled binary runs its code from Bun's embedded filesystem.
    compiled: Bun.main.startsWith("/$bunfs/"),
  };
}
