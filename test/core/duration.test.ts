import { describe, expect, test } from "bun:test";
import { Duration, parseDuration } from "../../src/core/duration.ts";
import { StoaError } from "../../src/core/errors.ts";

describe("durations", () => {
  test.each([
    ["250ms", 250],
    ["15s", 15_000],
    ["2m", 120_000],
    ["1h", 3_600_000],
    ["1m30s", 90_000],
    ["1.5s", 1500],
    ["500", 500],
    [" 3s ", 3000],
  ])("%p is %p ms", (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  test.each(["", "s", "5x", "5 s", "-1s", "1s-", "s5", "1e3s", "8d", "200h", "x".repeat(100)])("rejects %p with the accepted forms", (text) => {
    expect(() => parseDuration(text)).toThrow(StoaError);
    expect(() => parseDuration(text)).toThrow(/examples: 250ms, 15s/);
  });

  test("the zod schema turns a duration into ms and reports junk as an issue", () => {
    expect(Duration.parse("2s")).toBe(2000);
    const bad = Duration.safeParse("soon");
    expect(bad.success).toBe(false);
  });
});
