/**
 * src/status/status.ts on a run dir with nothing running: what it reports as problems — no
 * gateway, and, asked for with `hotlinkUsers` (`stoa status --hotlink`), each user with no
 * hotlink daemon (the README's tunnel waits on it: daemons started in the background may not
 * have bound their control sockets when status first looks).
 */
import { expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { collectStatus } from "../../src/status/status.ts";

test("a hotlink user asked for without a daemon in the run dir is a problem, one line per user; not asking adds none", async () => {
  const runDir = mkdtempSync(join(tmpdir(), "stoa-status-"));
  try {
    const base = { runDir, metaUrl: "http://127.0.0.1:9", metaRequired: false };
    const plain = await collectStatus(base);
    expect(plain.problems.filter((p) => p.includes("hotlink"))).toEqual([]);
    const asked = await collectStatus({ ...base, hotlinkUsers: ["alice", "bob"] });
    expect(asked.healthy).toBe(false);
    expect(asked.problems.filter((p) => p.includes("hotlink"))).toEqual([
      `no hotlink daemon of alice runs in ${runDir} (yet?)`,
      `no hotlink daemon of bob runs in ${runDir} (yet?)`,
    ]);
  } finally {
    rmSync(runDir, { recursive: true, force: true });
  }
});
