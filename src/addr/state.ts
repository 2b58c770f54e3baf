/**
 * The state file of the addresses stoa added (format and rules: model.ts): locked
 * read-modify-write, atomic replacement, defensive reading, and the facts a record is judged by —
 * the current network namespace and whether its owner process is still the same process.
 */
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, renameSync, statSync } from "node:fs";
import { join } from "node:path";
import { writeFileAtomic } from "../core/atomicfile.ts";
import { StoaError, errnoCode } from "../core/errors.ts";
import { subtreeDir } from "../core/paths.ts";
import { Errno, errno, libc, strerror } from "../ffi/libc.ts";
import { LOCK_FILE, LOCK_TIMEOUT_MS, MAX_STATE_BYTES, OwnedRecord, STATE_FILE, STATE_VERSION, StateFile } from "./model.ts";

/** flock(2) operations, sys/file.h. */
const LOCK_EX = 2;
const LOCK_NB = 4;
/** Pause between attempts to take a contended lock (holders keep it for well under a millisecond). */
const LOCK_RETRY_MS = 1;

interface State {
  records: OwnedRecord[];
  /** What was wrong with the file, for the user (records dropped, a corrupt file set aside). */
  warnings: string[];
}

export function statePath(runDir: string): string {
  return join(subtreeDir(runDir, "addr"), STATE_FILE);
}

/**
 * Reads the state without the lock (the file is only ever replaced by rename, so a read sees one
 * whole version). A missing file is an empty state; a corrupt one reads as empty, with a warning.
 */
export function readState(runDir: string): State {
  const path = statePath(runDir);
  let text: string;
  try {
    if (statSync(path).size > MAX_STATE_BYTES) return corrupt(`${path} is over ${MAX_STATE_BYTES} bytes`);
    text = readFileSync(path, "utf8");
  } catch (err) {
    if (errnoCode(err) === "ENOENT") return { records: [], warnings: [] };
    throw new StoaError("io", `cannot read ${path}: ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return corrupt(`${path} is not JSON`);
  }
  const file = StateFile.safeParse(json);
  if (!file.success) return corrupt(`${path} is not a stoa address state file`);
  if (file.data.version !== STATE_VERSION) {
    throw new StoaError("config", `${path} has format version ${file.data.version}; this stoa reads version ${STATE_VERSION} (upgrade stoa)`);
  }
  const records: OwnedRecord[] = [];
  const warnings: string[] = [];
  for (const item of file.data.addresses) {
    const r = OwnedRecord.safeParse(item);
    if (r.success) records.push(r.data);
    else warnings.push(`${path}: dropped a malformed record ${JSON.stringify(item).slice(0, 120)}`);
  }
  return { records, warnings };
}

function corrupt(why: string): State & { corrupt: true } {
  return { records: [], warnings: [`${why}; set aside, starting afresh`], corrupt: true };
}

/**
 * Runs `fn` on the state under the exclusive lock and writes the state back if `fn` returns
 * `{ changed: true }` (or throws after changing it — progress is never lost). A corrupt file is
 * renamed to `owned.json.corrupt-<time>` first.
 */
export function withState<T>(runDir: string, fn: (state: State) => { result: T; changed: boolean }): T {
  const dir = subtreeDir(runDir, "addr");
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new StoaError("io", `cannot create ${dir}: ${(err as Error).message} (use --run-dir, or run as root)`);
  }
  const unlock = lock(join(dir, LOCK_FILE));
  try {
    const state = readState(runDir);
    if ("corrupt" in state) {
      const path = statePath(runDir);
      renameSync(path, `${path}.corrupt-${new Date().toISOString().replace(/[:.]/g, "-")}`);
    }
    let changed = false;
    try {
      const out = fn(state);
      changed = out.changed;
      return out.result;
    } catch (err) {
      changed = true;
      throw err;
    } finally {
      if (changed) writeState(runDir, state.records);
    }
  } finally {
    unlock();
  }
}

function writeState(runDir: string, records: OwnedRecord[]): void {
  const path = statePath(runDir);
  const text = `${JSON.stringify({ version: STATE_VERSION, addresses: records }, null, 1)}\n`;
  if (text.length > MAX_STATE_BYTES) throw new StoaError("too_large", `${path} would exceed ${MAX_STATE_BYTES} bytes; run 'stoa addr gc'`);
  writeFileAtomic(path, text, { mode: 0o600 });
}

/** Takes an exclusive flock on `path` (created if needed), waiting up to LOCK_TIMEOUT_MS. */
function lock(path: string): () => void {
  let fd: number;
  try {
    fd = openSync(path, "a", 0o600);
  } catch (err) {
    throw new StoaError("io", `cannot open ${path}: ${(err as Error).message} (use --run-dir, or run as root)`);
  }
  const deadline = performance.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    if (libc().flock(fd, LOCK_EX | LOCK_NB) === 0) break;
    const code = errno();
    if (code !== Errno.EAGAIN && code !== Errno.EINTR) {
      closeSync(fd);
      throw new StoaError("io", `cannot lock ${path}: ${strerror(code)}`);
    }
    if (performance.now() > deadline) {
      closeSync(fd);
      throw new StoaError("timeout", `${path} stayed locked by another stoa process for ${LOCK_TIMEOUT_MS} ms; try again`);
    }
    Bun.sleepSync(LOCK_RETRY_MS);
  }
  // Closing the fd releases the lock; so does the process dying, so no stale lock is possible.
  return () => closeSync(fd);
}

/** The inode of this process's network namespace: what a record's `netns` is compared with. */
export function currentNetns(): number {
  return statSync("/proc/self/ns/net").ino;
}

/**
 * Whether any process or `ip netns` mount still holds network namespace `ino`. A process whose
 * namespace cannot be read might hold it: then the answer is yes. (`roots` are for tests.)
 */
export function netnsInUse(ino: number, roots = { proc: "/proc", named: "/run/netns" }): boolean {
  if (ino === currentNetns()) return true;
  try {
    for (const name of readdirSync(roots.named)) {
      try {
        if (statSync(join(roots.named, name)).ino === ino) return true;
      } catch {
        // vanished or unreadable: look further
      }
    }
  } catch {
    // no named namespaces on this host
  }
  const want = `net:[${ino}]`;
  for (const pid of readdirSync(roots.proc)) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readlinkSync(join(roots.proc, pid, "ns", "net")) === want) return true;
    } catch (err) {
      const code = errnoCode(err);
      if (code === "EACCES" || code === "EPERM") return true;
    }
  }
  return false;
}

/** Field 22 of /proc/<pid>/stat (start time in clock ticks after boot), or undefined if no live process. */
export function processStart(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces and parentheses: fields 3+ follow the last ')'.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const state = fields[0];
  if (state === "Z" || state === "X" || state === "x") return undefined;
  const start = Number(fields[19]);
  return Number.isSafeInteger(start) ? start : undefined;
}

/** Whether a record's owner is still running (a record without an owner is always "alive"). */
export function ownerAlive(record: OwnedRecord): boolean {
  if (record.pid === null) return true;
  const start = processStart(record.pid);
  return start !== undefined && start === record.pidStart;
}

/** Whether this process holds CAP_NET_ADMIN (CapEff bit 12, linux/capability.h). Without it every change fails with EPERM. */
export function hasNetAdmin(): boolean {
  try {
    const hex = /^CapEff:\s*([0-9a-fA-F]+)\s*$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    return hex === undefined || ((BigInt(`0x${hex}`) >> 12n) & 1n) === 1n;
  } catch {
    return true; // cannot tell: let the kernel decide
  }
}
