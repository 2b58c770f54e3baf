import { describe, expect, test } from "bun:test";
import { advertisedAddress } from "../../src/core/hostaddr.ts";

const iface = (address: string, family: "IPv4" | "IPv6", internal = false) => ({ address, family, internal });

describe("the address a service advertises", () => {
  test("a specific listen address wins", () => {
    expect(advertisedAddress(["fd00::1"], {})).toBe("fd00::1");
    expect(advertisedAddress(["::", "[fd00::2]"], {})).toBe("fd00::2");
  });

  test("on a wildcard, global IPv6 before unique-local, IPv4, loopback; never link-local", () => {
    const ifaces = {
      lo: [iface("127.0.0.1", "IPv4", true), iface("::1", "IPv6", true)],
      eth0: [iface("fe80::1", "IPv6"), iface("10.0.0.5", "IPv4"), iface("fd12::5", "IPv6"), iface("2001:db8::5", "IPv6")],
    };
    expect(advertisedAddress(["::"], ifaces)).toBe("2001:db8::5");
    expect(advertisedAddress(["::"], { ...ifaces, eth0: ifaces.eth0.filter((a) => a.address !== "2001:db8::5") })).toBe("fd12::5");
    expect(advertisedAddress(["0.0.0.0"], { lo: ifaces.lo, eth0: [iface("fe80::1", "IPv6"), iface("10.0.0.5", "IPv4")] })).toBe("10.0.0.5");
    expect(advertisedAddress(["::"], { lo: ifaces.lo, eth0: [iface("fe80::1", "IPv6")] })).toBe("::1");
  });
});
