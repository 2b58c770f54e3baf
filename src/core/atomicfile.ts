/**
 * One way to replace a file so that a reader sees the old content or the new, never part of
 * either — the users file, the address state, the ready file, the telemetry file and token files
 * are all written through here:
 *
 *   1. a temporary file beside the target (same directory, so the rename cannot cross a
 *      filesystem), named `<target>.tmp-<pid>-<12 random hex>` and opened with `wx`
 *      (O_CREAT|O_EXCL): never an existing file, never through a symlink someone planted at the
 *      name — if the name is taken another is drawn (up to `MAX_TEMP_ATTEMPTS`);
 *   2. created with the final mode (open(2)'s mode, so the umask applies as to any new file; no
 *      chmod afterwards, so it is never more open than asked, not even for a moment);
 *   3. every byte written (writeSync may take fewer: a full disk, RLIMIT_FSIZE), then fsync;
 *   4. rename over the target — a symlink at the target is replaced, not written through — or,
 *      with `replace: false`, a hard link (fails if the target exists: the first writer wins);
 *   5. fsync of the directory, so the rename itself survives a power cut.
 *
 * On any failure the temporary file is removed and the target is as it was.
 */
import { randomBytes } from "node:crypto";
import { closeSync, fsyncSync, linkSync, openSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { dirname } from "node:path";
import { StoaError, describeError, errnoCode } from "./errors.ts";

/** Temporary names tried before giving up: a collision of 48 random bits is already a sign of an attack. */
export const MAX_TEMP_ATTEMPTS = 8;

interface AtomicWriteOptions {
  /** Permission bits of the new file (0o600 for secrets), applied when it is created. */
  mode: number;
  /** false: create only if the target does not exist (hard link); a StoaError "exists" if it does. Default true. */
  replace?: boolean;
  /**
   * false: skip both fsyncs (still atomic, not durable) — for a file rewritten every second on a
   * daemon's event loop, where an fsync could stall the data path. Default true.
   */
  durable?: boolean;
  /** What the file is, for error messages ("the users file"); default: its path alone. */
  what?: string;
  /** The varying part of the temporary name; default `<pid>-<12 random hex>`. For tests. */
  tempSuffix?: () => string;
}

/**
 * Replaces (or, with `replace: false`, creates) `path` with `data` atomically. Throws a
 * StoaError ("io", or "exists") that says what to check; the target is then unchanged.
 * @example
 * writeFileAtomic(usersFile, `${JSON.stringify(users, null, 2)}\n`, { mode: 0o600, what: "the users file" });
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, options: AtomicWriteOptions): void {
  const { mode, replace = true, durable = true } = options;
  const name = options.what === undefined ? path : `${options.what} ${path}`;
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const { fd, tmp } = openTemp(path, mode, options.tempSuffix ?? defaultSuffix, name);
  let placed = false;
  try {
    try {
      for (let off = 0; off < bytes.byteLength; ) off += writeSync(fd, bytes, off, bytes.byteLength - off);
      if (durable) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    if (replace) {
      renameSync(tmp, path);
      placed = true;
    } else {
      try {
        linkSync(tmp, path);
      } catch (err) {
        if (errnoCode(err) === "EEXIST") throw new StoaError("exists", `${name} exists already`, { cause: err });
        throw err;
      }
    }
    if (durable) syncDirectory(dirname(path));
  } catch (err) {
    if (err instanceof StoaError) throw err;
    throw new StoaError("io", `cannot write ${name}: ${describeError(err)}${advice(err, path)}`, { cause: err });
  } finally {
    if (!placed) removeQuietly(tmp);
  }
}

function defaultSuffix(): string {
  return `${process.pid}-${randomBytes(6).toString("hex")}`;
}

function openTemp(path: string, mode: number, suffix: () => string, name: string): { fd: number; tmp: string } {
  let last: unknown;
  for (let attempt = 0; attempt < MAX_TEMP_ATTEMPTS; attempt++) {
    const tmp = `${path}.tmp-${suffix()}`;
    try {
      return { fd: openSync(tmp, "wx", mode), tmp };
    } catch (err) {
      if (errnoCode(err) !== "EEXIST") {
        throw new StoaError("io", `cannot write ${name}: ${describeError(err)}${advice(err, path)}`, { cause: err });
      }
      last = err;
    }
  }
  throw new StoaError(
    "io",
    `cannot write ${name}: ${MAX_TEMP_ATTEMPTS} temporary names beside it were taken (${describeError(last)}); look for files planted in ${dirname(path)}`,
    { cause: last },
  );
}

function syncDirectory(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } catch (err) {
    // Some filesystems cannot fsync a directory; the rename is as durable as they make it.
    if (errnoCode(err) !== "EINVAL") throw err;
  } finally {
    closeSync(fd);
  }
}

function removeQuietly(tmp: string): void {
  try {
    unlinkSync(tmp);
  } catch {
    // never created, or already gone
  }
}

/** What to check, by errno. */
function advice(err: unknown, path: string): string {
  switch (errnoCode(err)) {
    case "ENOENT":
      return `; create ${dirname(path)} first`;
    case "EACCES":
    case "EPERM":
      return `; check ${dirname(path)} is writable by this user`;
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return "; free space on its filesystem (or raise the file size limit)";
    case "EROFS":
      return "; its filesystem is read-only: choose another place";
    case "EISDIR":
    case "ENOTEMPTY":
      return "; a directory is in its place: remove it or choose another path";
    default:
      return "";
  }
}
