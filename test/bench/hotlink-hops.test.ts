import { expect, test } from "bun:test";
import { join } from "node:path";
import { ROOT, STOA } from "../helpers/stoa.ts";

// scripts/bench/hotlink-hops.ts tells where a relayed frame's time goes: its figures are only
// worth reading if both paths really carried the frames and every hop was measured.

test("hotlink-hops measures both paths' three hops over real processes and leaves nothing behind", async () => {
  const proc = Bun.spawn([process.execPath, join(ROOT, "scripts", "bench", "hotlink-hops.ts"), "--json", "--block", "300", "--rounds", "1", "--stoa", STOA], { stdout: "pipe", stderr: "pipe" });
  const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  expect(err).not.toContain("error");
  expect(code).toBe(0);
  const r = JSON.parse(out) as Record<"stoa" | "chain", { frames: number; p50: number; hops: { name: string; user: number; sys: number; main: number }[] }>;
  for (const path of [r.stoa, r.chain]) {
    expect(path.frames).toBe(300);
    expect(path.p50).toBeGreaterThan(0);
    expect(path.hops).toHaveLength(3);
    // Every hop forwarded every frame: its main thread ran for each of them.
    for (const h of path.hops) expect(h.main).toBeGreaterThan(0);
  }
  expect(r.stoa.hops.map((h) => h.name)).toEqual(["alice's daemon", "relay server", "bob's daemon"]);
  // The bench's processes are gone: no stoa left serving or connected under its run dir.
  const left = Bun.spawnSync(["pgrep", "-f", "hlhops-"]).stdout.toString().trim();
  expect(left).toBe("");
}, 120_000);

test("hotlink-hops refuses a block that is not a whole number", () => {
  const r = Bun.spawnSync([process.execPath, join(ROOT, "scripts", "bench", "hotlink-hops.ts"), "--block", "1.5"], { stdout: "pipe", stderr: "pipe" });
  expect(r.exitCode).toBe(2);
  expect(r.stderr.toString()).toContain("--block must be a whole number");
});
