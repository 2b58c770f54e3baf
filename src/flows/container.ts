/**
 * Lightweight containers for `stoa flows container create|delete` and the seed's
 * `POST /api/containers/create`: a network namespace `stoa-<name>` whose `eth0` is one end of a
 * veth pair; the other end, `sf<8 hex of the name>` (a name fits IFNAMSIZ whatever the
 * container's), is a port of the bridge. Real enough to carry traffic (a process runs in it with
 * `ip netns exec stoa-<name> …`); LXC is out of scope. Made with iproute2's `ip` (a missing `ip`
 * says to install iproute2); needs CAP_NET_ADMIN.
 */
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { StoaError } from "../core/errors.ts";
import type { OvsdbClient } from "./ovsdb.ts";
import { interfaceIndex } from "../ffi/netlink.ts";

/** The namespace of container `name`. */
export function netnsOf(name: string): string {
  return `stoa-${name}`;
}

/** The host end of container `name`'s veth: "sf" + 8 hex digits of the name's SHA-256. */
export function vethOf(name: string): string {
  return `sf${createHash("sha256").update(name).digest("hex").slice(0, 8)}`;
}

async function ip(args: string[], what: string): Promise<void> {
  let proc: ReturnType<typeof Bun.spawn>;
  try {
    proc = Bun.spawn(["ip", ...args], { stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  } catch {
    throw new StoaError("not_found", "`ip` is not on PATH: install iproute2 (apt install iproute2)");
  }
  const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr as ReadableStream).text()]);
  if (code === 0) return;
  const text = stderr.trim();
  if (/Operation not permitted|Permission denied/.test(text)) throw new StoaError("permission", `${what}: ${text} (containers need root or CAP_NET_ADMIN)`);
  throw new StoaError("io", `${what}: ip ${args.join(" ")}: ${text || `exit ${code}`}`);
}

/** Whether interface `name` exists in this process's network namespace (whatever /sys shows). */
export function interfaceExists(name: string): boolean {
  try {
    interfaceIndex(name);
    return true;
  } catch {
    return false;
  }
}

/** Whether container `name`'s namespace exists. */
export function containerExists(name: string): boolean {
  return existsSync(`/run/netns/${netnsOf(name)}`);
}

/**
 * Creates container `name` with address `cidr` (e.g. 10.0.0.7/24) and puts its veth on
 * `bridge`. Undone on failure: nothing half-made stays. Answers the host end's name.
 */
export async function createContainer(o: { name: string; bridge: string; cidr: string; ovsdb: OvsdbClient }): Promise<string> {
  const netns = netnsOf(o.name);
  const veth = vethOf(o.name);
  if (containerExists(o.name)) throw new StoaError("exists", `container ${o.name} exists (namespace ${netns}): delete it first with stoa flows container delete ${o.name}`);
  if (interfaceExists(veth)) throw new StoaError("exists", `interface ${veth} (container ${o.name}'s veth) exists already: remove it with ip link del ${veth}`);
  const inner = `${veth}c`;
  await ip(["netns", "add", netns], `container ${o.name}`);
  try {
    await ip(["link", "add", veth, "type", "veth", "peer", "name", inner], `container ${o.name}`);
    await ip(["link", "set", inner, "netns", netns], `container ${o.name}`);
    await ip(["-n", netns, "link", "set", inner, "name", "eth0"], `container ${o.name}`);
    await ip(["-n", netns, "addr", "add", o.cidr, "dev", "eth0"], `container ${o.name}`);
    await ip(["-n", netns, "link", "set", "eth0", "up"], `container ${o.name}`);
    await ip(["-n", netns, "link", "set", "lo", "up"], `container ${o.name}`);
    await ip(["link", "set", veth, "up"], `container ${o.name}`);
    await o.ovsdb.ensurePort(o.bridge, veth);
  } catch (err) {
    await deleteContainer({ name: o.name, bridge: o.bridge, ovsdb: o.ovsdb }).catch(() => undefined);
    throw err;
  }
  return veth;
}

/** Removes container `name`: its port from `bridge`, its namespace (and so its veth pair). Idempotent. */
export async function deleteContainer(o: { name: string; bridge: string; ovsdb: OvsdbClient }): Promise<void> {
  const veth = vethOf(o.name);
  await o.ovsdb.removePort(o.bridge, veth);
  if (interfaceExists(veth)) await ip(["link", "del", veth], `container ${o.name}`);
  if (containerExists(o.name)) await ip(["netns", "del", netnsOf(o.name)], `container ${o.name}`);
}

/** The first address of `subnet` (a.b.c.d/n) not in `taken`, skipping the network, .1 (a gateway's) and broadcast. */
export function allocateAddress(subnet: string, taken: ReadonlySet<string>): string {
  const [base, bits] = subnet.split("/");
  const prefix = Number(bits);
  const toInt = (a: string): number => a.split(".").reduce((n, part) => n * 256 + Number(part), 0);
  const toText = (n: number): string => [24, 16, 8, 0].map((shift) => Math.floor(n / 2 ** shift) % 256).join(".");
  const size = 2 ** (32 - prefix);
  const network = Math.floor(toInt(base ?? "") / size) * size;
  for (let n = network + 2; n < network + size - 1; n++) {
    const address = toText(n);
    if (!taken.has(address)) return `${address}/${prefix}`;
  }
  throw new StoaError("exists", `no free address left in ${subnet}: delete a container or give the bridge a larger subnet`);
}
