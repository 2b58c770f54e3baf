/**
 * `GET /v1/watch?prefix=P`: the changes of every registration named P or below it, as
 * Server-Sent Events (watch-wire.ts has the format), for as long as the client stays.
 *
 * Contract:
 * - The stream starts with `watching` once the watch is in place: a change made after it
 *   arrived is on the stream, so a client that looks a name up then misses nothing.
 * - Then one event per change the store reports (`Store.onEvent`; on Redis, changes made through
 *   any metaserver), in the order the store reports them, and a `: keepalive` comment every
 *   `WATCH_KEEPALIVE_MS`.
 * - At most `MAX_WATCHERS` at once (then 503 `busy`). A watcher whose unread backlog passes
 *   `MAX_WATCH_BACKLOG_BYTES` (the client, or its network, is slower than the changes) is cut
 *   off, its backlog dropped: it resyncs by watching again and looking up.
 * - A watcher ends when its client goes (the request's signal, the stream's cancel), when the
 *   server shuts down (`shutdown`: a watch never holds up `close()`), and when the store's event
 *   feed breaks (`Store.onLost`: changes may have been missed, the client resyncs); while it is
 *   broken (`Store.eventsUp` false) a new watch answers 503 store_unavailable.
 * - The gauge `stoa_meta_watchers` counts the watchers open.
 * - The server's idle timeout cuts a response that is still streaming (Bun counts time since
 *   the request, not since the last write): the server's bindings may carry `keepOpen()`, which
 *   lifts it for this request (server.ts: `srv.timeout(req, 0)`). Without it a watch lasts one
 *   idle timeout, and clients reconnect.
 */
import type { Context } from "hono";
import type { Logger } from "../core/log.ts";
import type { Registry } from "../core/metrics.ts";
import { MetaApiError, parsePrefix } from "./protocol.ts";
import type { Store, StoreEvent } from "./store.ts";
import { encodeChange, encodeWatching, KEEPALIVE, WATCH_KEEPALIVE_MS } from "./watch-wire.ts";

/** Watches one metaserver serves at once; each holds a connection and up to its backlog. */
export const MAX_WATCHERS = 1_024;
/** Unread bytes a watcher may fall behind by before it is cut off (about 2,500 changes). */
export const MAX_WATCH_BACKLOG_BYTES = 1024 * 1024;

interface WatchOptions {
  store: Pick<Store, "onEvent" | "onLost" | "eventsUp" | "description">;
  log: Logger;
  metrics: Registry;
  /** Aborted when the server shuts down: every watch ends. */
  shutdown: AbortSignal;
  /** Limits other than the defaults, for tests. */
  maxWatchers?: number;
  maxBacklogBytes?: number;
  keepaliveMs?: number;
}

/** What server.ts may put in the request's bindings for a watch. */
interface WatchBindings {
  keepOpen?: () => void;
}

/** A registration named `prefix` or below it ("" for all). */
function under(prefix: string, name: string): boolean {
  return prefix === "" || name === prefix || (name.startsWith(prefix) && name.charCodeAt(prefix.length) === 0x2f);
}

/**
 * The route's handler: `app.get("/v1/watch", watchHandler({ … }))`. Throws MetaApiError for a bad
 * prefix (400), too many watchers (503 busy) and a server shutting down (503).
 */
export function watchHandler(options: WatchOptions): (c: Context) => Response {
  const maxWatchers = options.maxWatchers ?? MAX_WATCHERS;
  const maxBacklog = options.maxBacklogBytes ?? MAX_WATCH_BACKLOG_BYTES;
  const keepaliveMs = options.keepaliveMs ?? WATCH_KEEPALIVE_MS;
  const { log, shutdown } = options;
  const gauge = options.metrics.gauge("stoa_meta_watchers", "Watches (GET /v1/watch) open.");
  gauge.inc(0);
  const encoder = new TextEncoder();
  let open = 0;

  return (c) => {
    const prefix = parsePrefix(c.req.query("prefix"));
    if (shutdown.aborted) throw new MetaApiError("shutting_down", "the metaserver is shutting down; watch again once it is back");
    // A watch opened while changes are not heard would miss them with no sign of it.
    if (!options.store.eventsUp) {
      throw new MetaApiError("store_unavailable", `the metaserver does not hear its store's changes right now (${options.store.description}); watch again shortly`);
    }
    if (open >= maxWatchers) {
      throw new MetaApiError(
        "busy",
        `this metaserver already serves ${maxWatchers} watches, its limit; try again in a few seconds, or watch through another metaserver of the same registry`,
      );
    }
    (c.env as WatchBindings | undefined)?.keepOpen?.();
    open++;
    gauge.inc();
    let ended = false;
    let controller: ReadableStreamDefaultController<Uint8Array>;
    let unsubscribe = (): void => {};
    let unlost = (): void => {};
    let keepalive: ReturnType<typeof setInterval> | undefined;

    /** Ends this watcher once: `how` closes the stream (in order) or cuts it (backlog dropped). */
    const end = (how: "close" | "cut" | "gone"): void => {
      if (ended) return;
      ended = true;
      open--;
      gauge.dec();
      unsubscribe();
      unlost();
      clearInterval(keepalive);
      shutdown.removeEventListener("abort", onShutdown);
      c.req.raw.signal.removeEventListener("abort", onGone);
      try {
        // An error without a reason: Bun drops the connection without printing anything.
        if (how === "close") controller.close();
        else if (how === "cut") controller.error(undefined);
      } catch {
        // already closed by the other side
      }
    };
    const onShutdown = (): void => end("close");
    const onGone = (): void => end("gone");

    const send = (text: string): void => {
      if (ended) return;
      try {
        controller.enqueue(encoder.encode(text));
      } catch {
        end("gone");
        return;
      }
      if ((controller.desiredSize ?? 0) < 0) {
        log.info("watch cut off: its client reads slower than the changes come", { prefix, backlog_bytes: maxBacklog });
        end("cut");
      }
    };

    const body = new ReadableStream<Uint8Array>(
      {
        start(ctl) {
          controller = ctl;
          unsubscribe = options.store.onEvent((event: StoreEvent) => {
            if (under(prefix, event.publisher.name)) send(encodeChange(event));
          });
          // The feed broke (Redis: its subscription dropped): changes may be lost, so the stream
          // ends in order and the client watches and looks up again.
          unlost = options.store.onLost(() => end("close"));
          shutdown.addEventListener("abort", onShutdown);
          c.req.raw.signal.addEventListener("abort", onGone);
          keepalive = setInterval(() => send(KEEPALIVE), keepaliveMs);
          ctl.enqueue(encoder.encode(encodeWatching(prefix)));
        },
        cancel() {
          end("gone");
        },
      },
      new ByteLengthQueuingStrategy({ highWaterMark: maxBacklog }),
    );
    return new Response(body, {
      status: 200,
      headers: { "Content-Type": "text/event-stream", "Cache-Control": "no-store" },
    });
  };
}
