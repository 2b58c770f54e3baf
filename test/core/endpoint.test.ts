import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  type Endpoint,
  MAX_ENDPOINT_LENGTH,
  MAX_UNIX_PATH_BYTES,
  formatEndpoint,
  parseEndpoint,
} from "../../src/core/endpoint.ts";
import { StoaError } from "../../src/core/errors.ts";

function parseError(input: string): StoaError {
  try {
    parseEndpoint(input);
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return err as StoaError;
  }
  throw new Error(`expected ${JSON.stringify(input)} to be rejected`);
}

// [input, parsed, canonical form]
const accepted: [string, Endpoint, string][] = [
  ["unix:/run/stoa/gw.sock", { kind: "unix", path: "/run/stoa/gw.sock" }, "unix:/run/stoa/gw.sock"],
  ["UNIX:/tmp/with space.sock", { kind: "unix", path: "/tmp/with space.sock" }, "unix:/tmp/with space.sock"],
  ["unix:/tmp/ünï.sock", { kind: "unix", path: "/tmp/ünï.sock" }, "unix:/tmp/ünï.sock"],
  ["tcp:localhost:8081", { kind: "tcp", host: "localhost", port: 8081 }, "tcp:localhost:8081"],
  ["tcp:Gateway.Example.COM:443", { kind: "tcp", host: "gateway.example.com", port: 443 }, "tcp:gateway.example.com:443"],
  ["tcp:my_host-1:1", { kind: "tcp", host: "my_host-1", port: 1 }, "tcp:my_host-1:1"],
  ["tcp:127.0.0.1:0", { kind: "tcp", host: "127.0.0.1", port: 0 }, "tcp:127.0.0.1:0"],
  ["tcp:0.0.0.0:65535", { kind: "tcp", host: "0.0.0.0", port: 65535 }, "tcp:0.0.0.0:65535"],
  ["tcp:[::1]:8082", { kind: "tcp", host: "::1", port: 8082 }, "tcp:[::1]:8082"],
  ["tcp:[::]:80", { kind: "tcp", host: "::", port: 80 }, "tcp:[::]:80"],
  ["tcp:[2001:DB8:0:0::1]:80", { kind: "tcp", host: "2001:db8::1", port: 80 }, "tcp:[2001:db8::1]:80"],
  ["tcp:[fe80::1%eth0]:9000", { kind: "tcp", host: "fe80::1%eth0", port: 9000 }, "tcp:[fe80::1%eth0]:9000"],
  ["tcp:[::ffff:192.0.2.1]:1", { kind: "tcp", host: "::ffff:c000:201", port: 1 }, "tcp:[::ffff:c000:201]:1"],
  // Bun 1.4's URL parser refuses this one (four groups, "::" and an IPv4 tail); RFC 4291 and node:net take it.
  ["tcp:[1::2:3:4:1.2.3.4]:1", { kind: "tcp", host: "1::2:3:4:102:304", port: 1 }, "tcp:[1::2:3:4:102:304]:1"],
  [
    "ws://meta.example/v1/register",
    { kind: "ws", url: "ws://meta.example/v1/register", secure: false, host: "meta.example", port: 80, path: "/v1/register" },
    "ws://meta.example/v1/register",
  ],
  [
    "wss://Meta.Example:443/circles/a?token=x&y=1",
    {
      kind: "ws",
      url: "wss://meta.example/circles/a?token=x&y=1",
      secure: true,
      host: "meta.example",
      port: 443,
      path: "/circles/a?token=x&y=1",
    },
    "wss://meta.example/circles/a?token=x&y=1",
  ],
  ["ws://h", { kind: "ws", url: "ws://h/", secure: false, host: "h", port: 80, path: "/" }, "ws://h/"],
  ["ws://h:80/p?", { kind: "ws", url: "ws://h/p", secure: false, host: "h", port: 80, path: "/p" }, "ws://h/p"],
  ["wss://h:80/", { kind: "ws", url: "wss://h:80/", secure: true, host: "h", port: 80, path: "/" }, "wss://h:80/"],
  [
    "ws://[::1]:8083/x",
    { kind: "ws", url: "ws://[::1]:8083/x", secure: false, host: "::1", port: 8083, path: "/x" },
    "ws://[::1]:8083/x",
  ],
  ["WS://127.0.0.1:9/", { kind: "ws", url: "ws://127.0.0.1:9/", secure: false, host: "127.0.0.1", port: 9, path: "/" }, "ws://127.0.0.1:9/"],
  ["ws://h/a%20b", { kind: "ws", url: "ws://h/a%20b", secure: false, host: "h", port: 80, path: "/a%20b" }, "ws://h/a%20b"],
];

// [input, part of the reason]
const rejected: [string, string][] = [
  ["", "no scheme"],
  ["localhost:8081", "unknown scheme"],
  ["http://h/", "unknown scheme"],
  ["unix:", "empty path"],
  ["unix:relative/x.sock", "must be absolute"],
  ["unix:./x.sock", "must be absolute"],
  ["unix:/run/stoa/", "names a directory"],
  ["unix:/tmp/a\u0000b", "control character"],
  ["unix:/tmp/a\nb", "control character"],
  ["unix:/tmp/\ud800", "surrogate"],
  ["tcp:", "missing \":port\""],
  ["tcp:host", "missing \":port\""],
  ["tcp::80", "empty host"],
  ["tcp:host:", "port"],
  ["tcp:host:65536", "port"],
  ["tcp:host:-1", "port"],
  ["tcp:host:080", "port"],
  ["tcp:host:80x", "port"],
  ["tcp:host: 80", "port"],
  ["tcp:host:0x50", "port"],
  ["tcp:host:１２", "port"],
  ["tcp:::1:80", "must be in brackets"],
  ["tcp:fe80::1:80", "must be in brackets"],
  ["tcp:[::1:80", "missing \"]\""],
  ["tcp:[::1]80", "expected \":port\""],
  ["tcp:[::1]", "expected \":port\""],
  ["tcp:[]:80", "not a valid IPv6"],
  ["tcp:[1.2.3.4]:80", "not a valid IPv6"],
  ["tcp:[::g]:80", "not a valid IPv6"],
  ["tcp:[::1%]:80", "not a valid IPv6"],
  ["tcp:[::1%a/b]:80", "not a valid IPv6"],
  ["tcp:[::1:]:80", "not a valid IPv6"], // Bun 1.4's URL parser reads it as ::1
  ["tcp:256.1.1.1:80", "dotted-quad"],
  ["tcp:010.0.0.1:80", "dotted-quad"],
  ["tcp:127.1:80", "dotted-quad"],
  ["tcp:host.123:80", "dotted-quad"],
  ["tcp:a..b:80", "not a valid host name"],
  ["tcp:host.:80", "not a valid host name"],
  ["tcp:-host:80", "not a valid host name"],
  ["tcp:ho st:80", "not a valid host name"],
  ["tcp:h/x:80", "not a valid host name"],
  [`tcp:${"a".repeat(64)}:80`, "not a valid host name"],
  [`tcp:${"a.".repeat(130)}a:80`, "longer than 253"],
  ["ws://", "expected a host"],
  ["ws:h/x", "expected a host"],
  ["ws:///x", "expected a host"],
  ["ws://:80/", "not a valid URL"],
  ["ws://h:99999/", "not a valid URL"],
  ["ws://h:8x/", "not a valid URL"],
  ["ws://h/#frag", "#fragment"],
  ["ws://user:pw@h/", "credentials"],
  ["ws://h/a b", "spaces"],
  [" ws://h/", "unknown scheme"],
  ["ws://h\\x", "backslashes"],
  ["ws://a!b/", "not a valid host name"],
  ["wss://host./", "not a valid host name"],
];

describe("parseEndpoint and formatEndpoint: accepted forms", () => {
  for (const [input, parsed, canonical] of accepted) {
    test(`${JSON.stringify(input)} parses and formats as ${canonical}`, () => {
      const endpoint = parseEndpoint(input);
      expect(endpoint).toEqual(parsed);
      expect(formatEndpoint(endpoint)).toBe(canonical);
      expect(parseEndpoint(formatEndpoint(endpoint))).toEqual(endpoint);
      expect(formatEndpoint(parseEndpoint(canonical))).toBe(canonical);
    });
  }

  test("the ws url field is the canonical form", () => {
    for (const [input, , canonical] of accepted) {
      const endpoint = parseEndpoint(input);
      if (endpoint.kind === "ws") expect(endpoint.url).toBe(canonical);
    }
  });
});

describe("parseEndpoint: rejections", () => {
  for (const [input, reason] of rejected) {
    test(`rejects ${JSON.stringify(input)} (${reason})`, () => {
      const error = parseError(input);
      expect(error.code).toBe("endpoint");
      expect(error.message).toContain(reason);
    });
  }

  test("every error shows the accepted forms", () => {
    const message = parseError("nonsense").message;
    for (const form of ["unix:/absolute/path", "tcp:host:port", "tcp:[ipv6]:port", "ws://", "wss://"]) {
      expect(message).toContain(form);
    }
  });

  test("quotes the input safely and shortly", () => {
    const message = parseError(`unix:rel\u0000${"x".repeat(500)}`).message;
    expect(message).toContain("\\u0000");
    expect(message.length).toBeLessThan(400);
  });

  test(`rejects input longer than ${MAX_ENDPOINT_LENGTH} characters`, () => {
    const long = `ws://h/${"p".repeat(MAX_ENDPOINT_LENGTH)}`;
    expect(parseError(long).message).toContain(`longer than ${MAX_ENDPOINT_LENGTH}`);
    expect(parseEndpoint(long.slice(0, MAX_ENDPOINT_LENGTH)).kind).toBe("ws");
  });
});

describe("Unix socket path length", () => {
  test(`accepts ${MAX_UNIX_PATH_BYTES} bytes and rejects ${MAX_UNIX_PATH_BYTES + 1}, naming sun_path`, () => {
    const longest = `/${"s".repeat(MAX_UNIX_PATH_BYTES - 1)}`;
    expect(parseEndpoint(`unix:${longest}`)).toEqual({ kind: "unix", path: longest });
    const error = parseError(`unix:${longest}s`);
    expect(error.message).toContain("sun_path");
    expect(error.message).toContain(`${MAX_UNIX_PATH_BYTES + 1} bytes`);
  });

  test("counts UTF-8 bytes, not characters", () => {
    const path = `/${"é".repeat(54)}`; // 55 characters, 109 bytes
    expect(parseError(`unix:${path}`).message).toContain("109 bytes");
  });

  test("a path at the limit really binds and accepts a connection", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-endpoint-"));
    try {
      const path = join(dir, "s".repeat(MAX_UNIX_PATH_BYTES - dir.length - 1));
      const endpoint = parseEndpoint(`unix:${path}`);
      if (endpoint.kind !== "unix") throw new Error("expected a unix endpoint");
      const server = Bun.listen({ unix: endpoint.path, socket: { data() {} } });
      try {
        const client = await Bun.connect({ unix: endpoint.path, socket: { data() {} } });
        client.end();
      } finally {
        server.stop(true);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("formatEndpoint: values that parseEndpoint could not have produced", () => {
  const invalid: [string, Endpoint][] = [
    ["a port out of range", { kind: "tcp", host: "h", port: 70000 }],
    ["a fractional port", { kind: "tcp", host: "h", port: 1.5 }],
    ["an empty host", { kind: "tcp", host: "", port: 1 }],
    ["a relative unix path", { kind: "unix", path: "x.sock" }],
    ["a ws path without a leading slash", { kind: "ws", url: "", secure: false, host: "h", port: 80, path: "x" }],
    ["a ws host with a slash", { kind: "ws", url: "", secure: false, host: "h/x", port: 80, path: "/" }],
    ["a ws host with an @", { kind: "ws", url: "", secure: false, host: "u@h", port: 80, path: "/" }],
  ];
  for (const [name, endpoint] of invalid) {
    test(`throws for ${name}`, () => {
      expect(() => formatEndpoint(endpoint)).toThrow(StoaError);
    });
  }

  test("canonicalizes a hand-built endpoint", () => {
    expect(formatEndpoint({ kind: "tcp", host: "LOCALHOST", port: 1 })).toBe("tcp:localhost:1");
    expect(formatEndpoint({ kind: "ws", url: "", secure: true, host: "::1", port: 443, path: "/" })).toBe("wss://[::1]/");
  });
});
