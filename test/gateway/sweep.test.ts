/**
 * The gateway reclaims crashed publishers' `pub/<pub_id>/` directories, and nothing else.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger } from "../../src/core/log.ts";
import { publisherDir, publisherSocketPath } from "../../src/core/paths.ts";
import { sweepDeadPublishers } from "../../src/gateway/sweep.ts";

const HOLDER = join(import.meta.dir, "..", "fixtures", "unix-holder.ts");
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
const log = createLogger({ level: "error" });

function runDir(): string {
  const d = mkdtempSync(join(tmpdir(), "stoa-sweep-"));
  dirs.push(d);
  return d;
}

/** A socket file whose owner died (SIGKILL: nothing unlinked it), or one still served. */
async function socketAt(path: string, alive: boolean) {
  const holder = Bun.spawn([process.execPath, HOLDER, path], { stdout: "pipe", stderr: "ignore" });
  const reader = holder.stdout.getReader();
  await reader.read(); // "ready"
  reader.releaseLock();
  if (!alive) {
    holder.kill("SIGKILL");
    await holder.exited;
  }
  return holder;
}

/** Makes a directory look untouched for a minute (older than the sweep's grace). */
function age(path: string) {
  const then = new Date(Date.now() - 60_000);
  utimesSync(path, then, then);
}

describe("sweepDeadPublishers", () => {
  test("removes a directory whose sockets all refuse, and keeps a live publisher's, an empty one and a recent one", async () => {
    const run = runDir();
    const dead = "dead-1";
    const live = "live-1";
    const recent = "recent-1";
    const empty = "empty-1";
    for (const id of [dead, live, recent, empty]) mkdirSync(publisherDir(run, id), { recursive: true });
    await socketAt(publisherSocketPath(run, dead, "service"), false);
    await socketAt(publisherSocketPath(run, dead, "ping"), false);
    const holder = await socketAt(publisherSocketPath(run, live, "service"), true);
    await socketAt(publisherSocketPath(run, recent, "service"), false);
    for (const id of [dead, live, empty]) age(publisherDir(run, id));
    try {
      expect(await sweepDeadPublishers(run, log)).toEqual([dead]);
      expect(existsSync(publisherDir(run, dead))).toBe(false);
      expect(existsSync(publisherSocketPath(run, live, "service"))).toBe(true);
      expect(existsSync(publisherSocketPath(run, recent, "service"))).toBe(true);
      expect(existsSync(publisherDir(run, empty))).toBe(true);
    } finally {
      holder.kill("SIGKILL");
    }
  });

  test("leaves a directory holding anything but sockets, and a symlinked one", async () => {
    const run = runDir();
    mkdirSync(publisherDir(run, "file-1"), { recursive: true });
    await socketAt(publisherSocketPath(run, "file-1", "service"), false);
    writeFileSync(join(publisherDir(run, "file-1"), "notes.txt"), "mine\n");
    age(publisherDir(run, "file-1"));
    const elsewhere = join(runDir(), "target");
    mkdirSync(elsewhere);
    await socketAt(join(elsewhere, "service.sock"), false);
    age(elsewhere);
    symlinkSync(elsewhere, publisherDir(run, "link-1"));
    expect(await sweepDeadPublishers(run, log)).toEqual([]);
    expect(existsSync(join(publisherDir(run, "file-1"), "service.sock"))).toBe(true);
    expect(existsSync(join(elsewhere, "service.sock"))).toBe(true);
  });
});
