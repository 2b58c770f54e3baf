import { afterEach, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseState } from "../../src/flows/model.ts";
import { PEER_TTL_MS, Registry } from "../../src/flows/registry.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const file = () =>
  parseState({ node: "n1", bridges: [{ name: "br0" }], containers: [{ container_id: "f1", veth: "vf1", bridge: "br0", ipv4_address: "10.0.0.1/24", services: [{ name: "web", protocol: "tcp", port: 80 }] }] }, "test");
const container = (id: string, over: Record<string, unknown> = {}) => ({ container_id: id, veth: `v${id}`, bridge: "br0", ipv4_address: "10.0.0.9/24", services: [{ name: `s${id}`, protocol: "tcp" as const, port: 1, exposed: true }], ...over });
function open(): { registry: Registry; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), "stoa-flows-registry-"));
  dirs.push(dir);
  return { registry: new Registry(file(), dir), dir };
}

describe("the flows registry", () => {
  test("registrations add to the state file's containers and survive a restart", () => {
    const { registry, dir } = open();
    registry.register(container("r1"));
    expect(registry.state.containers.map((c) => c.container_id)).toEqual(["f1", "r1"]);
    registry.close();
    const again = new Registry(file(), dir);
    expect(again.state.containers.map((c) => c.container_id)).toEqual(["f1", "r1"]);
    expect(again.unregister("r1")).toBe(true);
    expect(again.unregister("r1")).toBe(false);
    again.close();
  });

  test("a registration that clashes is refused with the reason and not stored", () => {
    const { registry } = open();
    expect(() => registry.register(container("f1"))).toThrow("container f1 is in the state file: change it there");
    expect(() => registry.register(container("r2", { veth: "vf1" }))).toThrow(/veth vf1 is also container f1's/);
    expect(() => registry.register(container("r3", { ipv4_address: "10.0.0.1/24" }))).toThrow(/address 10\.0\.0\.1 on br0/);
    expect(() => registry.register(container("r4", { services: [{ name: "web", protocol: "tcp", port: 8080, exposed: true }] }))).toThrow(/service web is also offered by container f1/);
    expect(() => registry.register(container("r5", { bridge: "nope" }))).toThrow(/bridge nope, which is not in "bridges"/);
    expect(() => registry.unregister("f1")).toThrow(/in the state file/);
    expect(registry.state.containers.length).toBe(1);
    registry.close();
  });

  test("peers: their services answer queries after this node's own; they expire; exposed only are told", () => {
    const { registry } = open();
    registry.register(container("r1", { services: [{ name: "hidden", protocol: "udp", port: 2, exposed: false }] }));
    expect(registry.localServices().map((s) => s.service)).toEqual(["web"]);
    const remote = { service: "web", container_id: "x", node: "n2", ip: "10.0.1.1", port: 80, protocol: "tcp" as const };
    expect(registry.setPeer("n2", [remote, { ...remote, service: "db" }], 1_000)).toBe(true);
    expect(registry.setPeer("n2", [remote, { ...remote, service: "db" }], 2_000)).toBe(false);
    expect(registry.find("web")?.node).toBe("n1");
    expect(registry.find("db")?.node).toBe("n2");
    expect(registry.find("hidden")?.node).toBe("n1");
    expect(registry.expirePeers(2_000 + PEER_TTL_MS)).toBe(false);
    expect(registry.expirePeers(2_001 + PEER_TTL_MS)).toBe(true);
    expect(registry.find("db")).toBeUndefined();
    registry.setPeer("n3", [{ ...remote, node: "n3", service: "q" }]);
    expect(registry.dropPeer("n3")).toBe(true);
    expect(registry.remoteServices()).toEqual([]);
    registry.close();
  });
});
