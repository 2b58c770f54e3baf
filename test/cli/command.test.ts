import { describe, expect, test } from "bun:test";
import { z } from "zod";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bool, configFlag, defineCommand, kebab, list, parseCommandLine, str, type LeafCommand } from "../../src/cli/command.ts";
import { commandHelp } from "../../src/cli/help.ts";
import { movesBytes } from "../../src/cli/run.ts";
import { StoaError } from "../../src/core/errors.ts";

const cmd = defineCommand({
  name: "serve",
  summary: "serve things",
  flags: {
    port: str("port to listen on", { default: "8081", placeholder: "port", schema: z.coerce.number().int().min(1).max(65535) }),
    logLevel: str("log level", { default: "info", choices: ["debug", "info", "warn", "error"] }),
    users: str("users file", { placeholder: "file" }),
    tunnel: list("a tunnel CHANNEL=HOST:PORT", { short: "t" }),
    json: bool("print JSON", { short: "j" }),
  },
  positionals: [{ name: "name", description: "what to serve", required: true }],
  examples: ["stoa serve a --port 9000"],
  run: () => 0,
}) as LeafCommand;

function parse(argv: string[]) {
  const result = parseCommandLine(cmd, argv, "stoa serve");
  if (result.help) throw new Error("unexpected help");
  return result.ctx;
}

function usageError(argv: string[]): string {
  try {
    parseCommandLine(cmd, argv, "stoa serve");
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    expect((err as StoaError).code).toBe("usage");
    return (err as StoaError).message;
  }
  throw new Error(`no error for ${argv.join(" ")}`);
}

describe("flag parsing", () => {
  test("applies defaults through each flag's schema", () => {
    const { flags, args } = parse(["thing"]);
    expect(flags).toEqual({ port: 8081, logLevel: "info", users: undefined, tunnel: [], json: false });
    expect(args).toEqual(["thing"]);
  });

  test("reads kebab-case long flags, short flags and repeated flags", () => {
    const { flags } = parse(["x", "--port", "9000", "--log-level=debug", "-t", "a=b:1", "--tunnel", "c=d:2", "-j", "--users", "/etc/u"]);
    expect(flags).toEqual({ port: 9000, logLevel: "debug", users: "/etc/u", tunnel: ["a=b:1", "c=d:2"], json: true });
  });

  test("--help wins over everything else, even bad flags' values", () => {
    expect(parseCommandLine(cmd, ["--port", "nope", "--help"], "stoa serve")).toEqual({ help: true });
  });

  test("bad values name the flag, the value and the rule", () => {
    expect(usageError(["x", "--port", "99999"])).toContain("invalid --port '99999'");
    expect(usageError(["x", "--log-level", "loud"])).toContain("expected one of debug|info|warn|error");
  });

  test("a value that starts with '-' is the flag's value (and gets its check), unless it is one of the command's flags", () => {
    expect(usageError(["x", "--port", "-1"])).toContain("invalid --port '-1'");
    expect(usageError(["x", "--port", "-1"])).not.toContain("takes no value");
    expect(parse(["x", "--users", "-weird-name", "-t", "-a=b:1"]).flags).toMatchObject({ users: "-weird-name", tunnel: ["-a=b:1"] });
    expect(usageError(["x", "--port", "--json"])).toContain("--port needs a value");
    expect(usageError(["x", "--port", "-j"])).toContain("--port needs a value");
    expect(usageError(["--", "x", "--port"])).toContain("unexpected argument '--port'"); // after `--`, arguments only
  });

  test("unknown flags, missing values and missing arguments are usage errors", () => {
    expect(usageError(["x", "--nope"])).toBe("stoa serve: unknown flag --nope (see 'stoa serve --help')");
    expect(usageError(["x", "--port"])).toContain("--port needs a value");
    expect(usageError([])).toContain("missing <name>");
    expect(usageError(["x", "y"])).toContain("unexpected argument 'y'");
  });
});

describe("help", () => {
  const help = commandHelp(cmd, "stoa serve");

  test("shows usage, arguments, flags with placeholders and defaults, and examples", () => {
    expect(help).toContain("Usage:\n  stoa serve <name> [flags]");
    expect(help).toMatch(/--port <port>\s+port to listen on \(default: 8081\)/);
    expect(help).toMatch(/--log-level <debug\|info\|warn\|error>\s+log level \(default: info\)/);
    expect(help).toMatch(/-t, --tunnel <value>\s+a tunnel CHANNEL=HOST:PORT \(repeatable\)/);
    expect(help).toMatch(/-h, --help\s+show this help/);
    expect(help).toContain("Examples:\n  stoa serve a --port 9000");
  });

  test("kebab-cases camelCase keys", () => {
    expect(kebab("logLevel")).toBe("log-level");
    expect(kebab("drainTimeoutMs")).toBe("drain-timeout-ms");
  });
});

describe("flags from the environment and a config file", () => {
  const layered = defineCommand({
    name: "serve",
    summary: "serve",
    config: true,
    flags: {
      port: str("port", { default: "8081", schema: z.coerce.number().int().min(1).max(65535) }),
      runDir: str("run dir", { default: "/run/stoa" }),
      verbose: bool("more output"),
      config: configFlag(),
    },
    examples: ["x"],
    run: () => 0,
  }) as LeafCommand;

  const withEnv = <T>(env: Record<string, string>, fn: () => T): T => {
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      return fn();
    } finally {
      for (const key of Object.keys(env)) delete process.env[key];
      Object.assign(process.env, saved);
    }
  };
  const flagsOf = (argv: string[]) => {
    const result = parseCommandLine(layered, argv, "stoa serve");
    if (result.help) throw new Error("help");
    return result.ctx.flags;
  };

  test("flags > STOA_* environment > --config file > defaults", () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-cfg-"));
    try {
      const file = join(dir, "c.json");
      writeFileSync(file, JSON.stringify({ port: 7000, "run-dir": "/from/file", verbose: true }));
      expect(flagsOf(["--config", file])).toMatchObject({ port: 7000, runDir: "/from/file", verbose: true });
      withEnv({ STOA_PORT: "7100", STOA_RUN_DIR: "/from/env" }, () => {
        expect(flagsOf(["--config", file])).toMatchObject({ port: 7100, runDir: "/from/env", verbose: true });
        expect(flagsOf(["--config", file, "--port", "7200"])).toMatchObject({ port: 7200, runDir: "/from/env" });
      });
      expect(flagsOf([])).toMatchObject({ port: 8081, runDir: "/run/stoa", verbose: false });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("config.reread() reads the --config file again with the same flags (a daemon's SIGHUP); none without a file", () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-cfg-"));
    try {
      const file = join(dir, "c.json");
      writeFileSync(file, JSON.stringify({ port: 7000, runDir: "/a" }));
      const result = parseCommandLine(layered, ["--config", file, "--run-dir", "/flag"], "stoa serve");
      if (result.help) throw new Error("help");
      const config = result.ctx.config;
      expect(config?.file).toBe(file);
      writeFileSync(file, JSON.stringify({ port: 7001, runDir: "/b" }));
      expect(config?.reread()).toMatchObject({ port: 7001, runDir: "/flag" });
      expect(result.ctx.flags).toMatchObject({ port: 7000 });
      // A setting deleted from the file goes back to its default (it kept 7001 before).
      writeFileSync(file, JSON.stringify({ runDir: "/c" }));
      expect(config?.reread()).toMatchObject({ port: 8081, runDir: "/flag" });
      writeFileSync(file, JSON.stringify({ port: "seventy" }));
      expect(() => config?.reread()).toThrow(/config file .* key "port"/);
      const plain = parseCommandLine(layered, [], "stoa serve");
      expect(plain.help === false && plain.ctx.config).toBeUndefined();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a bad environment value is an error that names the variable", () => {
    withEnv({ STOA_PORT: "eighty" }, () => {
      expect(() => flagsOf([])).toThrow(/STOA_PORT/);
    });
  });

  test("help says how the environment and the file apply", () => {
    expect(commandHelp(layered, "stoa serve")).toContain("STOA_PORT");
  });
});

describe("movesBytes (run.ts): which invocations get the allocator's bulk setting", () => {
  const load = async () => ({ default: defineCommand({ name: "x", summary: "x", flags: {}, examples: [], run: () => 0 }) });
  test("a marked command, or a marked subcommand of a group; never its help; nothing unmarked", () => {
    const whole = { name: "gw", summary: "", load, movesBytes: true as const };
    const group = { name: "hl", summary: "", load, movesBytes: ["serve", "connect"] };
    expect(movesBytes(whole, [])).toBe(true);
    expect(movesBytes(whole, ["--listen", "x"])).toBe(true);
    expect(movesBytes(whole, ["--help"])).toBe(false);
    expect(movesBytes(group, ["serve", "--listen", "x"])).toBe(true);
    expect(movesBytes(group, ["connect"])).toBe(true);
    expect(movesBytes(group, ["connect", "-h"])).toBe(false);
    expect(movesBytes(group, ["ls"])).toBe(false);
    expect(movesBytes(group, [])).toBe(false);
    expect(movesBytes(group, ["--json", "serve"])).toBe(false);
    expect(movesBytes({ name: "v", summary: "", load }, ["serve"])).toBe(false);
  });
});
