import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { parseIpcSpec, parseTunnelSpec } from "../../src/hotlink/specs.ts";

describe("--tunnel CHANNEL=HOST:PORT[@PEER]", () => {
  test("parses an IPv4 host, a port and a peer", () => {
    expect(parseTunnelSpec("alice/mpc/run1/0_to_1=127.0.0.1:10001@bob")).toEqual({
      channel: "alice/mpc/run1/0_to_1",
      host: "127.0.0.1",
      port: 10001,
      peer: "bob",
    });
  });

  test("a bracketed IPv6 host, and a peer whose name holds an @", () => {
    expect(parseTunnelSpec("a/b=[::1]:9000@bob@example.org")).toEqual({ channel: "a/b", host: "::1", port: 9000, peer: "bob@example.org" });
  });

  test("the peer is optional", () => {
    expect(parseTunnelSpec("a/b=localhost:1")).toEqual({ channel: "a/b", host: "localhost", port: 1 });
  });

  for (const bad of ["", "a/b", "=h:1", "a/../b=h:1", "a/b=h", "a/b=h:", "a/b=h:70000", "a/b=h:x", "a/b=[::1:9", "a/b=[::1]9", "a/b=h:1@", "a/b=h:1@Bob/x", "a//b=h:1"]) {
    test(`refuses ${JSON.stringify(bad)} with a usage error`, () => {
      let err: unknown;
      try {
        parseTunnelSpec(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(StoaError);
      expect((err as StoaError).code).toBe("usage");
      expect((err as StoaError).message).toContain("--tunnel");
    });
  }
});

describe("--ipc CHANNEL=unix:PATH", () => {
  test("parses the channel and the path", () => {
    expect(parseIpcSpec("alice/bench=unix:/tmp/a.sock")).toEqual({ channel: "alice/bench", path: "/tmp/a.sock" });
  });

  for (const bad of ["alice/bench", "alice/bench=/tmp/a.sock", "alice/bench=unix:", `a/b=unix:/${"x".repeat(120)}`, "a/./b=unix:/tmp/x"]) {
    test(`refuses ${JSON.stringify(bad.slice(0, 40))}`, () => {
      expect(() => parseIpcSpec(bad)).toThrow(StoaError);
    });
  }
});
