/**
 * The metaserver on its own thread (a Bun Worker), as `stoa up` runs it: a slow SQLite query or a
 * big list page then never delays the gateway's router 0 on the main thread.
 *
 * Main ↔ worker messages (structured clones; both ends are this code, so typed, not validated):
 *   → start {options, log}     ← ready {url, hostname, port} | failed {code, message}
 *   → writers {writers}        (no answer; applied before the next request)
 *   → log {level, format}      (no answer; a daemon's SIGHUP changed them)
 *   → close                    ← closed   (server stopped, database closed: nothing lost)
 * The worker writes its own log lines to stderr, with the main logger's level and format.
 */
import { type ErrorCode, StoaError } from "../core/errors.ts";
import type { LogFormat, LogLevel } from "../core/log.ts";
import { workerEntry } from "../core/worker-entry.ts";
import type { MetaOptions, MetaServer } from "./server.ts";

/** How long the worker may take to open the database and bind, and to close. */
const THREAD_REPLY_TIMEOUT_MS = 15_000;

/** What crosses to the worker: MetaOptions without the logger, metrics and test hooks. */
type ThreadOptions = Omit<MetaOptions, "log" | "metrics" | "confirm"> & { confirmTimeoutMs?: number };

export type ToMetaThread =
  | { type: "start"; options: ThreadOptions; log: { level: LogLevel; format: LogFormat; name: string; fields: Record<string, string> } }
  | { type: "writers"; writers: string[] }
  | { type: "log"; level: LogLevel; format: LogFormat }
  | { type: "close" };

/** The metaserver on its thread: a `MetaServer` whose log level and format can change. */
type MetaThread = MetaServer & { setLog(log: { level: LogLevel; format: LogFormat }): void };

export type FromMetaThread =
  | { type: "ready"; url: string; hostname: string; port: number; store: string }
  | { type: "failed"; code: ErrorCode; message: string }
  | { type: "closed" };

/**
 * Starts the metaserver in a Worker; resolves once it serves, rejects with the worker's
 * StoaError (port in use, database locked, …) otherwise.
 */
export async function startMetaThread(
  options: ThreadOptions,
  log: { level: LogLevel; format: LogFormat; name: string; fields?: Record<string, string> },
  /** Called if the thread ends without being closed (it crashed): the caller should stop too. */
  onLost: (reason: string) => void = () => {},
): Promise<MetaThread> {
  const entry = workerEntry(new URL("./worker.ts", import.meta.url), "meta/worker.js", "run 'stoa meta' and 'stoa gateway' separately");
  const worker = new Worker(entry);
  const replies: ((m: FromMetaThread) => void)[] = [];
  const exited = Promise.withResolvers<void>();
  worker.onmessage = (event: MessageEvent<FromMetaThread>) => replies.shift()?.(event.data);
  let closing: Promise<void> | null = null;
  let started = false;
  worker.addEventListener("close", () => {
    exited.resolve();
    if (started && closing === null) onLost("the metaserver thread ended unexpectedly");
  });
  const next = (what: string) =>
    new Promise<FromMetaThread>((resolve, reject) => {
      const timer = setTimeout(() => reject(new StoaError("timeout", `the metaserver thread did not ${what} within ${THREAD_REPLY_TIMEOUT_MS / 1000}s`)), THREAD_REPLY_TIMEOUT_MS);
      replies.push((m) => {
        clearTimeout(timer);
        resolve(m);
      });
      worker.onerror = (e) => {
        clearTimeout(timer);
        reject(new StoaError("internal", `the metaserver thread failed: ${e.message}`));
      };
    });
  const answer = next("start");
  worker.postMessage({ type: "start", options, log: { ...log, fields: log.fields ?? {} } } satisfies ToMetaThread);
  let ready: FromMetaThread;
  try {
    ready = await answer;
  } catch (err) {
    worker.terminate();
    throw err;
  }
  if (ready.type !== "ready") {
    worker.terminate();
    throw ready.type === "failed" ? new StoaError(ready.code, ready.message) : new StoaError("internal", "the metaserver thread answered out of turn");
  }
  started = true;
  return {
    url: ready.url,
    hostname: ready.hostname,
    port: ready.port,
    store: ready.store,
    setWriters(writers) {
      // No answer: the worker handles messages in order, so the next request sees them.
      worker.postMessage({ type: "writers", writers: [...writers] } satisfies ToMetaThread);
    },
    setLog({ level, format }) {
      worker.postMessage({ type: "log", level, format } satisfies ToMetaThread);
    },
    close() {
      closing ??= (async () => {
        const closed = next("close");
        worker.postMessage({ type: "close" } satisfies ToMetaThread);
        try {
          await closed;
        } finally {
          worker.terminate();
          await Promise.race([exited.promise, Bun.sleep(1_000)]);
        }
      })();
      return closing;
    },
  };
}
