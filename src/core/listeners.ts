/**
 * Who owns the TCP listeners on this host (in this network namespace) that a connection to
 * `host:port` could reach, read from /proc/net/tcp and /proc/net/tcp6.
 *
 * A client about to send a local secret to a local server (the metaserver's admin token, which
 * `stoa pub` finds in the state dir) first checks that every listener the connection could land
 * on belongs to the user who owns the secret: on a shared host another user may bind the port
 * while the real server is down, or listen on `127.0.0.1:8090` while it listens on `[::1]:8090`.
 *
 * Lines are `sl local_address rem_address st … uid …`; addresses are hex in host byte order
 * (IPv4: one 32-bit word; IPv6: four), ports hex; `st` 0A is LISTEN. A listener matches the
 * target when its port is the target's and its address is the target's, the wildcard of the
 * target's family, or for an IPv4 target `::` (a dual-stack socket) or `::ffff:<ipv4>`.
 */
import { readFileSync } from "node:fs";
import { isIPv4, isIPv6 } from "node:net";
import { errnoCode } from "./errors.ts";

const LISTEN = "0A";
/** Lines read per table at most; a bigger table is not trusted (the check fails closed). */
const MAX_LINES = 100_000;

interface Listener {
  family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  address: Uint8Array;
  port: number;
  uid: number;
}

/**
 * The uids of the listeners that a connection to `host:port` could reach; `null` when the
 * tables cannot be read (not Linux, /proc hidden) or `host` is not an IP address.
 * @example
 * const uids = listenerUids("::1", 8090); // e.g. [0]: only root listens there
 */
export function listenerUids(host: string, port: number): number[] | null {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  const target = parseIp(bare);
  if (target === null) return null;
  let listeners: Listener[];
  try {
    listeners = [...readTable("/proc/net/tcp", 4), ...readTable("/proc/net/tcp6", 6)];
  } catch {
    return null;
  }
  return listeners.filter((l) => l.port === port && reaches(l, target)).map((l) => l.uid);
}

function reaches(l: Listener, target: { family: 4 | 6; bytes: Uint8Array }): boolean {
  const zero = l.address.every((b) => b === 0);
  if (l.family === target.family) return zero || equal(l.address, target.bytes);
  if (target.family === 4 && l.family === 6) {
    if (zero) return true; // [::] without IPV6_V6ONLY takes IPv4 too
    const mapped = new Uint8Array(16);
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped.set(target.bytes, 12);
    return equal(l.address, mapped);
  }
  return false;
}

function readTable(path: string, family: 4 | 6): Listener[] {
  let text: string;
  try {
    text = readFileSync(path, "latin1");
  } catch (err) {
    // No IPv6 in this kernel or namespace: no IPv6 listeners.
    if (family === 6 && errnoCode(err) === "ENOENT") return [];
    throw err;
  }
  const out: Listener[] = [];
  const lines = text.split("\n");
  if (lines.length > MAX_LINES) throw new Error(`${path} has more than ${MAX_LINES} lines`);
  for (const line of lines.slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[3] !== LISTEN) continue;
    const [addrHex = "", portHex = ""] = (f[1] ?? "").split(":");
    const address = hostOrderHex(addrHex, family);
    const port = Number.parseInt(portHex, 16);
    const uid = Number(f[7]);
    if (address === null || !Number.isInteger(port) || !Number.isInteger(uid)) continue;
    out.push({ family, address, port, uid });
  }
  return out;
}

/** /proc's address hex (32-bit words in host order; this is little-endian x86/arm64) → network-order bytes. */
function hostOrderHex(hex: string, family: 4 | 6): Uint8Array | null {
  const words = family === 4 ? 1 : 4;
  if (hex.length !== words * 8 || !/^[0-9A-Fa-f]+$/.test(hex)) return null;
  const out = new Uint8Array(words * 4);
  const little = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  for (let w = 0; w < words; w++) {
    for (let b = 0; b < 4; b++) {
      const byte = Number.parseInt(hex.slice(w * 8 + b * 2, w * 8 + b * 2 + 2), 16);
      out[w * 4 + (little ? 3 - b : b)] = byte;
    }
  }
  return out;
}

function parseIp(text: string): { family: 4 | 6; bytes: Uint8Array } | null {
  if (isIPv4(text)) return { family: 4, bytes: Uint8Array.from(text.split(".").map(Number)) };
  if (!isIPv6(text)) return null;
  // Expand "::" and an embedded IPv4 tail into 8 groups.
  let head = text;
  let v4: number[] = [];
  const lastColon = head.lastIndexOf(":");
  const tail = head.slice(lastColon + 1);
  if (isIPv4(tail)) {
    v4 = tail.split(".").map(Number);
    head = `${head.slice(0, lastColon + 1)}0:0`;
  }
  const [left = "", right] = head.split("::");
  const l = left === "" ? [] : left.split(":");
  const r = right === undefined || right === "" ? [] : right.split(":");
  const groups = right === undefined ? l : [...l, ...Array(8 - l.length - r.length).fill("0"), ...r];
  if (groups.length !== 8) return null;
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    const n = Number.parseInt(g, 16);
    bytes[i * 2] = n >> 8;
    bytes[i * 2 + 1] = n & 0xff;
  });
  if (v4.length === 4) bytes.set(v4, 12);
  return { family: 6, bytes };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
