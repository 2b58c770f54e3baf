/**
 * Daemon conventions, one place for every long-running server (`stoa up`, `gateway`, `meta`,
 * `hotlink serve`, and later ones): readiness, reload on SIGHUP, and the systemd protocol.
 *
 * - Readiness: `starting` until `announceReady()`, then `serving`; `draining` from the moment a
 *   shutdown begins. `/ready` answers 200 only while `serving` (cli/common.ts, gateway ports).
 * - `announceReady()` is THE moment a daemon is ready: it writes the `--ready-file` (if any) and
 *   sends `READY=1` to `$NOTIFY_SOCKET` together, so scripts and systemd agree. Call it once
 *   every listener answers.
 * - Shutdown start sends `STOPPING=1` (hooked into core/shutdown.ts).
 * - `$WATCHDOG_USEC` (and `$WATCHDOG_PID` naming us, or unset): `WATCHDOG=1` every half of it,
 *   from a timer on the main event loop — a wedged loop stops the pings and systemd restarts us.
 * - SIGHUP on a daemon runs the `onReload` hooks (re-read TLS files, config, users…), logs what
 *   was reloaded, and never exits. A client (`pub`, `sub`) treats SIGHUP like SIGINT: a terminal
 *   hangup stops it cleanly through the shutdown cleanups.
 * - Socket activation: `listenFds()` reads `$LISTEN_FDS`/`$LISTEN_PID`/`$LISTEN_FDNAMES`
 *   (sd_listen_fds(3): fds from 3 on, only for the pid named) and unsets them.
 *
 * Wire format of `$NOTIFY_SOCKET` (sd_notify(3)): one AF_UNIX datagram of newline-separated
 * `KEY=VALUE` lines; the address is a path, or `@name` for the abstract namespace.
 */
import { collectStartupGarbage } from "./runtime.ts";
import { describeError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { writeReadyFile } from "./readyfile.ts";
// AF_UNIX datagrams: Bun.udpSocket takes only IP addresses (measured on 1.4.5: a path gives
// "Expected port"), so the datagram goes out through libc (opened lazily, on the first send).
import { monotonicMicros } from "../ffi/libc.ts";
import { sendUnixDatagram } from "../ffi/unixdgram.ts";
import { onShutdown, onShutdownStart, shutdown } from "./shutdown.ts";

/** Where a daemon is in its life; `/ready` is 200 only in `serving`. */
type Readiness = "starting" | "serving" | "draining";

let state: Readiness = "starting";
let log: Logger | undefined;

/** The process's readiness (for `/ready`). */
export function readiness(): Readiness {
  return state;
}

/**
 * The daemon serves: write the ready file (when given; removed at shutdown), send `READY=1`
 * (with `STATUS=` when given) to systemd, and make `/ready` answer 200. Idempotent.
 *
 * @example
 * ```ts
 * const gw = await startGateway(options);
 * announceReady({ status: "gateway on 8081,8082,8083", readyFile: flags.readyFile, fields: { ports: gw.ports } });
 * ```
 */
export function announceReady(options: { status?: string; readyFile?: string; fields?: Record<string, unknown> } = {}): void {
  if (state !== "starting") return;
  collectStartupGarbage();
  if (options.readyFile !== undefined) onShutdown("ready file", writeReadyFile(options.readyFile, options.fields ?? {}));
  state = "serving";
  notify(options.status === undefined ? "READY=1" : `READY=1\nSTATUS=${oneLine(options.status)}`);
  log?.debug("ready", { notify: process.env.NOTIFY_SOCKET });
}

/** Shutdown began: `/ready` answers 503, systemd hears `STOPPING=1`. Idempotent. */
export function announceStopping(): void {
  if (state === "draining") return;
  state = "draining";
  notify("STOPPING=1");
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

type ReloadHook = () => string | void | Promise<string | void>;
const reloadHooks: { name: string; fn: ReloadHook }[] = [];

/**
 * Register something SIGHUP re-reads. The hook may return a short word on what it did
 * (logged); a throw is logged as that hook failing, the old state must stay in use.
 * Returns the unregister function.
 */
export function onReload(name: string, fn: ReloadHook): () => void {
  const entry = { name, fn };
  reloadHooks.push(entry);
  return () => {
    const i = reloadHooks.indexOf(entry);
    if (i !== -1) reloadHooks.splice(i, 1);
  };
}

/** Runs every reload hook in registration order; logs one line with the outcome. */
export async function reload(reason = "SIGHUP"): Promise<{ ok: boolean; reloaded: string[]; failed: string[] }> {
  // MONOTONIC_USEC: systemd ≥ 253 pairs the reload with this clock reading (CLOCK_MONOTONIC).
  if (state === "serving") notify(`RELOADING=1\nMONOTONIC_USEC=${monotonicMicros()}`);
  const reloaded: string[] = [];
  const failed: string[] = [];
  for (const { name, fn } of [...reloadHooks]) {
    try {
      const what = await fn();
      reloaded.push(typeof what === "string" && what !== "" ? `${name} (${what})` : name);
    } catch (err) {
      failed.push(name);
      log?.error("reload failed; keeping what was loaded before", { what: name, error: describeError(err) });
    }
  }
  const ok = failed.length === 0;
  log?.info(reloadHooks.length === 0 ? "reload: nothing to reload" : "reloaded", {
    reason,
    reloaded: reloaded.join(", ") || undefined,
    failed: failed.join(", ") || undefined,
  });
  if (state === "serving") notify("READY=1");
  return { ok, reloaded, failed };
}

let hangupInstalled: (() => void) | undefined;

/**
 * Install the process's daemon or client conventions (called by `startService`): a daemon
 * reloads on SIGHUP and pings the systemd watchdog; a client shuts down on SIGHUP.
 */
export function installDaemon(logger: Logger, kind: "daemon" | "client"): void {
  log = logger;
  hangupInstalled?.();
  onShutdownStart(announceStopping);
  if (kind === "client") {
    const onHup = () => void shutdown("SIGHUP");
    process.on("SIGHUP", onHup);
    hangupInstalled = () => process.off("SIGHUP", onHup);
    return;
  }
  // Reloads one at a time; a SIGHUP during one reloads once more after it.
  let running: Promise<unknown> | undefined;
  let again = false;
  const onHup = () => {
    if (running !== undefined) {
      again = true;
      return;
    }
    const loop = async () => {
      do {
        again = false;
        await reload("SIGHUP");
      } while (again);
      running = undefined;
    };
    running = loop();
  };
  process.on("SIGHUP", onHup);
  hangupInstalled = () => process.off("SIGHUP", onHup);
  startWatchdog();
}

// ---------------------------------------------------------------------------------------------
// systemd

/** Largest datagram we send: sd_notify messages are a few short lines. */
const MAX_NOTIFY_BYTES = 4096;

/**
 * Sends `message` to `$NOTIFY_SOCKET` (no-op without it). Returns whether it was sent; a failure
 * is logged once at debug level — a daemon must never stop for its supervisor's socket.
 */
export function notify(message: string): boolean {
  const socket = process.env.NOTIFY_SOCKET;
  if (socket === undefined || socket === "") return false;
  const data = Buffer.from(message, "utf8");
  if (data.length > MAX_NOTIFY_BYTES) return false;
  const error = sendUnixDatagram(socket, data);
  if (error !== null) {
    log?.warn("could not notify systemd", { socket, error });
    return false;
  }
  return true;
}

let watchdog: ReturnType<typeof setInterval> | undefined;

/** `WATCHDOG=1` every `$WATCHDOG_USEC`/2 (sd_watchdog_enabled(3)); no-op without it. */
function startWatchdog(): void {
  if (watchdog !== undefined) return;
  const usec = Number(process.env.WATCHDOG_USEC);
  const pid = process.env.WATCHDOG_PID;
  if (!Number.isFinite(usec) || usec <= 0) return;
  if (pid !== undefined && pid !== "" && Number(pid) !== process.pid) return;
  const everyMs = Math.max(1, Math.floor(usec / 2000));
  watchdog = setInterval(() => notify("WATCHDOG=1"), everyMs);
  watchdog.unref();
  log?.debug("systemd watchdog", { everyMs });
}

/** One inherited listening socket from systemd. */
export interface ListenFd {
  fd: number;
  /** `FileDescriptorName=` of the .socket unit, or `unknown`. */
  name: string;
}

/** First inherited fd (SD_LISTEN_FDS_START). */
const LISTEN_FDS_START = 3;
/** More would be a misconfiguration; a bound keeps a bad env from looping for ever. */
const MAX_LISTEN_FDS = 64;

/**
 * The sockets systemd passed (sd_listen_fds_with_names(3)); empty when none are ours. The
 * variables are unset so a child never takes them for its own.
 */
export function listenFds(env: NodeJS.ProcessEnv = process.env, pid = process.pid): ListenFd[] {
  const count = Number(env.LISTEN_FDS);
  const forPid = Number(env.LISTEN_PID);
  const names = (env.LISTEN_FDNAMES ?? "").split(":");
  delete env.LISTEN_FDS;
  delete env.LISTEN_PID;
  delete env.LISTEN_FDNAMES;
  if (!Number.isInteger(count) || count <= 0 || count > MAX_LISTEN_FDS || forPid !== pid) return [];
  return Array.from({ length: count }, (_, i) => ({ fd: LISTEN_FDS_START + i, name: names[i] || "unknown" }));
}

function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, " ");
}

