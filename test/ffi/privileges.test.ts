import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { lookupUser } from "../../src/ffi/privileges.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "privileges-drop.ts");
const root = process.getuid?.() === 0;
if (!root) console.log("skipping the privilege-drop test: it needs root");

describe("dropPrivileges", () => {
  test("lookupUser reads /etc/passwd by name or uid, and names a missing user", () => {
    expect(lookupUser("root")).toEqual({ name: "root", uid: 0, gid: 0 });
    expect(lookupUser("0").name).toBe("root");
    expect(() => lookupUser("no-such-user-xyz")).toThrow(/no user no-such-user-xyz in \/etc\/passwd/);
  });

  test.skipIf(!root)("every thread becomes nobody; a socket opened before still works; a new AF_PACKET socket is refused", () => {
    const nobody = lookupUser("nobody");
    const proc = Bun.spawnSync([process.execPath, FIXTURE, "nobody"], { stdin: "ignore" });
    expect(proc.stderr.toString()).toBe("");
    const out = JSON.parse(proc.stdout.toString()) as { threads: { tid: string; uids: number[]; gids: number[] }[]; oldSocketUsable: boolean; again: string };
    expect(out.threads.length).toBeGreaterThan(1);
    for (const t of out.threads) {
      expect(t.uids).toEqual([nobody.uid, nobody.uid, nobody.uid, nobody.uid]);
      expect(t.gids).toEqual([nobody.gid, nobody.gid, nobody.gid, nobody.gid]);
    }
    expect(out.oldSocketUsable).toBe(true);
    expect(out.again).toContain("AF_PACKET socket");
    expect(out.again).toMatch(/Operation not permitted|permission/i);
  }, 30_000);
});
