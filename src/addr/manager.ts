/**
 * stoa addr's library: addresses a process owns (added as /128 before it binds, recorded in the
 * state file, removed when it is done — or by `gc` once it is dead), manual adds and deletes,
 * and listing; local prefixes ("AnyIP" routes) are in prefix.ts, garbage collection in gc.ts.
 * Used by `stoa addr` and by `stoa pub --addr auto`. Everything is synchronous: each kernel
 * request takes microseconds.
 *
 * @example
 * // A publisher on its own address of the on-link /64, reachable from other hosts at once:
 * const owned = addRandomOwnedAddress({ prefix: "fd00:1:2:3::/64", dev: "eth0", runDir });
 * onShutdown("address", () => owned.remove());
 * Bun.listen({ hostname: owned.addr, port: 8081, socket });
 */
import { existsSync } from "node:fs";
import { StoaError } from "../core/errors.ts";
import { AF_INET6, IfaFlag } from "../ffi/netlink-codec.ts";
import {
  NEEDS_NET_ADMIN,
  NetlinkError,
  addAddress,
  deleteAddress,
  interfaceIndex,
  interfaceNamer,
  listAddresses as dumpAddresses,
} from "../ffi/netlink.ts";
import { Errno } from "../ffi/libc.ts";
import { formatIPv6, parseIPv6, parsePrefix, randomAddressIn } from "./ipv6.ts";
import { MAX_OWNED_ADDRESSES, type OwnedRecord } from "./model.ts";
import { currentNetns, hasNetAdmin, ownerAlive, processStart, readState, statePath, withState } from "./state.ts";

export { addPrefix, listPrefixes, removePrefix } from "./prefix.ts";
export { collectGarbage } from "./gc.ts";

/** Owned addresses are single addresses: /128 (see model.ts for why). */
const HOST_PREFIXLEN = 128;
/** Fresh random addresses tried when one is already taken (a collision in a /64 is ~2^-64). */
const RANDOM_ADD_ATTEMPTS = 8;

/** An address this process added and will remove. */
interface OwnedAddress {
  /** Canonical text (RFC 5952), ready for bind/connect. */
  readonly addr: string;
  readonly prefixlen: number;
  readonly dev: string;
  readonly ifindex: number;
  /** Deletes the address and its record; idempotent, and an address already gone is fine. */
  remove(): void;
  [Symbol.dispose](): void;
}

interface AddOptions {
  /** An IPv6 address, `fd00::5` or `fd00::5/128`. */
  addr: string;
  dev: string;
  /** Skip duplicate address detection (default true: the address is usable at once). */
  nodad?: boolean;
  runDir: string;
  /** Who owns the address: a pid (default: this process), or null for "nobody" (never collected). */
  owner?: number | null;
}

function parseAddress(text: string): Uint8Array {
  const [addr = "", len] = text.split("/", 2);
  const bytes = parseIPv6(addr);
  if (bytes === undefined) throw new StoaError("usage", `'${text}' is not an IPv6 address (e.g. fd00:1:2:3::10/128)`);
  if (len !== undefined && len !== String(HOST_PREFIXLEN)) {
    throw new StoaError("usage", `address '${text}': stoa adds single addresses, write it as ${formatIPv6(bytes)}/128`);
  }
  return bytes;
}

function requireNetAdmin(action: string): void {
  if (!hasNetAdmin()) throw new NetlinkError("permission", `cannot ${action}: ${NEEDS_NET_ADMIN}`, Errno.EPERM, undefined);
}

const same = (r: OwnedRecord, addr: string, ifindex: number, netns: number) => r.addr === addr && r.ifindex === ifindex && r.netns === netns;

/**
 * Adds `addr`/128 on `dev` (nodad unless `nodad: false`) and records it as owned by `owner`.
 * Throws StoaError: "usage" (bad address or interface name), "not_found" (no such interface),
 * "exists" (already on the interface), "permission" (no CAP_NET_ADMIN).
 */
export function addOwnedAddress(opts: AddOptions): OwnedAddress {
  const bytes = parseAddress(opts.addr);
  const addr = formatIPv6(bytes);
  const ifindex = interfaceIndex(opts.dev);
  const subject = { object: `address ${addr}/128`, dev: opts.dev };
  requireNetAdmin(`add ${subject.object}`);
  const owner = opts.owner === undefined ? process.pid : opts.owner;
  const pidStart = owner === null ? null : processStart(owner);
  if (owner !== null && pidStart === undefined) throw new StoaError("usage", `owner pid ${owner} is not a running process`);
  const netns = currentNetns();
  const record: OwnedRecord = {
    addr,
    prefixlen: HOST_PREFIXLEN,
    dev: opts.dev,
    ifindex,
    netns,
    pid: owner,
    pidStart: pidStart ?? null,
    addedAt: new Date().toISOString(),
  };
  withState(opts.runDir, (state) => {
    // A record for this address can only be stale (the address is gone) — or the add fails below.
    const previous = state.records.filter((r) => same(r, addr, ifindex, netns));
    const others = state.records.filter((r) => !same(r, addr, ifindex, netns));
    if (others.length >= MAX_OWNED_ADDRESSES) {
      throw new StoaError("too_large", `stoa already records ${MAX_OWNED_ADDRESSES} addresses; run 'stoa addr gc' or delete some`);
    }
    // The record first: a crash after it leaves a record without an address, never a leak.
    state.records = [...others, record];
    try {
      addAddress({ address: bytes, prefixlen: HOST_PREFIXLEN, ifindex, nodad: opts.nodad ?? true }, subject);
    } catch (err) {
      state.records = [...others, ...previous];
      throw err;
    }
    return { result: undefined, changed: true };
  });
  let removed = false;
  const remove = () => {
    if (removed) return;
    removeAddress({ addr, dev: opts.dev, runDir: opts.runDir, ifindex, missingOk: true });
    removed = true;
  };
  return { addr, prefixlen: HOST_PREFIXLEN, dev: opts.dev, ifindex, remove, [Symbol.dispose]: remove };
}

/**
 * `addOwnedAddress` of a random address in `prefix` (e.g. the on-link /64), drawing again if
 * one is taken.
 */
export function addRandomOwnedAddress(opts: Omit<AddOptions, "addr"> & { prefix: string }): OwnedAddress {
  parsePrefix(opts.prefix);
  for (let attempt = 1; ; attempt++) {
    try {
      return addOwnedAddress({ ...opts, addr: randomAddressIn(opts.prefix) });
    } catch (err) {
      if (!(err instanceof StoaError && err.code === "exists") || attempt >= RANDOM_ADD_ATTEMPTS) throw err;
    }
  }
}

/**
 * Deletes `addr`/128 from `dev` and drops its record. "not_found" if it is not there, unless
 * `missingOk` (then only the record goes).
 */
export function removeAddress(opts: { addr: string; dev: string; runDir: string; ifindex?: number; missingOk?: boolean }): void {
  const bytes = parseAddress(opts.addr);
  const addr = formatIPv6(bytes);
  const subject = { object: `address ${addr}/128`, dev: opts.dev };
  let ifindex = opts.ifindex;
  let failure: unknown;
  try {
    ifindex ??= interfaceIndex(opts.dev);
    deleteAddress({ address: bytes, prefixlen: HOST_PREFIXLEN, ifindex }, subject);
  } catch (err) {
    const gone = err instanceof NetlinkError && (err.errno === Errno.EADDRNOTAVAIL || err.errno === Errno.ENODEV);
    if (!gone) throw err;
    if (!opts.missingOk) failure = err;
  }
  const netns = currentNetns();
  const dev = opts.dev;
  // Nothing recorded yet: do not create the run dir just to find that out.
  if (existsSync(statePath(opts.runDir))) {
    withState(opts.runDir, (state) => {
      const before = state.records.length;
      state.records = state.records.filter((r) => !(r.addr === addr && r.netns === netns && (r.ifindex === ifindex || r.dev === dev)));
      return { result: undefined, changed: state.records.length !== before };
    });
  }
  if (failure !== undefined) throw failure;
}

/** One address as `stoa addr ls` shows it. */
export interface AddressInfo {
  addr: string;
  prefixlen: number;
  dev: string;
  ifindex: number;
  scope: string;
  flags: string[];
  /** Set when stoa added it: the owning pid (null = added by hand), whether it runs, when. */
  owner: { pid: number | null; alive: boolean; addedAt: string } | null;
}

const FLAG_NAMES: [number, string][] = [
  [IfaFlag.SECONDARY, "temporary"], // IFA_F_TEMPORARY for IPv6
  [IfaFlag.NODAD, "nodad"],
  [IfaFlag.OPTIMISTIC, "optimistic"],
  [IfaFlag.DADFAILED, "dadfailed"],
  [IfaFlag.HOMEADDRESS, "home"],
  [IfaFlag.DEPRECATED, "deprecated"],
  [IfaFlag.TENTATIVE, "tentative"],
  [IfaFlag.PERMANENT, "permanent"],
  [IfaFlag.MANAGETEMPADDR, "mngtmpaddr"],
  [IfaFlag.NOPREFIXROUTE, "noprefixroute"],
  [IfaFlag.MCAUTOJOIN, "autojoin"],
  [IfaFlag.STABLE_PRIVACY, "stable-privacy"],
];

function scopeName(scope: number): string {
  return scope === 0 ? "global" : scope === 200 ? "site" : scope === 253 ? "link" : scope === 254 ? "host" : String(scope);
}

/** The IPv6 addresses of this network namespace (on `dev` only, if given), with stoa's records. */
export function listAddresses(opts: { runDir: string; dev?: string; warnings?: string[] }): AddressInfo[] {
  const only = opts.dev === undefined ? undefined : interfaceIndex(opts.dev);
  let state: { records: OwnedRecord[]; warnings: string[] };
  try {
    state = readState(opts.runDir);
  } catch (err) {
    // Listing needs no privilege: without the records (root's state dir), owners are just not shown.
    if (!(err instanceof StoaError && err.code === "io")) throw err;
    state = { records: [], warnings: [`${err.message}; owners not shown`] };
  }
  opts.warnings?.push(...state.warnings);
  const netns = currentNetns();
  const name = interfaceNamer();
  const out: AddressInfo[] = [];
  for (const a of dumpAddresses(AF_INET6)) {
    if (only !== undefined && a.index !== only) continue;
    const addr = formatIPv6(a.address);
    const record = state.records.find((r) => r.netns === netns && r.addr === addr && r.ifindex === a.index && r.prefixlen === a.prefixlen);
    out.push({
      addr,
      prefixlen: a.prefixlen,
      dev: name(a.index),
      ifindex: a.index,
      scope: scopeName(a.scope),
      flags: FLAG_NAMES.filter(([bit]) => a.flags & bit).map(([, n]) => n),
      owner: record === undefined ? null : { pid: record.pid, alive: ownerAlive(record), addedAt: record.addedAt },
    });
  }
  return out;
}
