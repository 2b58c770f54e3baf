/**
 * stoa addr — the data model: the rtnetlink messages stoa sends and reads, and the state file of
 * the addresses it added. (Why: Linux answers Neighbor Discovery only for addresses it owns, so
 * a publisher bound to a random address of the on-link /64 is unreachable until that exact
 * address is on an interface — or until its whole prefix is routed to the host as `local`.)
 *
 * ## rtnetlink (NETLINK_ROUTE socket; bytes in src/ffi/netlink-codec.ts, socket in netlink.ts)
 *
 * Every message: struct nlmsghdr, 16 bytes, host byte order —
 *   u32 nlmsg_len (header + payload) | u16 nlmsg_type | u16 nlmsg_flags | u32 nlmsg_seq | u32 nlmsg_pid
 * then a fixed struct and rtattrs, each `u16 rta_len (4 + value) | u16 rta_type | value`, padded
 * to 4 bytes. Addresses inside attributes are in network byte order.
 *
 *   RTM_NEWADDR (20) / RTM_DELADDR (21)  flags REQUEST|ACK (+ CREATE|EXCL for NEW)
 *     struct ifaddrmsg, 8 bytes: u8 family (AF_INET6 = 10) | u8 prefixlen (128) | u8 flags
 *                                (IFA_F_NODAD = 0x02) | u8 scope | u32 ifindex
 *     IFA_LOCAL (2) and IFA_ADDRESS (1): the 16-byte address; IFA_FLAGS (8): u32 IFA_F_* flags
 *   RTM_GETADDR (22) flags REQUEST|DUMP (0x300), ifaddrmsg {family}: one RTM_NEWADDR per address
 *   RTM_NEWROUTE (24) / RTM_DELROUTE (25)  the local route of a prefix ("AnyIP")
 *     struct rtmsg, 12 bytes: u8 family | u8 dst_len | u8 src_len | u8 tos | u8 table
 *                             (RT_TABLE_LOCAL = 255) | u8 protocol (RTPROT_STOA) | u8 scope
 *                             (RT_SCOPE_HOST = 254) | u8 type (RTN_LOCAL = 2) | u32 flags
 *     RTA_DST (1): the prefix; RTA_OIF (4): u32 ifindex of `lo`; RTA_TABLE (15): u32 255
 *   RTM_GETROUTE (26) flags REQUEST|DUMP, rtmsg {family}: one RTM_NEWROUTE per route
 *
 * Replies. A request with NLM_F_ACK gets NLMSG_ERROR (2): `i32 error` (0 = ACK, else −errno),
 * the request's nlmsghdr (payload not echoed: NETLINK_CAP_ACK), then with NLM_F_ACK_TLVS the
 * kernel's message as NLMSGERR_ATTR_MSG (NETLINK_EXT_ACK). A dump comes as any number of
 * datagrams of NLM_F_MULTI messages, ended by NLMSG_DONE (3, `i32 status`) or NLMSG_ERROR;
 * NLM_F_DUMP_INTR on a message means the table changed meanwhile (the dump is retried). Replies
 * are matched to requests by nlmsg_seq; others (late replies to a timed-out request) are skipped.
 * The decoder checks every nlmsg_len and rta_len against the bytes that remain; limits:
 * MAX_DATAGRAM_BYTES, MAX_ATTRS_PER_MESSAGE, MAX_DUMP_ENTRIES (netlink-codec.ts).
 *
 * Routes stoa adds carry rtm_protocol RTPROT_STOA, so `stoa addr ls` can tell its prefixes from
 * others' and `prefix del` can never remove a route it did not add (the kernel matches protocol).
 * Such a prefix is reachable on every address by a `[::]` listener; binding one address of it
 * needs net.ipv6.ip_nonlocal_bind=1 (IPv6 bind() checks addresses, not local routes).
 *
 * ## The state file: `<run_dir>/addr/owned.json` (lock: `<run_dir>/addr/owned.lock`)
 *
 *   {"version": 1, "addresses": [
 *     {"addr": "fd00:1:2:3:a:b:c:d", "prefixlen": 128, "dev": "eth0", "ifindex": 2,
 *      "netns": 4026531840, "pid": 4242, "pidStart": 123456, "addedAt": "2026-03-01T12:00:00.000Z"}]}
 *
 * One record per address stoa added: `addr` canonical (RFC 5952); `netns` the inode of the
 * network namespace it was added in (the run dir is shared by every namespace of the host: a
 * record is acted on only from its own namespace); `pid` + `pidStart` (field 22 of
 * /proc/<pid>/stat, clock ticks after boot) name the owning process, so a reused pid is not taken
 * for the owner; `pid: null` for an address added by hand (`stoa addr add` without --owner),
 * which gc never deletes. The owner is alive while /proc/<pid>/stat shows the same start time
 * and the process is not a zombie. `stoa addr gc` deletes the addresses of dead owners and drops
 * records whose address is already gone.
 *
 * Every change is read-modify-write under an exclusive flock(2) on the lock file (the state file
 * itself is replaced, so it cannot carry the lock), written to a temporary file and renamed over
 * the old one. A record is written before its address is added and removed after the address is
 * deleted, so a crash in between leaves a record without an address (gc drops it), never an
 * address without a record. Reading is defensive: a file over MAX_STATE_BYTES or not JSON of
 * this shape is set aside as `owned.json.corrupt-<time>` and stoa starts afresh; a record that
 * does not match is dropped with a warning.
 */
import { z } from "zod";

/** rtm_protocol of stoa's routes: 83 ('S'), unassigned in iproute2's rt_protos (`ip route` shows `proto 83`). */
export const RTPROT_STOA = 83;

/** State file format version; a newer version is refused rather than rewritten. */
export const STATE_VERSION = 1;
/** A state file larger than this is not read (≈ 200 bytes a record: room for MAX_OWNED_ADDRESSES). */
export const MAX_STATE_BYTES = 8 * 1024 * 1024;
/** Records kept at most; adding beyond fails ("gc" first, or remove addresses). */
export const MAX_OWNED_ADDRESSES = 32_768;
/** How long to wait for another stoa process's lock before failing. */
export const LOCK_TIMEOUT_MS = 5_000;

/** File names in the run dir's `addr/` subtree (core/paths.ts). */
export const STATE_FILE = "owned.json";
export const LOCK_FILE = "owned.lock";

export const OwnedRecord = z.object({
  addr: z.string().min(2).max(64),
  prefixlen: z.number().int().min(0).max(128),
  dev: z.string().min(1).max(15),
  ifindex: z.number().int().positive(),
  netns: z.number().int().nonnegative(),
  pid: z.number().int().positive().nullable(),
  pidStart: z.number().int().nonnegative().nullable(),
  addedAt: z.string().max(64),
});
export type OwnedRecord = z.infer<typeof OwnedRecord>;

export const StateFile = z.object({
  version: z.number().int(),
  addresses: z.array(z.unknown()).max(MAX_OWNED_ADDRESSES),
});
