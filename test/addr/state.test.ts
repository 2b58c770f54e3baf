import { afterEach, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { collectGarbage } from "../../src/addr/gc.ts";
import { MAX_STATE_BYTES, type OwnedRecord } from "../../src/addr/model.ts";
import { currentNetns, netnsInUse, ownerAlive, processStart, readState, statePath, withState } from "../../src/addr/state.ts";

/**
 * Whether this process can see every process's network namespace: only then can it tell that a
 * namespace is gone (an unreadable process might hold it — e.g. pid 1 of a sandbox).
 */
function seesAllNamespaces(): boolean {
  if (process.getuid?.() !== 0) return false;
  return readdirSync("/proc")
    .filter((p) => /^\d+$/.test(p))
    .every((p) => {
      try {
        readlinkSync(`/proc/${p}/ns/net`);
        return true;
      } catch (err) {
        return (err as NodeJS.ErrnoException).code !== "EACCES" && (err as NodeJS.ErrnoException).code !== "EPERM";
      }
    });
}
const omniscient = seesAllNamespaces();

const WRITER = join(import.meta.dir, "..", "fixtures", "addr-state-writer.ts");
const dirs: string[] = [];

function runDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "stoa-addr-"));
  dirs.push(dir);
  return dir;
}

afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function record(over: Partial<OwnedRecord> = {}): OwnedRecord {
  return {
    addr: "fd00::1",
    prefixlen: 128,
    dev: "d0",
    ifindex: 2,
    netns: 1,
    pid: null,
    pidStart: null,
    addedAt: "2026-01-01T00:00:00.000Z",
    ...over,
  };
}

function writeRaw(dir: string, text: string): void {
  mkdirSync(join(dir, "addr"), { recursive: true });
  writeFileSync(statePath(dir), text);
}

describe("reading the state file defensively", () => {
  test("a missing file is an empty state", () => {
    expect(readState(runDir())).toEqual({ records: [], warnings: [] });
  });

  test("a record that does not match the schema is dropped with a warning; the others are kept", () => {
    const dir = runDir();
    writeRaw(dir, JSON.stringify({ version: 1, addresses: [record(), { addr: 5 }, record({ addr: "fd00::2", pid: -1 }), record({ addr: "fd00::3" })] }));
    const state = readState(dir);
    expect(state.records.map((r) => r.addr)).toEqual(["fd00::1", "fd00::3"]);
    expect(state.warnings).toHaveLength(2);
    expect(state.warnings[0]).toContain("dropped a malformed record");
  });

  test("garbage, a wrong shape or an oversized file reads as empty with a warning, and is set aside on the next change", () => {
    for (const text of ["{not json", JSON.stringify({ addresses: "x" }), JSON.stringify([1, 2]), " ".repeat(MAX_STATE_BYTES + 1)]) {
      const dir = runDir();
      writeRaw(dir, text);
      const state = readState(dir);
      expect(state.records).toEqual([]);
      expect(state.warnings[0]).toContain("set aside, starting afresh");
      withState(dir, (s) => {
        s.records.push(record());
        return { result: undefined, changed: true };
      });
      expect(readState(dir)).toEqual({ records: [record()], warnings: [] });
      expect(readdirSync(join(dir, "addr")).filter((f) => f.includes(".corrupt-"))).toHaveLength(1);
    }
  });

  test("a file from a newer stoa is refused, not rewritten", () => {
    const dir = runDir();
    writeRaw(dir, JSON.stringify({ version: 2, addresses: [] }));
    expect(() => readState(dir)).toThrow(StoaError);
    expect(() => withState(dir, () => ({ result: 0, changed: true }))).toThrow(/format version 2/);
    expect(JSON.parse(readFileSync(statePath(dir), "utf8"))).toEqual({ version: 2, addresses: [] });
  });
});

describe("changing the state", () => {
  test("writes by replacing the file, leaving no temporary file; an unchanged state is not written", () => {
    const dir = runDir();
    withState(dir, () => ({ result: undefined, changed: false }));
    expect(existsSync(statePath(dir))).toBe(false);
    withState(dir, (s) => {
      s.records.push(record());
      return { result: undefined, changed: true };
    });
    expect(readdirSync(join(dir, "addr")).sort()).toEqual(["owned.json", "owned.lock"]);
    expect(JSON.parse(readFileSync(statePath(dir), "utf8"))).toEqual({ version: 1, addresses: [record()] });
  });

  test("keeps what was changed before a failure", () => {
    const dir = runDir();
    expect(() =>
      withState(dir, (s) => {
        s.records.push(record());
        throw new StoaError("io", "the kernel said no");
      }),
    ).toThrow("the kernel said no");
    expect(readState(dir).records).toEqual([record()]);
  });

  test("four processes appending 100 records each at once lose none (flock)", async () => {
    const dir = runDir();
    const procs = [1, 2, 3, 4].map((id) => Bun.spawn([process.execPath, WRITER, dir, String(id), "100"], { stdout: "inherit", stderr: "inherit" }));
    expect(await Promise.all(procs.map((p) => p.exited))).toEqual([0, 0, 0, 0]);
    const { records, warnings } = readState(dir);
    expect(warnings).toEqual([]);
    expect(new Set(records.map((r) => r.addr)).size).toBe(400);
  }, 30_000);
});

describe("who owns a record", () => {
  test("this process is alive with its start time; the same pid with another start time is someone else", () => {
    const start = processStart(process.pid);
    expect(start).toBeGreaterThan(0);
    expect(ownerAlive(record({ pid: process.pid, pidStart: start ?? 0 }))).toBe(true);
    expect(ownerAlive(record({ pid: process.pid, pidStart: (start ?? 0) + 1 }))).toBe(false);
    expect(ownerAlive(record({ pid: null }))).toBe(true);
  });

  test("a process that exited is dead", async () => {
    const child = Bun.spawn(["sleep", "30"]);
    const start = processStart(child.pid);
    expect(ownerAlive(record({ pid: child.pid, pidStart: start ?? 0 }))).toBe(true);
    child.kill("SIGKILL");
    await child.exited;
    expect(ownerAlive(record({ pid: child.pid, pidStart: start ?? 0 }))).toBe(false);
  });

  test("a command name with spaces and parentheses does not shift the fields", () => {
    // /proc/<pid>/stat: "pid (comm) state ..."; comm may hold ") (" — fields are counted after the last ')'.
    const start = processStart(process.pid);
    const stat = readFileSync(`/proc/${process.pid}/stat`, "utf8");
    expect(Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19])).toBe(start ?? -1);
  });

  test("the current network namespace is in use; one that does not exist is not, when every process can be seen", () => {
    expect(netnsInUse(currentNetns())).toBe(true);
    expect(netnsInUse(1)).toBe(!omniscient);
  });

  test("a namespace is in use while a process or a named mount holds it", () => {
    const root = runDir();
    const proc = join(root, "proc");
    const named = join(root, "netns");
    mkdirSync(join(proc, "42", "ns"), { recursive: true });
    mkdirSync(join(proc, "self"), { recursive: true });
    mkdirSync(named);
    symlinkSync("net:[5000]", join(proc, "42", "ns", "net"));
    writeFileSync(join(named, "blue"), "");
    const blue = statSync(join(named, "blue")).ino;
    expect(netnsInUse(5000, { proc, named })).toBe(true);
    expect(netnsInUse(blue, { proc, named })).toBe(true);
    expect(netnsInUse(5001, { proc, named })).toBe(false);
  });
});

describe("gc without touching the kernel", () => {
  test("forgets records whose address is not there, and records of a namespace that is gone", () => {
    const dir = runDir();
    const here = currentNetns();
    // 2001:db8::/32 is for documentation: no host has these addresses.
    writeRaw(
      dir,
      JSON.stringify({
        version: 1,
        addresses: [
          record({ addr: "2001:db8::1", netns: here, ifindex: 1, dev: "lo", pid: process.pid, pidStart: processStart(process.pid) ?? 0 }),
          record({ addr: "2001:db8::2", netns: here, ifindex: 1, dev: "lo" }),
          record({ addr: "2001:db8::3", netns: 1 }),
        ],
      }),
    );
    const report = collectGarbage(dir);
    expect(report.removed).toEqual([]);
    // Another namespace's record is dropped only when it is surely gone.
    expect(report.kept).toBe(omniscient ? 0 : 1);
    expect(report.dropped).toEqual([
      { addr: "2001:db8::1", dev: "lo", reason: "address already gone" },
      { addr: "2001:db8::2", dev: "lo", reason: "address already gone" },
      ...(omniscient ? [{ addr: "2001:db8::3", dev: "d0", reason: "network namespace gone" }] : []),
    ]);
    expect(readState(dir).records.map((r) => r.addr)).toEqual(omniscient ? [] : ["2001:db8::3"]);
  });

  test("with no state file, gc creates nothing", () => {
    const dir = runDir();
    expect(collectGarbage(dir)).toEqual({ removed: [], dropped: [], kept: 0 });
    expect(readdirSync(dir)).toEqual([]);
  });
});
