/**
 * Entry point of the metaserver's Worker thread (thread.ts has the messages): runs `startMeta`
 * here, off the main thread. In a compiled binary this file must be a build entrypoint (see
 * src/core/worker-entry.ts and scripts/build.ts).
 */
import { StoaError } from "../core/errors.ts";
import { createLogger, type Logger, reconfigureLogger } from "../core/log.ts";
import { type MetaServer, startMeta } from "./server.ts";
import type { FromMetaThread, ToMetaThread } from "./thread.ts";

declare const self: Worker;

function post(message: FromMetaThread): void {
  self.postMessage(message);
}

let meta: MetaServer | null = null;
let log: Logger | null = null;

self.onmessage = async (event: MessageEvent<ToMetaThread>) => {
  const msg = event.data;
  if (msg.type === "start") {
    try {
      log = createLogger({ level: msg.log.level, format: msg.log.format, name: msg.log.name }).child(msg.log.fields);
      const { confirmTimeoutMs, ...options } = msg.options;
      meta = await startMeta({ ...options, log, confirm: confirmTimeoutMs === undefined ? undefined : { timeoutMs: confirmTimeoutMs } });
      post({ type: "ready", url: meta.url, hostname: meta.hostname, port: meta.port, store: meta.store });
    } catch (err) {
      post(err instanceof StoaError ? { type: "failed", code: err.code, message: err.message } : { type: "failed", code: "internal", message: String(err) });
    }
  } else if (msg.type === "writers") {
    meta?.setWriters(msg.writers);
  } else if (msg.type === "log") {
    if (log !== null) reconfigureLogger(log, { level: msg.level, format: msg.format });
  } else if (msg.type === "close") {
    try {
      await meta?.close();
    } finally {
      post({ type: "closed" });
    }
  }
};
