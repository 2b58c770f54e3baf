import { describe, expect, test } from "bun:test";
import { MAX_UNIX_PATH_BYTES } from "../../src/core/endpoint.ts";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { longestServablePubId } from "../../src/gateway/startup.ts";

describe("how long a pub_id the run dir leaves room for", () => {
  test("64 in a short run dir", () => {
    expect(longestServablePubId("/run/stoa")).toBe(64);
  });

  test("in a deep run dir, exactly the longest pub_id whose service.sock path still fits", () => {
    const runDir = `/tmp/${"d".repeat(50)}`;
    const n = longestServablePubId(runDir);
    expect(n).toBeLessThan(64);
    expect(Buffer.byteLength(publisherSocketPath(runDir, "a".repeat(n), "service"))).toBe(MAX_UNIX_PATH_BYTES);
    expect(Buffer.byteLength(publisherSocketPath(runDir, "a".repeat(n + 1), "service"))).toBe(MAX_UNIX_PATH_BYTES + 1);
  });

  test("0 when not even a one-character pub_id fits", () => {
    expect(longestServablePubId(`/${"d".repeat(100)}`)).toBe(0);
  });
});
