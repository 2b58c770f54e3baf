/**
 * Target health: what `list` shows for each (kind, pub_id).
 *
 * Routers see every connect attempt; they report an outcome to the main thread only when it
 * differs from the last one they reported for that target, or `HEALTH_REPORT_INTERVAL_MS` after
 * it (so routers that disagree converge within a second, without a message per connection).
 * The main thread's `HealthTable` keeps the latest report per target. Both are bounded: the
 * oldest target is forgotten first.
 */
import type { Kind } from "../stream/names.ts";
import { type HealthView, MAX_HEALTH_ENTRIES, MAX_HEALTH_ERROR_CHARS } from "./protocol.ts";

/** How often a router repeats an unchanged outcome for one target. */
const HEALTH_REPORT_INTERVAL_MS = 1_000;

/** One connect outcome, as a router reports it. `at`: ms since the epoch. */
export interface HealthEvent {
  kind: Kind;
  pubId: string;
  state: "up" | "down";
  error: string | null;
  at: number;
}

interface Record_ {
  state: "up" | "down";
  error: string | null;
  since: number;
}

function key(kind: Kind, pubId: string): string {
  return `${kind}\u0000${pubId}`;
}

/** Inserts at the end of a bounded Map, dropping the oldest entry when full. */
function remember<V>(map: Map<string, V>, k: string, value: V, limit: number): void {
  map.delete(k);
  if (map.size >= limit) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  map.set(k, value);
}

/** The main thread's view of every target's health. */
export class HealthTable {
  readonly #map = new Map<string, Record_>();

  record(event: HealthEvent): void {
    const k = key(event.kind, event.pubId);
    const prev = this.#map.get(k);
    const error = event.error === null ? null : event.error.slice(0, MAX_HEALTH_ERROR_CHARS);
    const since = prev !== undefined && prev.state === event.state ? prev.since : event.at;
    remember(this.#map, k, { state: event.state, error, since }, MAX_HEALTH_ENTRIES);
  }

  /** Forget a target (deregistered, or its socket is gone). */
  forget(kind: Kind, pubId: string): void {
    this.#map.delete(key(kind, pubId));
  }

  view(kind: Kind, pubId: string): HealthView {
    const r = this.#map.get(key(kind, pubId));
    if (r === undefined) return { state: "unknown", error: null, since: null };
    return { state: r.state, error: r.error, since: new Date(r.since).toISOString() };
  }

  counts(): { up: number; down: number } {
    let up = 0;
    let down = 0;
    for (const r of this.#map.values()) {
      if (r.state === "up") up++;
      else down++;
    }
    return { up, down };
  }
}

/** A router's filter in front of the main thread's table (see the module header). */
export class HealthReporter {
  readonly #last = new Map<string, { state: "up" | "down"; error: string | null; at: number }>();
  readonly #send: (event: HealthEvent) => void;

  constructor(send: (event: HealthEvent) => void) {
    this.#send = send;
  }

  report(kind: Kind, pubId: string, state: "up" | "down", error: string | null): void {
    const k = key(kind, pubId);
    const now = Date.now();
    const last = this.#last.get(k);
    if (last !== undefined && last.state === state && last.error === error && now - last.at < HEALTH_REPORT_INTERVAL_MS) {
      return;
    }
    remember(this.#last, k, { state, error, at: now }, MAX_HEALTH_ENTRIES);
    this.#send({ kind, pubId, state, error, at: now });
  }
}
