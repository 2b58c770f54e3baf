/**
 * Who owns a registration and how many each writer may hold (protocol.ts, "Authentication" and
 * "Quotas"): the rules the store applies inside its write transactions.
 */
import type { Database } from "bun:sqlite";
import {
  MetaApiError,
  NON_ADMIN_MAX_PENDING,
  NON_ADMIN_MAX_PUBLISHERS,
  WRITER_MAX_PENDING,
  WRITER_MAX_PUBLISHERS,
} from "./protocol.ts";

/**
 * Who writes: `owner` is recorded on what it creates and counted for quotas; `admin` (the
 * server's own token) may write anything and is held only to `MAX_PUBLISHERS`; `enforce` is
 * false under --no-auth, where owners are quota keys only.
 */
export interface Writer {
  owner: string;
  admin: boolean;
  enforce: boolean;
}

/** The admin under --no-auth and in tests: no owner checks, no quotas but the global one. */
export const ANYONE: Writer = { owner: "", admin: true, enforce: false };

/**
 * Whether `writer` may change a registration owned by `owner`: "yes", "claim" (it has no token
 * owner yet: take it), or "no". A registration without a token owner (made under --no-auth, or
 * by schema 1) is taken over only by the admin: were any writer token enough, whoever wrote to
 * it first after authentication was turned on would own another's publisher. Writers wait until
 * it is removed (its publisher has no token, so its heartbeats stop counting) or ask the admin.
 */
export function mayWrite(owner: string, writer: Writer): "yes" | "claim" | "no" {
  if (!writer.enforce) return "yes";
  if (!owner.startsWith("t:")) return writer.admin ? "claim" : "no";
  return writer.admin || owner === writer.owner ? "yes" : "no";
}

/** The 403 for a registration `writer` does not own. */
export function notOwner(pubId: string, name: string): MetaApiError {
  return new MetaApiError(
    "forbidden",
    `publisher ${name} (pub_id ${pubId}) was registered with another token; only that token or the metaserver's admin token may change it — use the token it was registered with, or choose another name and pub_id`,
  );
}

/** The per-writer and non-admin limits (protocol.ts's constants unless a test sets others). */
export interface Quotas {
  writerPublishers: number;
  writerPending: number;
  nonAdminPublishers: number;
  nonAdminPending: number;
}

export const DEFAULT_QUOTAS: Quotas = {
  writerPublishers: WRITER_MAX_PUBLISHERS,
  writerPending: WRITER_MAX_PENDING,
  nonAdminPublishers: NON_ADMIN_MAX_PUBLISHERS,
  nonAdminPending: NON_ADMIN_MAX_PENDING,
};

/**
 * Quotas for one more pending registration of `writer` (a replacement is not one more
 * registration, only one more pending). Runs inside register's transaction, after the row
 * being replaced was deleted.
 */
export function checkQuotas(db: Database, limits: Quotas & { maxPublishers: number; adminOwner: string }, writer: Writer, replacement: boolean): void {
  const count = (where: string, ...args: string[]) =>
    db.query<{ n: number }, string[]>(`SELECT count(*) AS n FROM publishers ${where}`).get(...args)?.n ?? 0;
  const q = limits;
  if (!writer.admin) {
    const mine = count("WHERE owner = ?", writer.owner);
    if (!replacement && mine >= q.writerPublishers) {
      throw new MetaApiError(
        "quota_exceeded",
        `this writer already holds ${mine} registrations, its limit of ${q.writerPublishers}; deregister unused ones, or ask the metaserver's operator for a token of its own`,
      );
    }
    // Unconfirmed, whatever the state: a stale unconfirmed entry is as much a squat as a pending one.
    const minePending = count("WHERE owner = ? AND confirmed = 0", writer.owner);
    if (minePending >= q.writerPending) {
      throw new MetaApiError(
        "quota_exceeded",
        `this writer already has ${minePending} registrations waiting for confirmation, its limit of ${q.writerPending}; confirm them (or let them expire) and try again`,
      );
    }
    // Totals minus the admin's: index lookups, where "owner != ?" would scan every row.
    const others = count("") - count("WHERE owner = ?", limits.adminOwner);
    if (!replacement && others >= q.nonAdminPublishers) {
      throw new MetaApiError(
        "quota_exceeded",
        `writers other than the admin already hold ${others} registrations, their limit of ${q.nonAdminPublishers}; deregister unused ones and try again`,
      );
    }
    const othersPending = count("WHERE confirmed = 0") - count("WHERE owner = ? AND confirmed = 0", limits.adminOwner);
    if (othersPending >= q.nonAdminPending) {
      throw new MetaApiError(
        "quota_exceeded",
        `${othersPending} registrations of writers other than the admin wait for confirmation, their limit of ${q.nonAdminPending}; try again in a few seconds`,
      );
    }
  }
  if (!replacement && count("") >= limits.maxPublishers) {
    throw new MetaApiError(
      "full",
      `the metaserver holds its maximum of ${limits.maxPublishers} publishers; deregister unused ones and try again`,
    );
  }
}
