/**
 * Binding Unix sockets safely, for `Bun.listen` and `Bun.serve` alike.
 *
 * Contract:
 * - Missing parent directories are created with mode 0700; existing ones are left as they are.
 * - An existing path is reclaimed only if it is a socket that refuses connections (its owner is
 *   gone: a socket file outlives a SIGKILLed owner). A socket that answers, or does not answer
 *   within the probe timeout, is a live owner's and is never touched (`in_use`); so is anything
 *   that is not a socket.
 * - The socket is bound under a temporary name in the same directory, given its mode (default
 *   0600), then hard-linked into place. The link fails if someone took the path meanwhile, so we
 *   never clobber a file, and the socket never shows up at its path with a looser mode.
 * - Bun's `stop()` unlinks the path it bound, whatever is there by then (measured on Bun 1.4.5,
 *   for `Bun.listen` and `Bun.serve`). Binding under a temporary name that is unlinked at once
 *   leaves Bun nothing to delete; `remove()` deletes the public path only while it is still our
 *   socket (same device and inode), so a successor that rebound the path keeps its socket.
 * - Remaining race, accepted: another process that binds the path between our probe of a stale
 *   file and its unlink (a window of one lstat) loses its fresh socket file.
 */

import type { UnixSocketListener, UnixSocketOptions } from "bun";
import { randomBytes } from "node:crypto";
import { lstatSync, unlinkSync } from "node:fs";
import { chmod, link, lstat, mkdir, rename, unlink } from "node:fs/promises";
import { basename, dirname, join, resolve } from "node:path";
import { StoaError, describeError, errnoCode } from "./errors.ts";

/** Longest socket path Linux accepts: `sun_path` is 108 bytes including the final NUL. */
export const UNIX_PATH_MAX = 107;

/** How long a connect probe waits before it treats a silent socket as alive. */
const UNIX_PROBE_TIMEOUT_MS = 300;

/** Default mode of a bound socket: only the owner may connect. */
const UNIX_SOCKET_MODE = 0o600;

/** Mode of the parent directories we create. */
export const UNIX_DIR_MODE = 0o700;

interface PrepareOptions {
  /** How long to wait for an existing socket to answer; default `UNIX_PROBE_TIMEOUT_MS`. */
  probeTimeoutMs?: number;
}

interface BindOptions extends PrepareOptions {
  /** Mode of the socket file; default `UNIX_SOCKET_MODE` (0600). */
  mode?: number;
}

/** Anything with Bun's `stop()`: a `Bun.listen` listener or a `Bun.serve` server. */
interface Stoppable {
  stop(closeActiveConnections?: boolean): unknown;
}

/** A server bound at `path` that owns the socket file there. */
export interface UnixBinding<T extends Stoppable> {
  readonly server: T;
  /** The absolute socket path. */
  readonly path: string;
  /** Unlinks the socket file if it is still ours; true if it did. Synchronous, for exit hooks. */
  remove(): boolean;
  /** Removes our socket file (so nobody new connects), then stops the server. */
  close(closeActiveConnections?: boolean): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

interface Identity {
  dev: number;
  ino: number;
}



/** The directories from `dir` up to the first one `mkdir -p` created, deepest first. */
function createdChain(dir: string, firstCreated: string): string[] {
  const chain: string[] = [];
  for (let d = dir; ; d = dirname(d)) {
    chain.push(d);
    if (d === firstCreated || dirname(d) === d) return chain;
  }
}

async function ensureParents(dir: string): Promise<void> {
  let first: string | undefined;
  try {
    first = await mkdir(dir, { recursive: true, mode: UNIX_DIR_MODE });
  } catch (err) {
    throw new StoaError(
      "io",
      `cannot create directory ${dir} for a unix socket: ${describeError(err)}; choose a directory you can write`,
      { cause: err },
    );
  }
  // mkdir's mode goes through the umask; set it exactly, on the directories we made only.
  if (first !== undefined) {
    for (const d of createdChain(dir, first)) await chmod(d, UNIX_DIR_MODE);
  }
}

type ProbeResult = "live" | "silent" | "refused" | "gone";

/** Connects to `path` to learn whether a process still serves it. */
async function probe(path: string, timeoutMs: number): Promise<ProbeResult> {
  const attempt = Bun.connect({
    unix: path,
    socket: { data() {}, connectError() {}, error() {} },
  });
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"silent">((done) => {
    timer = setTimeout(() => done("silent"), timeoutMs);
  });
  try {
    const result = await Promise.race([attempt.then((sock) => (sock.end(), "live" as const)), timeout]);
    if (result === "silent") attempt.then((sock) => sock.end(), () => {});
    return result;
  } catch (err) {
    const code = errnoCode(err);
    if (code === "ECONNREFUSED") return "refused";
    // A live socket of another type (a SOCK_SEQPACKET listener refuses a stream connect so).
    if (code === "EPROTOTYPE") return "live";
    if (code === "ENOENT") return "gone";
    throw new StoaError(
      "io",
      `cannot check whether ${path} is in use (${code || describeError(err)}); fix its permissions or choose another path`,
      { cause: err },
    );
  } finally {
    clearTimeout(timer);
  }
}

function checkLength(path: string, what: string): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > UNIX_PATH_MAX) {
    throw new StoaError(
      "endpoint",
      `${what} ${path} is ${bytes} bytes; Linux allows at most ${UNIX_PATH_MAX}: choose a shorter path`,
    );
  }
}

/**
 * Makes `path` ready for a socket to be bound there: creates missing parent directories (0700)
 * and removes a stale socket file. Throws `in_use` for a live socket or a non-socket file.
 * Returns the absolute path. `bindUnix`/`listenUnix` call it; call it directly only to bind
 * some other way (and mind that Bun's `stop()` unlinks whatever is at the path it bound).
 */
export async function prepareUnixPath(path: string, options: PrepareOptions = {}): Promise<string> {
  const abs = resolve(path);
  checkLength(abs, "unix socket path");
  await ensureParents(dirname(abs));
  const timeoutMs = options.probeTimeoutMs ?? UNIX_PROBE_TIMEOUT_MS;
  // Each pass either returns, throws, or saw the file change under it; a few passes suffice.
  for (let pass = 0; pass < 3; pass++) {
    const found = await lstat(abs).catch((err: unknown) => {
      if (errnoCode(err) === "ENOENT") return null;
      throw new StoaError("io", `cannot inspect ${abs}: ${describeError(err)}; choose another path`, { cause: err });
    });
    if (found === null) return abs;
    if (!found.isSocket()) {
      throw new StoaError("in_use", `${abs} exists and is not a socket; remove it or choose another path`);
    }
    const state = await probe(abs, timeoutMs);
    if (state === "live") {
      throw new StoaError(
        "in_use",
        `${abs} is served by a live process (pid unknown); stop it or choose another path`,
      );
    }
    if (state === "silent") {
      throw new StoaError(
        "in_use",
        `${abs} did not answer within ${timeoutMs} ms, so it may still be served; stop its owner or choose another path`,
      );
    }
    if (state === "refused") {
      const now = await lstat(abs).catch(() => null);
      if (now !== null && now.dev === found.dev && now.ino === found.ino) {
        await unlink(abs).catch((err: unknown) => {
          if (errnoCode(err) !== "ENOENT") {
            throw new StoaError("io", `cannot remove stale socket ${abs}: ${describeError(err)}`, { cause: err });
          }
        });
      }
    }
  }
  throw new StoaError("in_use", `${abs} keeps changing while we try to bind it; is another process starting there?`);
}

/** A fresh name beside `abs`, short enough for `sun_path` whenever possible. */
function tempPath(abs: string): string {
  const tag = randomBytes(4).toString("hex");
  const readable = join(dirname(abs), `.${basename(abs).slice(0, 16)}.${tag}`);
  return Buffer.byteLength(readable) <= UNIX_PATH_MAX ? readable : join(dirname(abs), `.${tag}`);
}

/** Puts the bound socket at `to` without ever replacing a file there. */
async function placeAt(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (err) {
    const code = errnoCode(err);
    if (code === "EEXIST") {
      throw new StoaError("in_use", `${to} was taken by another process while binding; stop it or choose another path`);
    }
    // Some filesystems refuse hard links; rename replaces, but prepareUnixPath just found it free.
    if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP") {
      await rename(from, to);
      return;
    }
    throw new StoaError("io", `cannot bind ${to}: ${describeError(err)}`, { cause: err });
  }
}

/**
 * Binds a server at the Unix socket `path` safely (see the module header) and returns the
 * binding that owns the file. `bind` receives the path to pass as `unix:`; it must bind
 * synchronously, as `Bun.listen` and `Bun.serve` do.
 *
 * @example
 * ```ts
 * const ping = await bindUnix("/run/stoa/pub/p1/ping.sock", (unix) =>
 *   Bun.serve({ unix, fetch: (req, srv) => srv.upgrade(req) ? undefined : new Response("no", { status: 426 }),
 *               websocket: { message: (ws, m) => ws.send(m) } }));
 * onShutdown(() => ping.close());
 * ```
 */
export async function bindUnix<T extends Stoppable>(
  path: string,
  bind: (unix: string) => T,
  options: BindOptions = {},
): Promise<UnixBinding<T>> {
  const abs = await prepareUnixPath(path, options);
  const temp = tempPath(abs);
  checkLength(temp, `temporary name for binding ${abs},`);
  let server: T;
  try {
    server = bind(temp);
  } catch (err) {
    throw new StoaError("io", `cannot listen on ${abs}: ${describeError(err)}`, { cause: err });
  }
  let identity: Identity;
  try {
    await chmod(temp, options.mode ?? UNIX_SOCKET_MODE);
    const st = await lstat(temp);
    identity = { dev: st.dev, ino: st.ino };
    await placeAt(temp, abs);
  } catch (err) {
    await Promise.resolve(server.stop(true)).catch(() => {});
    throw err instanceof StoaError
      ? err
      : new StoaError("io", `cannot set up ${abs}: ${describeError(err)}`, { cause: err });
  } finally {
    await unlink(temp).catch(() => {});
  }
  return ownedBinding(server, abs, identity);
}

function ownedBinding<T extends Stoppable>(server: T, path: string, identity: Identity): UnixBinding<T> {
  const remove = (): boolean => {
    try {
      const st = lstatSync(path);
      if (!st.isSocket() || st.dev !== identity.dev || st.ino !== identity.ino) return false;
      unlinkSync(path);
      return true;
    } catch {
      return false; // gone already, or not ours to inspect
    }
  };
  const close = async (closeActiveConnections = false): Promise<void> => {
    remove();
    await server.stop(closeActiveConnections);
  };
  return { server, path, remove, close, [Symbol.asyncDispose]: () => close() };
}

/**
 * `Bun.listen` on a Unix socket, bound safely (see `bindUnix`).
 *
 * @example
 * ```ts
 * const control = await listenUnix("/run/stoa/gateway.sock", { socket: handlers });
 * // ...
 * await control.close();
 * ```
 */
export function listenUnix<Data = undefined>(
  path: string,
  options: Omit<UnixSocketOptions<Data>, "unix"> & BindOptions,
): Promise<UnixBinding<UnixSocketListener<Data>>> {
  const { mode, probeTimeoutMs, ...listenOptions } = options;
  return bindUnix(
    path,
    (unix) => {
      const full: UnixSocketOptions<Data> = { ...listenOptions, unix };
      return Bun.listen<Data>(full);
    },
    { mode, probeTimeoutMs },
  );
}
