/**
 * The supervisor's sockets on real interfaces: two network namespaces joined by a veth pair,
 * the AF_PACKET socket capturing in one, the output socket sending from the other.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { canUseNetns, createNet, type Net } from "../helpers/netns.ts";
import { ipv4ToNumber } from "../../src/supervisor/packet-wire.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "supervisor-sockets.ts");
const can = canUseNetns();
if (!can.ok) console.log(`skipping the supervisor socket tests: ${can.reason}`);

describe.skipIf(!can.ok)("supervisor sockets", () => {
  let net: Net;
  beforeAll(async () => {
    net = await createNet({ hosts: ["relay", "gen"], links: [["relay", "gen"]], ipv4: true, ipv6: false });
  });
  afterAll(async () => {
    await net?.destroy();
  });

  test("the output socket sends out of its interface to host:port; the AF_PACKET socket on the other end reads each datagram, parsed", async () => {
    const capture = await net.startReady("relay", [process.execPath, FIXTURE, "capture", net.iface("relay", "gen"), "3", "5000"]);
    const target = net.addr("relay", "gen", 4);
    const sent = await net.exec("gen", [process.execPath, FIXTURE, "send", net.iface("gen", "relay"), target, "5000", "one", "two", "three"]);
    expect(sent.stderr).toBe("");
    expect(sent.stdout.trim()).toBe("sent");
    const out = await capture.done;
    const lines = out.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { dst: number; dstPort: number; payload: string });
    expect(lines.map((l) => l.payload)).toEqual(["one", "two", "three"]);
    for (const l of lines) expect(l).toMatchObject({ dst: ipv4ToNumber(target), dstPort: 5000 });
  }, 30_000);

  test("buffers: 4 MiB of receive queue on the AF_PACKET socket and of send queue on an output socket (FORCE as root); with CAP_NET_RAW alone the kernel's capped size, not an error", async () => {
    const iface = net.iface("relay", "gen");
    const target = net.addr("gen", "relay", 4);
    const root = await net.exec("relay", [process.execPath, FIXTURE, "buffers", iface, target]);
    expect(root.stderr).toBe("");
    expect(JSON.parse(root.stdout)).toEqual({ receive: 8 * 1024 * 1024, send: 8 * 1024 * 1024 }); // twice 4 MiB, as the kernel reports
    const raw = await net.exec("relay", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw", process.execPath, FIXTURE, "buffers", iface, target]);
    expect(raw.stderr).toBe("");
    // SO_RCVBUF/SO_SNDBUF: the kernel takes min(asked, net.core.[rw]mem_max) and reports twice that.
    const max = (name: string) => Number(readFileSync(`/proc/sys/net/core/${name}`, "utf8"));
    const fourMiB = 4 * 1024 * 1024;
    expect(JSON.parse(raw.stdout)).toEqual({ receive: 2 * Math.min(fourMiB, max("rmem_max")), send: 2 * Math.min(fourMiB, max("wmem_max")) });
  }, 30_000);

  test("clear errors: no such interface; an AF_PACKET socket without CAP_NET_RAW is a permission error", async () => {
    const missing = await net.exec("relay", [process.execPath, FIXTURE, "capture", "nosuch0", "1"]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain("nosuch0");
    const unprivileged = await net.exec("relay", ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", process.execPath, FIXTURE, "capture", net.iface("relay", "gen"), "1"]);
    expect(unprivileged.code).not.toBe(0);
    expect(unprivileged.stderr).toContain("AF_PACKET socket");
    expect(unprivileged.stderr).toMatch(/CAP_NET_RAW/);
  }, 30_000);
});
