#!/usr/bin/env bun
/**
 * Builds dist/stoa: `bun build --compile` of src/main.ts into one executable, with the git
 * commit and build time baked in, and dist/stoa.1 (`stoa man`). `--minify --bytecode` measured
 * fastest to start (see scripts/bench/startup.ts). With `--release`, also writes
 * dist/stoa-linux-<arch> and its .sha256 — the two files install.sh downloads in its `curl … | sh` mode.
 *
 *   bun run build            # dist/stoa
 *   bun run release          # + dist/stoa-linux-x64, dist/stoa-linux-x64.sha256
 */
import { $ } from "bun";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";

const root = join(import.meta.dir, "..");
const dist = join(root, "dist");
const release = process.argv.includes("--release");

async function gitCommit(): Promise<string> {
  const head = await $`git -C ${root} rev-parse --short=12 HEAD`.nothrow().quiet();
  if (head.exitCode !== 0) return "unknown";
  const dirty = (await $`git -C ${root} status --porcelain --untracked-files=no`.nothrow().quiet()).stdout.length > 0;
  return `${head.stdout.toString().trim()}${dirty ? "-dirty" : ""}`;
}

/** The arch names in release file names (Bun's own: x64, arm64). */
export function releaseName(): string {
  return `stoa-linux-${process.arch}`;
}

await mkdir(dist, { recursive: true });
const commit = await gitCommit();
const built = new Date().toISOString().replace(/\.\d+Z$/, "Z");
const out = join(dist, "stoa");
const started = performance.now();
// Every Bun Worker entry must be bundled as its own entrypoint (src/core/worker-entry.ts).
const result = await $`bun build --compile --minify --bytecode ${join(root, "src/main.ts")} ${join(root, "src/gateway/worker.ts")} ${join(root, "src/core/fdsplice-worker.ts")} ${join(root, "src/meta/worker.ts")} ${join(root, "src/circles/worker.ts")} --outfile ${out} --define STOA_BUILD_COMMIT=${JSON.stringify(commit)} --define STOA_BUILD_TIME=${JSON.stringify(built)}`
  .cwd(root)
  .nothrow()
  .quiet();
if (result.exitCode !== 0) {
  process.stderr.write(result.stderr);
  process.stderr.write(result.stdout);
  process.stderr.write("build: bun build --compile failed\n");
  process.exit(1);
}
console.log(`built ${out} (commit ${commit}) in ${Math.round(performance.now() - started)} ms`);

// The manual page, from the binary just built (same command table, same version and build time).
const man = await $`${out} man`.nothrow().quiet();
if (man.exitCode !== 0) {
  process.stderr.write(man.stderr);
  process.stderr.write("build: dist/stoa man failed\n");
  process.exit(1);
}
await Bun.write(join(dist, "stoa.1"), man.stdout);

// systemd units, from the binary just built (`stoa service unit`): generated like the manual, so
// they never drift from the daemons' flags. ExecStart names /usr/local/bin/stoa, where install.sh
// puts it; `stoa service unit NAME` prints one for wherever stoa actually is.
const units = join(dist, "systemd");
await mkdir(units, { recursive: true });
for (const name of ["up", "gateway", "meta", "hotlink-serve"]) {
  const text = await $`${out} service unit ${name}`.nothrow().quiet();
  if (text.exitCode !== 0) {
    process.stderr.write(text.stderr);
    process.stderr.write(`build: dist/stoa service unit ${name} failed\n`);
    process.exit(1);
  }
  await Bun.write(join(units, `stoa-${name}.service`), text.stdout.toString().replaceAll(`ExecStart=${out} `, "ExecStart=/usr/local/bin/stoa "));
}
await Bun.write(join(units, "stoa-gateway.socket"), (await $`${out} service unit gateway.socket`.quiet()).stdout);

if (release) {
  const name = releaseName();
  const target = join(dist, name);
  await $`cp ${out} ${target}`;
  const hasher = new Bun.CryptoHasher("sha256");
  hasher.update(await Bun.file(target).arrayBuffer());
  await Bun.write(`${target}.sha256`, `${hasher.digest("hex")}  ${name}\n`);
  console.log(`release: ${target} and ${target}.sha256`);
}
