import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { assignActivatedSockets } from "../../src/gateway/activation.ts";
import { boundAddress } from "../../src/ffi/sockets.ts";

// Real listening sockets stand in for systemd's; their fds are found by the port they are on.
const listeners = [0, 1, 2, 3].map(() => Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } }));
afterAll(() => {
  for (const l of listeners) l.stop(true);
});

function fdOf(port: number): number {
  for (const name of readdirSync("/proc/self/fd")) {
    const fd = Number(name);
    try {
      if (boundAddress(fd).port === port) return fd;
    } catch {
      // not an IP socket
    }
  }
  throw new Error(`no fd on port ${port}`);
}

const [a, b, c, d] = listeners.map((l) => ({ port: l.port, fd: fdOf(l.port) })) as [
  { port: number; fd: number },
  { port: number; fd: number },
  { port: number; fd: number },
  { port: number; fd: number },
];

describe("assigning systemd's sockets to the gateway's ports", () => {
  test("three unnamed sockets are service, string, ping in their order", () => {
    const got = assignActivatedSockets([a, b, c].map((s) => ({ fd: s.fd, name: "stoa-gateway.socket" })));
    expect(got).toEqual({
      fds: { service: [a.fd], string: [b.fd], ping: [c.fd] },
      ports: { service: a.port, string: b.port, ping: c.port },
      listen: ["127.0.0.1"],
    });
  });

  test("named sockets go to their kind, whatever the order", () => {
    const got = assignActivatedSockets([
      { fd: c.fd, name: "ping" },
      { fd: a.fd, name: "service" },
      { fd: b.fd, name: "string" },
    ]);
    expect(got.fds).toEqual({ service: [a.fd], string: [b.fd], ping: [c.fd] });
    expect(got.ports).toEqual({ service: a.port, string: b.port, ping: c.port });
  });

  test("refuses what it cannot map, saying what it got", () => {
    expect(() => assignActivatedSockets([a, b].map((s) => ({ fd: s.fd, name: "x" })))).toThrow(/2 socket\(s\) named x,x/);
    expect(() => assignActivatedSockets([{ fd: a.fd, name: "service" }, { fd: b.fd, name: "string" }])).toThrow(/no socket for the ping port/);
    expect(() =>
      assignActivatedSockets([
        { fd: a.fd, name: "service" },
        { fd: d.fd, name: "service" },
        { fd: b.fd, name: "string" },
        { fd: c.fd, name: "ping" },
      ]),
    ).toThrow(/service sockets systemd passed are on different ports/);
    // stdin is not an IP socket.
    expect(() => assignActivatedSockets([0, b.fd, c.fd].map((fd) => ({ fd, name: "u" })))).toThrow(/inherited socket 0 for the service port/);
  });
});
