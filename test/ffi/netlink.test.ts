/**
 * The binding against this host's kernel, read-only (dumps and name lookups need no privilege
 * and change nothing), and the mapping of kernel errors to messages. Changes are tested inside
 * network namespaces: test/e2e/addr.test.ts.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { StoaError } from "../../src/core/errors.ts";
import { Errno } from "../../src/ffi/libc.ts";
import { AF_INET6, RTN_LOCAL, RT_TABLE_LOCAL } from "../../src/ffi/netlink-codec.ts";
import {
  NEEDS_NET_ADMIN,
  NetlinkError,
  closeNetlink,
  interfaceIndex,
  interfaceName,
  kernelError,
  listAddresses,
  listRoutes,
  validInterfaceName,
} from "../../src/ffi/netlink.ts";
import { formatIPv6 } from "../../src/addr/ipv6.ts";

const ipv6 = existsSync("/proc/net/if_inet6") && readFileSync("/proc/net/if_inet6", "utf8").length > 0;
if (!ipv6) console.warn("skipping the kernel dump tests: IPv6 is disabled on this host");

describe("kernel errors, one line each with what to do", () => {
  const address = { object: "address fd00::5/128", dev: "eth0" };
  const cases: [number, StoaError["code"], string][] = [
    [Errno.EPERM, "permission", `cannot add address fd00::5/128: ${NEEDS_NET_ADMIN}`],
    [Errno.EEXIST, "exists", "cannot add address fd00::5/128 on eth0: it already exists"],
    [Errno.ENODEV, "not_found", "no such interface: eth0 (see 'ip link')"],
    [Errno.EADDRNOTAVAIL, "not_found", "address fd00::5/128 is not on eth0 (see 'stoa addr ls')"],
    [Errno.ESRCH, "not_found", "address fd00::5/128 does not exist (see 'stoa addr ls')"],
    [Errno.EACCES, "permission", "cannot add address fd00::5/128 on eth0: IPv6 is disabled there (sysctl -w net.ipv6.conf.eth0.disable_ipv6=0)"],
    [Errno.EINVAL, "io", "cannot add address fd00::5/128 on eth0: the kernel rejected the request as invalid (kernel: bad prefix)"],
    [Errno.ENOBUFS, "io", "cannot add address fd00::5/128 on eth0: No buffer space available (kernel: bad prefix)"],
  ];
  for (const [errno, code, message] of cases) {
    test(`errno ${errno} → ${code}`, () => {
      const err = kernelError(errno, "bad prefix", "add", address);
      expect(err).toBeInstanceOf(NetlinkError);
      expect(err).toBeInstanceOf(StoaError);
      expect(err.errno).toBe(errno);
      expect(err.code).toBe(code);
      expect(err.message).toBe(message);
      expect(err.message).not.toContain("\n");
    });
  }
});

describe("interface names", () => {
  test("the kernel's rules: 1–15 bytes, no '/', ':' or white space, not . or ..", () => {
    for (const ok of ["lo", "eth0", "to-b", "a".repeat(15), "veth@1"]) expect({ ok, valid: validInterfaceName(ok) }).toEqual({ ok, valid: true });
    for (const bad of ["", "a".repeat(16), "a/b", "a:1", "a b", ".", "..", "tab\t"]) expect({ bad, valid: validInterfaceName(bad) }).toEqual({ bad, valid: false });
  });

  test("lo resolves to its index and back; an unknown name is not_found, an invalid one a usage error", () => {
    const lo = interfaceIndex("lo");
    expect(lo).toBeGreaterThan(0);
    expect(interfaceName(lo)).toBe("lo");
    expect(interfaceName(0x7fff_fff0)).toBeUndefined();
    expect(() => interfaceIndex("nosuch0")).toThrow(new StoaError("not_found", "no such interface: nosuch0 (see 'ip link')"));
    expect(() => interfaceIndex("x".repeat(16))).toThrow(StoaError);
    try {
      interfaceIndex("a/b");
    } catch (err) {
      expect((err as StoaError).code).toBe("usage");
    }
  });
});

describe.if(ipv6)("dumps from this host's kernel (read-only)", () => {
  test("RTM_GETADDR lists ::1 on lo, and the same list twice in a row on one socket", () => {
    const first = listAddresses(AF_INET6);
    const loopback = first.find((a) => formatIPv6(a.address) === "::1");
    expect(loopback?.index).toBe(interfaceIndex("lo"));
    expect(loopback?.prefixlen).toBe(128);
    const second = listAddresses(AF_INET6);
    expect(second.map((a) => formatIPv6(a.address)).sort()).toEqual(first.map((a) => formatIPv6(a.address)).sort());
  });

  test("RTM_GETROUTE lists the kernel's local route for ::1; a closed socket is reopened on the next request", () => {
    const local = (routes: ReturnType<typeof listRoutes>) =>
      routes.find((r) => r.type === RTN_LOCAL && r.table === RT_TABLE_LOCAL && r.dst !== undefined && formatIPv6(r.dst) === "::1");
    expect(local(listRoutes(AF_INET6))?.dstLen).toBe(128);
    closeNetlink();
    expect(local(listRoutes(AF_INET6))).toBeDefined();
  });
});
