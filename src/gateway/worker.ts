/**
 * Entry point of a gateway Worker thread: one `Router` on the shared ports, driven by the main
 * thread's messages (listed in workers.ts). Its logs and health reports go to the main thread.
 * In a compiled binary this file must be a build entrypoint (see src/core/worker-entry.ts).
 */
import { StoaError } from "../core/errors.ts";
import type { LogFields, Logger, LogLevel } from "../core/log.ts";
import { Router } from "./router.ts";
import { RouteTable } from "./routes.ts";
import type { FromWorker, ToWorker } from "./workers.ts";

declare const self: Worker;

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function post(message: FromWorker): void {
  self.postMessage(message);
}

/** Structured clone cannot carry every value (functions, sockets); send plain forms. */
function cloneable(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [k, v] of Object.entries(fields)) {
    if (v instanceof Error) out[k] = v.message;
    else if (typeof v === "function" || typeof v === "symbol") out[k] = String(v);
    else if (typeof v === "object" && v !== null) {
      try {
        out[k] = structuredClone(v);
      } catch {
        out[k] = String(v);
      }
    } else out[k] = v;
  }
  return out;
}

/** Entries below this are not sent to the main thread; set at start, changed on SIGHUP. */
let level: LogLevel = "info";

/** A Logger whose entries are written by the main thread's logger. */
function forwardingLogger(base: LogFields = {}): Logger {
  const at = (l: LogLevel) => (msg: string, fields?: LogFields) => {
    if (RANK[l] >= RANK[level]) post({ type: "log", level: l, msg, fields: cloneable({ ...base, ...fields }) });
  };
  return {
    get level() {
      return level;
    },
    debug: at("debug"),
    info: at("info"),
    warn: at("warn"),
    error: at("error"),
    enabled: (l) => RANK[l] >= RANK[level],
    child: (fields) => forwardingLogger({ ...base, ...fields }),
  };
}

const routes = new RouteTable();
let router: Router | null = null;

self.onmessage = (event: MessageEvent<ToWorker>) => {
  const msg = event.data;
  try {
    switch (msg.type) {
      case "start": {
        routes.apply({ op: "replace", registrations: msg.routes });
        level = msg.logLevel;
        const r = new Router(msg.config, routes, {
          log: forwardingLogger(),
          onHealth: (health) => post({ type: "health", event: health }),
          onIdle: () => post({ type: "idle" }),
        });
        r.start();
        router = r;
        post({ type: "ready" });
        return;
      }
      case "routes":
        routes.apply(msg.update);
        post({ type: "reply", id: msg.id });
        return;
      case "snapshot":
        if (router !== null) post({ type: "reply", id: msg.id, snapshot: router.snapshot() });
        else post({ type: "reply", id: msg.id });
        return;
      case "stop":
        router?.stopAccepting();
        post({ type: "reply", id: msg.id });
        return;
      case "terminate":
        post({ type: "reply", id: msg.id, cut: router?.terminateAll() ?? 0 });
        return;
      case "tls":
        try {
          router?.reloadTls(msg.tls);
          post({ type: "reply", id: msg.id });
        } catch (err) {
          const error = err instanceof StoaError ? err : new StoaError("internal", String(err));
          post({ type: "reply", id: msg.id, error: { code: error.code, message: error.message } });
        }
        return;
      case "logLevel":
        level = msg.level;
        post({ type: "reply", id: msg.id });
        return;
      case "close": {
        const id = msg.id;
        void (router?.close() ?? Promise.resolve()).finally(() => post({ type: "reply", id }));
        return;
      }
    }
  } catch (err) {
    const error = err instanceof StoaError ? err : new StoaError("internal", String(err));
    post({ type: "failed", code: error.code, message: error.message });
  }
};
