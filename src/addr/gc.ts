/**
 * `stoa addr gc`: deletes the addresses whose owning process is gone (checked by pid and start
 * time) and forgets records whose address — or whole network namespace — is already gone. Acts
 * only on this network namespace's addresses (model.ts).
 */
import { existsSync } from "node:fs";
import { AF_INET6 } from "../ffi/netlink-codec.ts";
import { Errno } from "../ffi/libc.ts";
import { NetlinkError, deleteAddress, listAddresses } from "../ffi/netlink.ts";
import { formatIPv6, parseIPv6 } from "./ipv6.ts";
import type { OwnedRecord } from "./model.ts";
import { currentNetns, netnsInUse, ownerAlive, statePath, withState } from "./state.ts";

/** What `gc` did. */
interface GcReport {
  /** Addresses deleted because their owner is gone. */
  removed: { addr: string; dev: string; pid: number | null }[];
  /** Records dropped because their address was already gone (or their namespace). */
  dropped: { addr: string; dev: string; reason: string }[];
  /** Records left alone: live owner, added by hand, or another live namespace. */
  kept: number;
}

/**
 * Deletes the addresses whose owning process is gone and drops records whose address is
 * already gone. Only records of this network namespace are acted on; records of a namespace
 * that no longer exists are dropped.
 */
export function collectGarbage(runDir: string): GcReport {
  const report: GcReport = { removed: [], dropped: [], kept: 0 };
  if (!existsSync(statePath(runDir))) return report;
  const netns = currentNetns();
  withState(runDir, (state) => {
    if (state.records.length === 0) return { result: undefined, changed: false };
    const present = new Set(listAddresses(AF_INET6).map((a) => `${a.index} ${formatIPv6(a.address)}/${a.prefixlen}`));
    const keep: OwnedRecord[] = [];
    const nsInUse = new Map<number, boolean>();
    const records = state.records;
    let i = 0;
    try {
      for (; i < records.length; i++) {
        const r = records[i] as OwnedRecord;
        if (r.netns !== netns) {
          // A namespace nobody holds is destroyed, and its addresses with it.
          let inUse = nsInUse.get(r.netns);
          if (inUse === undefined) nsInUse.set(r.netns, (inUse = netnsInUse(r.netns)));
          if (inUse) keep.push(r);
          else report.dropped.push({ addr: r.addr, dev: r.dev, reason: "network namespace gone" });
        } else if (!present.has(`${r.ifindex} ${r.addr}/${r.prefixlen}`)) {
          report.dropped.push({ addr: r.addr, dev: r.dev, reason: "address already gone" });
        } else if (ownerAlive(r)) {
          keep.push(r);
        } else {
          const bytes = parseIPv6(r.addr);
          if (bytes === undefined) {
            report.dropped.push({ addr: r.addr, dev: r.dev, reason: "malformed record" });
            continue;
          }
          try {
            deleteAddress({ address: bytes, prefixlen: r.prefixlen, ifindex: r.ifindex }, { object: `address ${r.addr}/${r.prefixlen}`, dev: r.dev });
            report.removed.push({ addr: r.addr, dev: r.dev, pid: r.pid });
          } catch (err) {
            if (!(err instanceof NetlinkError && (err.errno === Errno.EADDRNOTAVAIL || err.errno === Errno.ENODEV))) throw err;
            report.dropped.push({ addr: r.addr, dev: r.dev, reason: "address already gone" });
          }
        }
      }
    } finally {
      // Progress is kept even if a delete threw (withState writes on throw): what is done is done.
      state.records = [...keep, ...records.slice(i)];
    }
    report.kept = keep.length;
    return { result: undefined, changed: report.removed.length + report.dropped.length > 0 };
  });
  return report;
}
