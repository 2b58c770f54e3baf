import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { resolveConfig, MAX_CONFIG_FILE_BYTES } from "../../src/core/config.ts";
import { StoaError } from "../../src/core/errors.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileCount = 0;
function file(content: unknown): string {
  const path = join(dir, `config-${++fileCount}.json`);
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content));
  return path;
}

const Schema = z.object({
  runDir: z.string().default("/run/stoa"),
  port: z.number().int().min(1).max(65535).default(8081),
  verbose: z.boolean().default(false),
  name: z.string().optional(),
  peers: z.array(z.number().int()).optional(),
  "log-level": z.enum(["debug", "info", "warn", "error"]).default("info"),
});

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("config");
    return (err as StoaError).message;
  }
  throw new Error("expected a config error");
}

describe("precedence", () => {
  test("uses schema defaults when no source sets a key", () => {
    expect(resolveConfig(Schema, { env: {} })).toEqual({
      runDir: "/run/stoa",
      port: 8081,
      verbose: false,
      "log-level": "info",
    });
  });

  test("a flag beats the environment, which beats the file", () => {
    const path = file({ port: 1001, runDir: "/from/file", name: "file" });
    const cfg = resolveConfig(Schema, {
      file: path,
      env: { STOA_PORT: "1002", STOA_RUN_DIR: "/from/env" },
      flags: { port: 1003 },
    });
    expect(cfg.port).toBe(1003);
    expect(cfg.runDir).toBe("/from/env");
    expect(cfg.name).toBe("file");
  });

  test("maps camelCase, snake_case and kebab-case keys to one SCREAMING_SNAKE variable", () => {
    const cfg = resolveConfig(Schema, {
      env: { STOA_LOG_LEVEL: "warn" },
      flags: { "run-dir": "/flag" },
      file: file({ run_dir: "/file" }),
    });
    expect(cfg["log-level"]).toBe("warn");
    expect(cfg.runDir).toBe("/flag");
    expect(resolveConfig(Schema, { env: {}, file: file({ "log_level": "debug" }) })["log-level"]).toBe("debug");
  });

  test("honours another prefix and ignores unrelated variables and flags", () => {
    const cfg = resolveConfig(Schema, {
      prefix: "TEST_",
      env: { TEST_PORT: "7000", STOA_PORT: "1", TEST_UNKNOWN: "x" },
      flags: { json: true, help: false },
    });
    expect(cfg.port).toBe(7000);
  });

  test("treats an empty variable as unset", () => {
    expect(resolveConfig(Schema, { env: { STOA_PORT: "", STOA_NAME: "" } })).toMatchObject({ port: 8081 });
  });

  test("reads process.env when no env is given", () => {
    process.env.STOA_CONFIG_TEST_ONLY = "42";
    try {
      const cfg = resolveConfig(z.object({ configTestOnly: z.number() }));
      expect(cfg.configTestOnly).toBe(42);
    } finally {
      delete process.env.STOA_CONFIG_TEST_ONLY;
    }
  });
});

describe("coercion of strings from the environment and flags", () => {
  test.each([
    ["1", true],
    ["true", true],
    ["YES", true],
    ["on", true],
    ["0", false],
    ["False", false],
    ["no", false],
    ["off", false],
  ])("reads boolean %p as %p", (raw, expected) => {
    expect(resolveConfig(Schema, { env: { STOA_VERBOSE: raw } }).verbose).toBe(expected);
  });

  test("reads decimal numbers, with optional sign, fraction and exponent", () => {
    const S = z.object({ n: z.number() });
    expect(resolveConfig(S, { env: { STOA_N: " 8080 " } }).n).toBe(8080);
    expect(resolveConfig(S, { env: { STOA_N: "-1.5e3" } }).n).toBe(-1500);
    expect(resolveConfig(S, { env: { STOA_N: ".5" } }).n).toBe(0.5);
  });

  test("looks through optional, default, nullable and transforms to find the type", () => {
    const S = z.object({
      a: z.number().optional(),
      b: z.boolean().nullable().default(null),
      c: z.number().transform((n) => n * 2),
      d: z.bigint().optional(),
    });
    expect(resolveConfig(S, { env: { STOA_A: "1", STOA_B: "yes", STOA_C: "21", STOA_D: "9007199254740993" } })).toEqual({
      a: 1,
      b: true,
      c: 42,
      d: 9007199254740993n,
    });
  });

  test("splits arrays on commas and coerces each item", () => {
    expect(resolveConfig(Schema, { env: { STOA_PEERS: "1, 2,3" } }).peers).toEqual([1, 2, 3]);
    expect(resolveConfig(Schema, { env: {}, flags: { peers: ["4", "5"] } }).peers).toEqual([4, 5]);
  });

  test("coerces string flag values like environment values", () => {
    const cfg = resolveConfig(Schema, { env: {}, flags: { port: "9000", verbose: "off" } });
    expect(cfg.port).toBe(9000);
    expect(cfg.verbose).toBe(false);
  });

  test("leaves strings alone for string keys", () => {
    expect(resolveConfig(Schema, { env: { STOA_NAME: " 0x10 " } }).name).toBe(" 0x10 ");
  });
});

describe("bad values say where they came from and what is wrong", () => {
  test("junk numbers in the environment", () => {
    for (const junk of ["abc", "12abc", "0x10", "1e", "Infinity", "1_000"]) {
      const msg = configError(() => resolveConfig(Schema, { env: { STOA_PORT: junk } }));
      expect(msg).toContain(`environment variable STOA_PORT=${JSON.stringify(junk)}: expected a decimal number`);
    }
  });

  test("junk booleans in the environment", () => {
    const msg = configError(() => resolveConfig(Schema, { env: { STOA_VERBOSE: "maybe" } }));
    expect(msg).toContain('environment variable STOA_VERBOSE="maybe": expected a boolean');
  });

  test("a junk array item names its position", () => {
    const msg = configError(() => resolveConfig(Schema, { env: { STOA_PEERS: "1,x" } }));
    expect(msg).toContain('environment variable STOA_PEERS item 2="x": expected a decimal number');
  });

  test("a schema rule broken by an environment value", () => {
    const msg = configError(() => resolveConfig(Schema, { env: { STOA_PORT: "70000" } }));
    expect(msg).toMatch(/environment variable STOA_PORT: .*65535/);
  });

  test("a schema rule broken by a flag", () => {
    const msg = configError(() => resolveConfig(Schema, { env: {}, flags: { "log-level": "loud" } }));
    expect(msg).toMatch(/flag --log-level: .*"debug"\|"info"\|"warn"\|"error"/);
    const msg2 = configError(() => resolveConfig(Schema, { env: {}, flags: { runDir: 5 } }));
    expect(msg2).toMatch(/flag --run-dir: .*expected string/);
  });

  test("a schema rule broken by a file value names the file and key", () => {
    const path = file({ port: "8080", peers: [1, "two"] });
    const msg = configError(() => resolveConfig(Schema, { env: {}, file: path }));
    expect(msg).toContain(`config file ${path} key "port": `);
    expect(msg).toMatch(/expected number/);
    expect(msg).toContain(`config file ${path} key "peers" (at 1): `);
  });

  test("a value from a higher source is blamed, not the one it replaced", () => {
    const path = file({ port: 80 });
    const msg = configError(() => resolveConfig(Schema, { env: { STOA_PORT: "0" }, file: path }));
    expect(msg).toContain("environment variable STOA_PORT");
    expect(msg).not.toContain(path);
  });

  test("a missing required key lists every way to set it", () => {
    const S = z.object({ metaUrl: z.string() });
    const msg = configError(() => resolveConfig(S, { env: {} }));
    expect(msg).toContain('metaUrl is required: set --meta-url, STOA_META_URL or "metaUrl" in the config file');
  });
});

describe("config file", () => {
  test("an unknown key is an error that names it", () => {
    const path = file({ prot: 80 });
    const msg = configError(() => resolveConfig(Schema, { env: {}, file: path }));
    expect(msg).toContain(`config file ${path}: unknown key "prot"`);
    expect(msg).toContain("runDir, port, verbose");
  });

  test("two spellings of one key are an error", () => {
    const path = file({ runDir: "/a", run_dir: "/b" });
    expect(configError(() => resolveConfig(Schema, { env: {}, file: path }))).toContain('"run_dir" repeats "runDir"');
  });

  test("a missing file is an error, not an empty config", () => {
    const path = join(dir, "nope.json");
    expect(configError(() => resolveConfig(Schema, { env: {}, file: path }))).toBe(
      `config file ${path} does not exist; check the path you passed`,
    );
  });

  test("a directory is an error", () => {
    expect(configError(() => resolveConfig(Schema, { env: {}, file: dir }))).toContain(`config file ${dir}`);
  });

  test("invalid JSON is an error", () => {
    const path = file('{ "port": 80, }');
    expect(configError(() => resolveConfig(Schema, { env: {}, file: path }))).toContain(
      `config file ${path} is not valid JSON`,
    );
  });

  test.each([["[1, 2]"], ["null"], ['"text"'], ["3"]])("a JSON %s that is not an object is an error", (text) => {
    const path = file(text);
    expect(configError(() => resolveConfig(Schema, { env: {}, file: path }))).toContain("must hold a JSON object");
  });

  test("a file over the size limit is refused before reading", () => {
    const path = file(`{"name": "${"x".repeat(MAX_CONFIG_FILE_BYTES)}"}`);
    expect(configError(() => resolveConfig(Schema, { env: {}, file: path }))).toContain("over the 1048576-byte limit");
  });
});
