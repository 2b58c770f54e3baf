/**
 * A subscription that follows its publisher by name: when the name's registration moves to
 * another pub_id (a restart under a new one) or another host, the subscription moves with it,
 * instead of retrying a dead URL forever.
 *
 * Contract of `follow`:
 * - It subscribes (subscriber.ts) to `info`'s service URL and keeps a watch (GET /v1/watch,
 *   meta/client.ts) open on the name. A `confirmed` event for the name with another pub_id or
 *   other URLs closes the subscription and subscribes to the new URL from `oldest`: a new
 *   publisher is a new stream, whose whole history is new to us. `onMoved` says so.
 * - The watch reconnects with backoff when it drops (a metaserver restarting, its store down);
 *   each time it is in place again (`watching`), the name is looked up once, so a move made
 *   while it was down is not missed.
 * - While the subscription keeps failing (refused by the gateway, or no connection), the name
 *   is also looked up every `LOOKUP_EVERY_MS` until it opens again: a metaserver without
 *   /v1/watch (an older one) is followed that way.
 * - Only a `live` registration is moved to (a pending one may still fail its confirmation).
 * - `closed` resolves once `close()` was called or the subscription stopped for good by itself
 *   (e.g. its URL is not a stoa service endpoint).
 */
import { StoaError, describeError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { backoffDelay, DEFAULT_BACKOFF, type UpgradeRefusal } from "../core/ws.ts";
import type { MetaClient } from "../meta/client.ts";
import { MetaApiError, type PublisherInfo } from "../meta/protocol.ts";
import type { From } from "./protocol.ts";
import { type Gap, type OpenInfo, type Received, subscribe } from "./subscriber.ts";

/** How often, at most, the name is looked up while the subscription is refused or cannot connect. */
export const LOOKUP_EVERY_MS = 3_000;
/** Backoff of the watch's reconnects: quick at first, at most every 10 s. */
const WATCH_BACKOFF = { ...DEFAULT_BACKOFF, minDelayMs: 200, maxDelayMs: 10_000 };
/** A watch that stayed up this long was a success: the next drop starts the backoff again. */
const WATCH_STABLE_MS = 5_000;

export interface FollowOptions {
  meta: MetaClient;
  /** The registration to subscribe to first (from a lookup). */
  info: PublisherInfo;
  /** Where the first subscription starts; after a move, always `oldest`. */
  from?: From;
  log: Logger;
  onValue: (value: Received, publisher: PublisherInfo) => void;
  onGap?: (gap: Gap) => void;
  onOpen?: (open: OpenInfo, publisher: PublisherInfo) => void;
  onRefused?: (refusal: UpgradeRefusal, publisher: PublisherInfo) => void;
  onClose?: (code: number, reason: string, willRetry: boolean) => void;
  onError?: (err: StoaError) => void;
  /** The name's registration moved: from the one followed until now to `to`. */
  onMoved?: (from: PublisherInfo, to: PublisherInfo) => void;
  /** Tests: a shorter fallback lookup interval. */
  lookupEveryMs?: number;
}

export interface Following {
  /** The registration followed now. */
  readonly publisher: PublisherInfo;
  readonly closed: Promise<void>;
  close(): void;
}

/** Another registration than `a`, for subscribing: another pub_id, or the same one elsewhere. */
function moved(a: PublisherInfo, b: PublisherInfo): boolean {
  return a.pub_id !== b.pub_id || a.urls.service !== b.urls.service;
}

/**
 * Subscribes to `info` and follows its name.
 *
 * @example
 * ```ts
 * const info = await meta.lookup("lab/temp");
 * const f = follow({ meta, info, log, onValue: ({ value }) => console.log(value) });
 * // later
 * f.close();
 * ```
 */
export function follow(options: FollowOptions): Following {
  const { meta, log } = options;
  const name = options.info.name;
  const lookupEvery = options.lookupEveryMs ?? LOOKUP_EVERY_MS;
  let current = options.info;
  let closing = false;
  const done = Promise.withResolvers<void>();
  const stopWatch = new AbortController();
  let lastLookup = 0;
  /** How many times it moved: a lookup answered after a move is older than it. */
  let moves = 0;

  const open = (info: PublisherInfo, from: From) => {
    const sub = subscribe(info.urls.service, {
      from,
      onValue: (value) => options.onValue(value, info),
      onGap: options.onGap,
      onOpen: (o) => {
        if (sub === subscription) stopFallback();
        options.onOpen?.(o, info);
      },
      onRefused: (refusal) => {
        options.onRefused?.(refusal, info);
        if (sub === subscription) startFallback();
      },
      onClose: (code, reason, willRetry) => {
        if (sub !== subscription) return; // the one we left
        options.onClose?.(code, reason, willRetry);
        if (willRetry) startFallback();
      },
      onError: (err) => {
        if (sub === subscription) options.onError?.(err);
      },
    });
    void sub.closed.then(() => {
      if (sub === subscription) finish();
    });
    return sub;
  };
  let subscription = open(current, options.from ?? { at: "latest" });

  const moveTo = (next: PublisherInfo): void => {
    if (closing || next.name !== name || next.state !== "live" || !moved(current, next)) return;
    const from = current;
    log.info("publisher moved", {
      publisher: name,
      from_pub_id: from.pub_id,
      to_pub_id: next.pub_id,
      from_host: from.host,
      to_host: next.host,
    });
    current = next;
    moves++;
    stopFallback();
    const old = subscription;
    subscription = open(next, { at: "oldest" });
    old.close();
    options.onMoved?.(from, next);
  };

  /**
   * Looks the name up (one lookup at a time: a call meanwhile shares it) and moves when it is
   * live elsewhere — unless it moved meanwhile (a watch event is newer than this answer). False
   * when the lookup failed (logged).
   */
  let looking: Promise<boolean> | null = null;
  const lookup = (): Promise<boolean> => {
    if (closing) return Promise.resolve(true);
    looking ??= (async () => {
      lastLookup = performance.now();
      const movesBefore = moves;
      try {
        const found = await meta.findByName(name);
        if (found !== null && moves === movesBefore) moveTo(found);
        return true;
      } catch (err) {
        log.debug("looking the publisher up failed", { publisher: name, error: describeError(err) });
        return false;
      } finally {
        looking = null;
      }
    })();
    return looking;
  };
  /** A lookup started from now on (not one already in flight, which may predate a watch). */
  const freshLookup = async (): Promise<boolean> => {
    await looking;
    return lookup();
  };

  /**
   * After a watch is in place: one lookup that succeeds, retried with backoff while that watch
   * lasts (its store may answer the watch before it answers lookups).
   */
  let watchGeneration = 0;
  const resync = async (generation: number): Promise<void> => {
    for (let attempt = 1; !closing && generation === watchGeneration; attempt++) {
      if (await freshLookup()) return;
      await sleepUnlessAborted(backoffDelay(attempt, WATCH_BACKOFF), stopWatch.signal);
    }
  };

  /**
   * While the subscription fails (refused, or no connection: its retries back off to seconds
   * apart), the name is looked up every `lookupEvery`, whether or not the watch works.
   */
  let fallback: ReturnType<typeof setInterval> | undefined;
  const startFallback = (): void => {
    if (fallback !== undefined || closing) return;
    if (performance.now() - lastLookup >= lookupEvery) void lookup();
    fallback = setInterval(() => void lookup(), lookupEvery);
  };
  const stopFallback = (): void => {
    clearInterval(fallback);
    fallback = undefined;
  };

  const watchLoop = async (): Promise<void> => {
    let attempt = 0;
    let said = "";
    while (!closing) {
      const started = performance.now();
      let wasOpen = false;
      try {
        await meta.watch(name, {
          signal: stopWatch.signal,
          onOpen: () => {
            if (said !== "") log.info("watching the publisher's name again", { publisher: name });
            said = "";
            wasOpen = true;
            void resync(++watchGeneration);
          },
          onEvent: (event) => {
            if (event.type === "confirmed") moveTo(event.publisher);
          },
        });
        if (closing) return;
        log.debug("the metaserver ended the watch; watching again", { publisher: name });
      } catch (err) {
        if (closing) return;
        const text = err instanceof MetaApiError ? `${err.status} ${err.error}: ${err.message}` : describeError(err);
        if (wasOpen) {
          // A watch that was in place and dropped: watched again at once, and looked up.
          log.debug("the watch dropped; watching again", { publisher: name, error: text });
        } else {
          const old = err instanceof MetaApiError && err.status === 404 ? " (an older metaserver without /v1/watch?)" : "";
          if (text !== said) log.info(`cannot watch the publisher's name${old}: ${text}; retrying`, { publisher: name });
          said = text;
        }
      }
      watchGeneration++;
      attempt = wasOpen && performance.now() - started > WATCH_STABLE_MS ? 1 : attempt + 1;
      await sleepUnlessAborted(backoffDelay(attempt, WATCH_BACKOFF), stopWatch.signal);
    }
  };
  void watchLoop();

  function finish(): void {
    if (closing) return;
    closing = true;
    stopFallback();
    stopWatch.abort();
    subscription.close();
    void subscription.closed.then(() => done.resolve());
  }

  return {
    get publisher() {
      return current;
    },
    closed: done.promise,
    close: finish,
  };
}

function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
