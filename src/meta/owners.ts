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

/** The limits a store applies to one more registration. */
export type QuotaLimits = Quotas & { maxPublishers: number; adminOwner: string };

/** Which limit a registration would break. */
export type QuotaBreach = "writer" | "writer_pending" | "others" | "others_pending" | "full";

/** The error for a breached limit: `n` held now, `limit` the limit. */
export function quotaError(breach: QuotaBreach, n: number, limit: number): MetaApiError {
  switch (breach) {
    case "writer":
      return new MetaApiError(
        "quota_exceeded",
        `this writer already holds ${n} registrations, its limit of ${limit}; deregister unused ones, or ask the metaserver's operator for a token of its own`,
      );
    case "writer_pending":
      return new MetaApiError(
        "quota_exceeded",
        `this writer already has ${n} registrations waiting for confirmation, its limit of ${limit}; confirm them (or let them expire) and try again`,
      );
    case "others":
      return new MetaApiError(
        "quota_exceeded",
        `writers other than the admin already hold ${n} registrations, their limit of ${limit}; deregister unused ones and try again`,
      );
    case "others_pending":
      return new MetaApiError(
        "quota_exceeded",
        `${n} registrations of writers other than the admin wait for confirmation, their limit of ${limit}; try again in a few seconds`,
      );
    case "full":
      return new MetaApiError("full", `the metaserver holds its maximum of ${limit} publishers; deregister unused ones and try again`);
  }
}

/** What the quota rules need counted, after the registration being replaced was taken out. */
export interface QuotaCounts {
  /** Held by the writer, and those never confirmed. */
  mine: number;
  minePending: number;
  /** Held by writers other than the admin, and those never confirmed. */
  others: number;
  othersPending: number;
  total: number;
}

/**
 * Quotas for one more pending registration of `writer` (a replacement is not one more
 * registration, only one more pending): the breach and its numbers, or null. "Pending" is
 * unconfirmed, whatever the state: a stale unconfirmed entry is as much a squat as a pending one.
 */
export function quotaBreach(c: QuotaCounts, q: QuotaLimits, writer: Writer, replacement: boolean): [QuotaBreach, number, number] | null {
  if (!writer.admin) {
    if (!replacement && c.mine >= q.writerPublishers) return ["writer", c.mine, q.writerPublishers];
    if (c.minePending >= q.writerPending) return ["writer_pending", c.minePending, q.writerPending];
    if (!replacement && c.others >= q.nonAdminPublishers) return ["others", c.others, q.nonAdminPublishers];
    if (c.othersPending >= q.nonAdminPending) return ["others_pending", c.othersPending, q.nonAdminPending];
  }
  if (!replacement && c.total >= q.maxPublishers) return ["full", c.total, q.maxPublishers];
  return null;
}

/**
 * SQLite's quota check, inside register's transaction, after the row being replaced was
 * deleted: index lookups only ("owner != ?" would scan every row, so totals minus the admin's).
 */
export function checkQuotas(db: Database, limits: QuotaLimits, writer: Writer, replacement: boolean): void {
  const count = (where: string, ...args: string[]) =>
    db.query<{ n: number }, string[]>(`SELECT count(*) AS n FROM publishers ${where}`).get(...args)?.n ?? 0;
  const total = count("");
  const counts: QuotaCounts = writer.admin
    ? { mine: 0, minePending: 0, others: 0, othersPending: 0, total }
    : {
        mine: count("WHERE owner = ?", writer.owner),
        minePending: count("WHERE owner = ? AND confirmed = 0", writer.owner),
        others: total - count("WHERE owner = ?", limits.adminOwner),
        othersPending: count("WHERE confirmed = 0") - count("WHERE owner = ? AND confirmed = 0", limits.adminOwner),
        total,
      };
  const breach = quotaBreach(counts, limits, writer, replacement);
  if (breach !== null) throw quotaError(...breach);
}
