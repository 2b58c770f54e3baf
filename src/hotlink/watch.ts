/**
 * Marker files (`stoa hotlink connect --watch DIR`), compatible with the seed's workflow: a file
 * named `stream.tcp` anywhere under DIR declares a TCP tunnel.
 *
 *   DIR/alice/mpc/run1/0_to_1/stream.tcp
 *   {"from": "alice", "to": "bob", "port": 10001, "ports": {"alice": 10001, "bob": 10003}}
 *
 * - The channel is the file's directory relative to DIR (`alice/mpc/run1/0_to_1`); it must be a
 *   valid hotlink path (acl.ts). The peer is whichever of `from`/`to` is not this daemon's user;
 *   the tunnel listens on 127.0.0.1:`ports[me]` (`port` is the seed's field, not used here).
 *   A marker that names neither side as me, or has no port for me, is skipped with a warning.
 * - A new file adds the tunnel; a changed file replaces it when what it declares changed (a
 *   rewrite with the same peer and port leaves the running tunnel alone); a removed file removes
 *   it. A file that cannot be read as a marker (too big, not JSON, wrong fields) is reported and
 *   the tunnel it declared before, if any, keeps running: half-written files are common, and a
 *   live connection is worth more than a momentary typo. A marker that is valid but now
 *   declares nothing for me removes it.
 * - Only tunnels added here are ever removed here: a channel already declared by a flag or the
 *   control socket is left alone (the marker is reported).
 * - Change detection: fs.watch (recursive) triggers a scan `DEBOUNCE_MS` after the first event
 *   of a burst, and a scan runs every `POLL_MS` anyway, because fs.watch misses events on some
 *   filesystems (network and FUSE mounts, overlayfs). A scan lstat()s each marker and reads only
 *   those whose inode, size, mtime or ctime changed. Scans run one at a time.
 * - Bounds: markers ≤ `MAX_MARKER_BYTES` (checked before reading), at most `MAX_MARKERS` of
 *   them, `MAX_SCAN_ENTRIES` directory entries per scan, `MAX_DEPTH` levels; symbolic links
 *   are not followed. Each problem is logged once per version of the file.
 */
import { type Dirent, type FSWatcher, watch } from "node:fs";
import { lstat, open, readdir, stat } from "node:fs/promises";
import { join, relative, resolve, sep } from "node:path";
import { z } from "zod";
import { StoaError, describeError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { pathProblem } from "./acl.ts";
import type { TunnelSpec } from "./tunnel.ts";
import { userNameProblem } from "./users.ts";

const MARKER_NAME = "stream.tcp";
/** A marker is a few hundred bytes; anything this big is not one. */
export const MAX_MARKER_BYTES = 64 * 1024;
const MAX_MARKERS = 1024;
/** Directory entries a scan looks at; a bigger tree is scanned in part, with a warning. */
const MAX_SCAN_ENTRIES = 100_000;
const MAX_DEPTH = 32;
/** The fallback scan interval (the spec's "slow poll"). */
const POLL_MS = 2_000;
const DEBOUNCE_MS = 50;
/** The tunnels' local address: markers declare ports on this host only. */
const HOST = "127.0.0.1";

const Port = z.number().int().min(1).max(65535);
const Name = z.string().min(1).max(256);
const Marker = z.object({
  from: Name,
  to: Name,
  port: Port.optional(),
  ports: z.record(Name, Port),
});

/** What the watcher changes: a `HotlinkDaemon` (an interface, so tests can stand in). */
interface MarkerTarget {
  addTunnel(spec: TunnelSpec, origin: "watch"): unknown;
  remove(channel: string): Promise<boolean>;
}

interface WatchOptions {
  dir: string;
  /** This daemon's user: picks `ports[user]` and the peer. */
  user: string;
  target: MarkerTarget;
  log: Logger;
  /** Default `POLL_MS`; tests use less. */
  pollMs?: number;
}

export interface MarkerWatcher {
  /** Channels whose tunnel this watcher added and still holds. */
  channels(): string[];
  /** Scans now (after a scan already running); resolves when done. */
  scan(): Promise<void>;
  /** Stops watching. The tunnels stay with the daemon, which closes them when it stops. */
  close(): Promise<void>;
}

interface FileState {
  /** inode, size, mtime and ctime: a change of any means the file must be read again. */
  sig: string;
  /** The tunnel this file declared and we added, or null. */
  added: TunnelSpec | null;
}

interface Found {
  file: string;
  sig: string;
  size: number;
}

type Reading = { spec: TunnelSpec } | { unreadable: string } | { nothing: string };

/**
 * Watches `dir` for marker files and keeps the daemon's tunnels in step with them. Scans once
 * before it resolves, so the markers present at start are tunnels when it returns.
 * Throws StoaError "usage" when `dir` is not a directory.
 * @example
 * const watcher = await watchMarkers({ dir: "/data/datasites", user: "alice", target: daemon, log });
 * onShutdown("marker files", () => watcher.close());
 */
export async function watchMarkers(options: WatchOptions): Promise<MarkerWatcher> {
  const root = resolve(options.dir);
  const isDir = await stat(root).then((s) => s.isDirectory(), () => false);
  if (!isDir) throw new StoaError("usage", `--watch ${options.dir}: not a directory; create it or point --watch at the folder holding the ${MARKER_NAME} files`);
  const watcher = new Watcher(root, options);
  await watcher.scan();
  watcher.start();
  return {
    channels: () => watcher.channels(),
    scan: () => watcher.scan(),
    close: () => watcher.close(),
  };
}

class Watcher {
  readonly #root: string;
  readonly #user: string;
  readonly #target: MarkerTarget;
  readonly #log: Logger;
  readonly #pollMs: number;
  readonly #files = new Map<string, FileState>();
  /** Problems already reported (directories we cannot read, limits reached), to say each once. */
  readonly #reported = new Set<string>();
  #fsWatch: FSWatcher | null = null;
  #poll: ReturnType<typeof setInterval> | undefined;
  #debounce: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> | null = null;
  #again = false;
  #closed = false;

  constructor(root: string, options: WatchOptions) {
    this.#root = root;
    this.#user = options.user;
    this.#target = options.target;
    this.#log = options.log.child({ watch: root });
    this.#pollMs = options.pollMs ?? POLL_MS;
  }

  start(): void {
    this.#arm();
    this.#poll = setInterval(() => {
      this.#arm(); // fs.watch may have failed, or DIR been recreated
      void this.scan();
    }, this.#pollMs);
  }

  channels(): string[] {
    return [...this.#files].filter(([, s]) => s.added !== null).map(([channel]) => channel);
  }

  scan(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#running !== null) {
      this.#again = true;
      return this.#running;
    }
    const run = async (): Promise<void> => {
      try {
        do {
          this.#again = false;
          await this.#scanOnce();
        } while (this.#again && !this.#closed);
      } catch (err) {
        this.#log.error("scanning the marker files failed; retrying at the next poll", { err });
      } finally {
        this.#running = null;
      }
    };
    this.#running = run();
    return this.#running;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#poll);
    clearTimeout(this.#debounce);
    this.#fsWatch?.close();
    this.#fsWatch = null;
    await this.#running;
  }

  #arm(): void {
    if (this.#fsWatch !== null || this.#closed) return;
    try {
      const w = watch(this.#root, { recursive: true }, () => this.#onEvent());
      w.on("error", (err) => {
        this.#log.debug("fs.watch failed; the poll goes on", { err });
        w.close();
        if (this.#fsWatch === w) this.#fsWatch = null;
      });
      this.#fsWatch = w;
    } catch (err) {
      this.#log.debug("fs.watch is not available here; polling only", { err });
    }
  }

  #onEvent(): void {
    // The first event of a burst schedules one scan; the ones after it ride along.
    if (this.#debounce !== undefined || this.#closed) return;
    this.#debounce = setTimeout(() => {
      this.#debounce = undefined;
      void this.scan();
    }, DEBOUNCE_MS);
  }

  #reportOnce(key: string, message: string, fields: Record<string, unknown>): void {
    if (this.#reported.has(key)) return;
    if (this.#reported.size < MAX_MARKERS) this.#reported.add(key);
    this.#log.warn(message, fields);
  }

  async #scanOnce(): Promise<void> {
    const found = await this.#walk();
    for (const [channel, state] of [...this.#files]) {
      if (found.has(channel) || this.#closed) continue;
      this.#files.delete(channel);
      if (state.added !== null) {
        await this.#target.remove(channel);
        this.#log.info("marker file removed; tunnel stopped", { channel });
      }
    }
    for (const [channel, f] of found) {
      if (this.#closed) return;
      const prev = this.#files.get(channel);
      if (prev?.sig === f.sig) continue;
      const reading = await this.#read(channel, f);
      const state: FileState = { sig: f.sig, added: prev?.added ?? null };
      this.#files.set(channel, state);
      if ("unreadable" in reading) {
        const keeps = state.added === null ? "" : "; the tunnel it declared before keeps running";
        this.#log.warn(`cannot read marker file: ${reading.unreadable}${keeps}`, { file: f.file });
        continue;
      }
      if ("nothing" in reading) {
        this.#log.warn(`ignoring marker file: ${reading.nothing}`, { file: f.file });
        if (state.added !== null) {
          state.added = null;
          await this.#target.remove(channel);
          this.#log.info("marker file no longer declares a tunnel here; tunnel stopped", { channel });
        }
        continue;
      }
      const spec = reading.spec;
      if (state.added !== null) {
        if (state.added.port === spec.port && state.added.peer === spec.peer) continue;
        state.added = null;
        await this.#target.remove(channel);
      }
      try {
        this.#target.addTunnel(spec, "watch");
        state.added = spec;
        this.#log.info(prev?.added ? "marker file changed; tunnel moved" : "marker file found; tunnel started", {
          channel,
          listen: `${HOST}:${spec.port}`,
          peer: spec.peer,
        });
      } catch (err) {
        const why = describeError(err);
        this.#log.warn(`cannot start the tunnel of a marker file: ${why}; fix it and touch the file to retry`, { file: f.file });
      }
    }
  }

  /** Every marker under the root, by channel; bounded (see the module header). */
  async #walk(): Promise<Map<string, Found>> {
    const found = new Map<string, Found>();
    const dirs: { path: string; depth: number }[] = [{ path: this.#root, depth: 0 }];
    let entries = 0;
    for (let next = dirs.pop(); next !== undefined; next = dirs.pop()) {
      let list: Dirent[];
      try {
        list = await readdir(next.path, { withFileTypes: true });
      } catch (err) {
        const code = typeof err === "object" && err !== null && "code" in err ? String(err.code) : "";
        // A directory removed while we walk is not news; the root gone means every marker is.
        if (code !== "ENOENT" && code !== "ENOTDIR") {
          this.#reportOnce(`dir:${next.path}`, "cannot read a directory under --watch; markers in it are ignored", { dir: next.path, err });
        } else if (next.path === this.#root) {
          this.#reportOnce("root", "the --watch directory is gone; its tunnels are stopped", { dir: this.#root });
        }
        continue;
      }
      if (next.path === this.#root) this.#reported.delete("root");
      for (const entry of list) {
        if (++entries > MAX_SCAN_ENTRIES) {
          this.#reportOnce("entries", `more than ${MAX_SCAN_ENTRIES} entries under --watch; the rest is not scanned`, {});
          return found;
        }
        const path = join(next.path, entry.name);
        if (entry.isDirectory()) {
          if (next.depth + 1 < MAX_DEPTH) dirs.push({ path, depth: next.depth + 1 });
          else this.#reportOnce(`deep:${path}`, `directories deeper than ${MAX_DEPTH} levels under --watch are not scanned`, { dir: path });
          continue;
        }
        if (entry.name !== MARKER_NAME || !entry.isFile()) continue;
        const channel = relative(this.#root, next.path).split(sep).join("/");
        if (found.size >= MAX_MARKERS) {
          this.#reportOnce("markers", `more than ${MAX_MARKERS} marker files under --watch; the rest are ignored`, {});
          continue;
        }
        const st = await lstat(path, { bigint: true }).catch(() => null);
        if (st === null || !st.isFile()) continue;
        found.set(channel, { file: path, sig: `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`, size: Number(st.size) });
      }
    }
    return found;
  }

  async #read(channel: string, f: Found): Promise<Reading> {
    if (f.size > MAX_MARKER_BYTES) return { unreadable: `it is ${f.size} bytes; a marker is at most ${MAX_MARKER_BYTES}` };
    let text: string;
    try {
      text = await readBounded(f.file);
    } catch (err) {
      return { unreadable: describeError(err) };
    }
    if (text.trim() === "") return { unreadable: "it is empty (still being written?)" };
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      return { unreadable: `not JSON (${describeError(err)})` };
    }
    const parsed = Marker.safeParse(raw);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const where = issue === undefined || issue.path.length === 0 ? "" : `${issue.path.map(String).join(".")}: `;
      return { unreadable: `expected {"from", "to", "ports": {user: port}}; ${where}${issue?.message ?? "invalid"}` };
    }
    const marker = parsed.data;
    const problem = pathProblem(channel);
    if (problem !== null) return { nothing: `its directory ${JSON.stringify(channel)} is not a valid channel: ${problem}` };
    const me = this.#user;
    if (marker.from === me && marker.to === me) return { nothing: `from and to are both ${me}` };
    if (marker.from !== me && marker.to !== me) return { nothing: `it is between ${marker.from} and ${marker.to}, not ${me}` };
    const peer = marker.from === me ? marker.to : marker.from;
    const peerProblem = userNameProblem(peer);
    if (peerProblem !== null) return { nothing: `peer: ${peerProblem}` };
    const port = Object.hasOwn(marker.ports, me) ? marker.ports[me] : undefined;
    if (port === undefined) return { nothing: `"ports" has no port for ${me}` };
    return { spec: { channel, host: HOST, port, peer } };
  }
}

/** Reads at most `MAX_MARKER_BYTES` (the file may have grown since its lstat). */
async function readBounded(file: string): Promise<string> {
  const fh = await open(file, "r");
  try {
    const buf = Buffer.alloc(MAX_MARKER_BYTES + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.byteLength, 0);
    if (bytesRead > MAX_MARKER_BYTES) throw new Error(`it is over ${MAX_MARKER_BYTES} bytes; a marker is smaller`);
    return buf.toString("utf8", 0, bytesRead);
  } finally {
    await fh.close();
  }
}
