import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  gatewayControlPath,
  hotlinkControlPath,
  oldLayoutPublisherDirs,
  publisherDir,
  publishersDir,
  publisherSocketPath,
  RUN_DIR_SUBTREES,
  subtreeDir,
} from "../../src/core/paths.ts";

describe("the run dir's layout", () => {
  test("every subsystem has its own subtree; publishers live in pub/<pub_id>/", () => {
    const run = "/run/stoa";
    expect(gatewayControlPath(run)).toBe("/run/stoa/gateway.sock");
    expect(publishersDir(run)).toBe("/run/stoa/pub");
    expect(publisherDir(run, "cam1")).toBe("/run/stoa/pub/cam1");
    expect(publisherSocketPath(run, "cam1", "ping")).toBe("/run/stoa/pub/cam1/ping.sock");
    expect(hotlinkControlPath(run, "ping")).toBe("/run/stoa/hotlink/ping.sock");
    expect(subtreeDir(run, "addr")).toBe("/run/stoa/addr");
    for (const later of ["circles", "flows", "supervisor"] as const) expect(subtreeDir(run, later)).toBe(`/run/stoa/${later}`);
  });

  test("no two subtrees share a name, and no pub_id or hotlink user can name a file outside its own", () => {
    const names = Object.values(RUN_DIR_SUBTREES);
    expect(new Set(names).size).toBe(names.length);
    // The names that once collided (issue 9, D2/D8) now stay inside the publishers' subtree.
    for (const pubId of ["hotlink", "gateway.sock", "addr", "pub"]) {
      expect(publisherSocketPath("/r", pubId, "ping").startsWith("/r/pub/")).toBe(true);
    }
    expect(hotlinkControlPath("/r", "ping").startsWith("/r/hotlink/")).toBe(true);
  });
});

describe("leftovers of the old layout", () => {
  test("are the run dir's own directories holding a publisher socket name, never a subtree", () => {
    const run = mkdtempSync("/tmp/paths-");
    try {
      expect(oldLayoutPublisherDirs(join(run, "missing"))).toEqual([]);
      for (const d of ["old2", "old1", "empty", "pub/new", "hotlink", "addr"]) mkdirSync(join(run, d), { recursive: true });
      for (const f of ["old1/ping.sock", "old2/service.sock", "pub/new/service.sock", "hotlink/ping.sock", "addr/string.sock"]) writeFileSync(join(run, f), "");
      writeFileSync(join(run, "gateway.sock"), "");
      expect(oldLayoutPublisherDirs(run)).toEqual(["old1", "old2"]);
    } finally {
      rmSync(run, { recursive: true, force: true });
    }
  });
});
