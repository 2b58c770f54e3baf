import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { readSmallFile } from "../../src/core/smallfile.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-smallfile-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const opts = { maxBytes: 16, what: "ACL file", fix: "check the --acl path" };

function refusal(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("expected a StoaError");
}

describe("readSmallFile", () => {
  test("returns the text of a file up to the limit", () => {
    const path = join(dir, "ok.json");
    writeFileSync(path, "x".repeat(16));
    expect(readSmallFile(path, opts)).toBe("x".repeat(16));
  });

  test("refuses a file over the limit, naming it in the caller's words", () => {
    const path = join(dir, "big.json");
    writeFileSync(path, "x".repeat(17));
    const err = refusal(() => readSmallFile(path, opts));
    expect(err.code).toBe("config");
    expect(err.message).toBe(`ACL file ${path} is 17 bytes, over the 16-byte limit; is it the right file?`);
  });

  test("a missing file is an error that says what to do, or undefined when optional", () => {
    const path = join(dir, "nope.json");
    const err = refusal(() => readSmallFile(path, opts));
    expect(err.code).toBe("config");
    expect(err.message).toBe(`ACL file ${path} does not exist; check the --acl path`);
    expect(readSmallFile(path, { ...opts, optional: true })).toBeUndefined();
  });

  test("an unreadable path says why with its errno code", () => {
    const path = join(dir, "a-dir");
    mkdirSync(path);
    const err = refusal(() => readSmallFile(path, { ...opts, maxBytes: 1 << 20, optional: true }));
    expect(err.code).toBe("config");
    expect(err.message).toBe(`ACL file ${path} cannot be read (EISDIR); check the --acl path`);
  });

  test("a secret file group or others may read is refused with the chmod that fixes it", () => {
    const path = join(dir, "token");
    writeFileSync(path, "secret\n");
    chmodSync(path, 0o644);
    const err = refusal(() => readSmallFile(path, { ...opts, what: "token file", secret: true }));
    expect(err.code).toBe("permission");
    expect(err.message).toBe(`token file ${path} is readable by others (mode 644); chmod 600 ${path}`);
    chmodSync(path, 0o600);
    expect(readSmallFile(path, { ...opts, secret: true })).toBe("secret\n");
  });
});
