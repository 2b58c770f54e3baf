import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "../helpers/stoa.ts";

const work = mkdtempSync(join(tmpdir(), "stoa-install-"));
const releaseName = `stoa-linux-${process.arch}`;
let server: ReturnType<typeof Bun.serve>;
/** What the local "download site" serves, by path. */
const site = new Map<string, () => Response>();

beforeAll(() => {
  const built = Bun.spawnSync([process.execPath, "run", "release"], { cwd: ROOT, stdin: "ignore" });
  if (built.exitCode !== 0) throw new Error(`bun run release failed: ${built.stderr.toString()}`);
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(req) {
      const make = site.get(new URL(req.url).pathname);
      return make ? make() : new Response("not found", { status: 404 });
    },
  });
  const binary = join(ROOT, "dist", releaseName);
  const sum = readFileSync(`${binary}.sha256`, "utf8");
  site.set(`/good/${releaseName}`, () => new Response(Bun.file(binary)));
  site.set(`/good/${releaseName}.sha256`, () => new Response(sum));
  site.set(`/tampered/${releaseName}`, () => new Response(Bun.file(binary)));
  site.set(`/tampered/${releaseName}.sha256`, () => new Response(`${"0".repeat(64)}  ${releaseName}\n`));
});

afterAll(() => {
  server?.stop(true);
  rmSync(work, { recursive: true, force: true });
});

/**
 * `cat install.sh | sh` from a directory with no checkout around it, as curl | sh would.
 * Asynchronous: the download site is served by this same process.
 */
async function pipedInstall(env: Record<string, string>) {
  const proc = Bun.spawn(["sh"], {
    cwd: work,
    stdin: Bun.file(join(ROOT, "install.sh")),
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: work, ...env },
  });
  const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
  return { code, stderr };
}

describe("install.sh without a checkout (curl | sh)", () => {
  test("downloads, verifies the checksum and installs a working binary", async () => {
    const prefix = join(work, "p1");
    const run = await pipedInstall({ PREFIX: prefix, STOA_DOWNLOAD_BASE: `http://127.0.0.1:${server.port}/good/` });
    expect(run.stderr).toContain("checksum ok");
    expect(run.code).toBe(0);
    expect(run.stderr).toContain(`installed stoa`);
    expect(run.stderr).toContain("NOT on PATH");
    // stoa(1), written from the installed binary's own command table.
    const page = readFileSync(join(prefix, "share", "man", "man1", "stoa.1"), "utf8");
    expect(page).toContain('\n.TH STOA 1 ');
    expect(page).toContain("hotlink serve");
    const version = Bun.spawnSync([join(prefix, "bin", "stoa"), "version", "--json"]);
    expect(version.exitCode).toBe(0);
    expect(JSON.parse(version.stdout.toString()).compiled).toBe(true);
  });

  test("refuses a binary whose checksum does not match and installs nothing", async () => {
    const prefix = join(work, "p2");
    const run = await pipedInstall({ PREFIX: prefix, STOA_DOWNLOAD_BASE: `http://127.0.0.1:${server.port}/tampered` });
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain("checksum mismatch");
    expect(existsSync(join(prefix, "bin", "stoa"))).toBe(false);
  });

  test("a missing release fails with the URL it tried", async () => {
    const run = await pipedInstall({ PREFIX: join(work, "p3"), STOA_DOWNLOAD_BASE: `http://127.0.0.1:${server.port}/nothing` });
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`/nothing/${releaseName}`);
  });

  test("without STOA_DOWNLOAD_BASE it says what to set", async () => {
    const run = await pipedInstall({ PREFIX: join(work, "p4") });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("set STOA_DOWNLOAD_BASE");
  });
});

describe("install.sh from a checkout", () => {
  test("builds with the pinned Bun and installs into PREFIX", () => {
    const prefix = join(work, "p5");
    const proc = Bun.spawnSync([join(ROOT, "install.sh")], {
      cwd: work,
      stdin: "ignore",
      env: { ...process.env, PREFIX: prefix, PATH: `${join(prefix, "bin")}:${process.env.PATH ?? ""}` },
    });
    const stderr = proc.stderr.toString();
    expect(proc.exitCode, stderr).toBe(0);
    expect(stderr).toContain("is on PATH");
    const version = Bun.spawnSync([join(prefix, "bin", "stoa"), "version"]);
    expect(version.stdout.toString()).toStartWith("stoa ");
  }, 120_000);
});
