import { describe, expect, test } from "bun:test";
import { createLogger } from "../../src/core/log.ts";
import { StoaError } from "../../src/core/errors.ts";
import { waitFor } from "../../src/core/wait.ts";

function sink() {
  const lines: string[] = [];
  return { lines, log: createLogger({ level: "warn", stream: { write: (l: string) => lines.push(l) } }) };
}
const notYet = (err: unknown) => err instanceof StoaError && err.code === "closed";

describe("waitFor", () => {
  test("tries again while the error is retryable and returns the first success, silently when quick", async () => {
    const { lines, log } = sink();
    let tries = 0;
    const got = await waitFor(
      async () => {
        if (++tries < 3) throw new StoaError("closed", "not there yet");
        return "up";
      },
      { what: "the thing", waitMs: 5_000, retryable: notYet, log },
    );
    expect([got, tries, lines]).toEqual(["up", 3, []]);
  });

  test("throws an error that is not retryable at once", async () => {
    const { log } = sink();
    let tries = 0;
    const attempt = waitFor(
      async () => {
        tries++;
        throw new StoaError("usage", "bad name");
      },
      { what: "the thing", waitMs: 5_000, retryable: notYet, log },
    );
    expect(attempt).rejects.toThrow("bad name");
    await attempt.catch(() => {});
    expect(tries).toBe(1);
  });

  test("after waitMs throws the last error unchanged, having said once what it waited for", async () => {
    const { lines, log } = sink();
    let tries = 0;
    const attempt = waitFor(
      async () => {
        throw new StoaError("closed", `no gateway (try ${++tries})`);
      },
      { what: "the gateway", waitMs: 1_300, retryable: notYet, log },
    );
    const err = await attempt.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).message).toBe(`no gateway (try ${tries})`);
    expect(tries).toBeGreaterThan(2);
    expect(lines.filter((l) => l.includes("waiting for the gateway"))).toHaveLength(1);
  });

  test("waitMs 0 is one attempt", async () => {
    const { log } = sink();
    let tries = 0;
    await waitFor(
      async () => {
        tries++;
        throw new StoaError("closed", "no");
      },
      { what: "x", waitMs: 0, retryable: notYet, log },
    ).catch(() => {});
    expect(tries).toBe(1);
  });
});
