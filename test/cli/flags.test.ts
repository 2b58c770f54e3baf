/**
 * Flags as the parser guarantees them to `run` — required ones present, choices of their union
 * type — and the flags several commands share, said the same (true) way by every command.
 */
import { describe, expect, expectTypeOf, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type Command, type Flag, type LeafCommand, configFlag, defineCommand, isGroup, parseCommandLine, str, under } from "../../src/cli/command.ts";
import { portsFlag } from "../../src/cli/common.ts";
import { RUN_DIR_DEFAULT, STATE_DIR_DEFAULT, runDirFlag, stateDirFlag } from "../../src/cli/flags.ts";
import { commandHelp } from "../../src/cli/help.ts";
import { StoaError, exitCodeFor } from "../../src/core/errors.ts";
import { defaultRunDir, defaultStateDir } from "../../src/core/paths.ts";

const flags = {
  dev: str("the interface", { placeholder: "IF", required: { example: "eth0" } }),
  mode: str("how to run", { default: "fast", choices: ["fast", "safe"] }),
  side: str("which side", { choices: ["left", "right"] }),
  note: str("a note"),
};
const cmd = defineCommand({ name: "probe", summary: "probe", flags, examples: ["stoa probe --dev eth0"], run: () => 0 }) as LeafCommand<typeof flags>;

function parse(argv: string[]) {
  const result = parseCommandLine(cmd, argv, "stoa probe");
  if (result.help) throw new Error("unexpected help");
  return result.ctx.flags;
}

function refusal(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("not refused");
}

describe("required flags", () => {
  const wording = "stoa probe: --dev is required, e.g. --dev eth0 (see 'stoa probe --help')";

  test("a missing one is a usage error (exit 2) in one wording that shows an example", () => {
    const err = refusal(() => parse([]));
    expect(err.message).toBe(wording);
    expect(err.code).toBe("usage");
    expect(exitCodeFor(err)).toBe(2);
  });

  test("an empty value does not count as given", () => {
    expect(refusal(() => parse(["--dev", ""])).message).toBe(wording);
    expect(refusal(() => parse(["--dev="])).message).toBe(wording);
  });

  test("given, its value reaches run with a type that is never undefined", () => {
    const values = parse(["--dev", "eth1"]);
    expect(values.dev).toBe("eth1");
    expectTypeOf(values.dev).toEqualTypeOf<string>();
    expectTypeOf(values.note).toEqualTypeOf<string | undefined>();
  });

  test("a missing argument is reported before a missing flag", () => {
    const withArg = defineCommand({ ...cmd, positionals: [{ name: "ADDR", description: "an address", required: true }] }) as LeafCommand;
    expect(refusal(() => parseCommandLine(withArg, [], "stoa probe")).message).toContain("missing <ADDR>");
  });

  test("help marks it (required) and shows no default", () => {
    expect(commandHelp(cmd, "stoa probe")).toMatch(/--dev <IF>\s+the interface \(required\)\n/);
  });

  describe("of a config: true command", () => {
    const daemon = defineCommand({
      name: "serve",
      summary: "serve",
      config: true,
      flags: { users: str("users file", { placeholder: "file", required: { example: "users.json" } }), config: configFlag() },
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

    test("the environment may give it instead; missing everywhere, the same wording", () => {
      const ok = withEnv({ STOA_USERS: "/from/env" }, () => parseCommandLine(daemon, [], "stoa serve"));
      expect(ok.help === false && ok.ctx.flags.users).toBe("/from/env");
      expect(refusal(() => parseCommandLine(daemon, [], "stoa serve")).message).toBe(
        "stoa serve: --users is required, e.g. --users users.json (see 'stoa serve --help')",
      );
    });

    test("a re-read --config file that empties it is a config error: the daemon keeps its running values", () => {
      const dir = mkdtempSync(join(tmpdir(), "stoa-flags-"));
      const file = join(dir, "c.json");
      writeFileSync(file, JSON.stringify({ users: "/a" }));
      try {
        const parsed = parseCommandLine(daemon, ["--config", file], "stoa serve");
        if (parsed.help) throw new Error("help");
        expect(parsed.ctx.flags.users).toBe("/a");
        writeFileSync(file, JSON.stringify({ users: "" }));
        const err = refusal(() => parsed.ctx.config?.reread());
        expect(err.code).toBe("config");
        expect(err.message).toContain("--users is required");
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

describe("choice flags", () => {
  test("a bad choice is refused by the parser, once, with the list of choices", () => {
    const err = refusal(() => parse(["--dev", "eth0", "--mode", "slow"]));
    expect(err.message).toBe("stoa probe: invalid --mode 'slow': expected one of fast|safe");
    expect(exitCodeFor(err)).toBe(2);
  });

  test("the value's type is the union of the choices (undefined too without a default)", () => {
    const values = parse(["--dev", "eth0", "--side", "left"]);
    expect(values).toMatchObject({ mode: "fast", side: "left" });
    expectTypeOf(values.mode).toEqualTypeOf<"fast" | "safe">();
    expectTypeOf(values.side).toEqualTypeOf<"left" | "right" | undefined>();
    expectTypeOf(flags.mode).toEqualTypeOf<Flag<"fast" | "safe">>();
  });
});

describe("under()", () => {
  test("puts the command path before a StoaError's message, thrown or rejected; other errors pass unchanged", async () => {
    const fail = () => {
      throw new StoaError("io", "cannot read x");
    };
    expect(refusal(() => under("stoa probe", fail)).message).toBe("stoa probe: cannot read x");
    expect(refusal(() => under("stoa probe", fail)).code).toBe("io");
    expect(under("stoa probe", () => 7)).toBe(7);
    const rejected = await under("stoa probe", async () => fail()).catch((err: unknown) => err);
    expect(rejected).toBeInstanceOf(StoaError);
    expect((rejected as StoaError).message).toBe("stoa probe: cannot read x");
    const plain = new TypeError("bug");
    expect(() => under("stoa probe", () => {
      throw plain;
    })).toThrow(plain);
  });
});

describe("shared flags", () => {
  test("--run-dir and --state-dir help give core/paths.ts's whole default chain, /tmp/stoa-<uid> included", () => {
    expect(runDirFlag("x").description).toBe(`x (default: ${RUN_DIR_DEFAULT})`);
    expect(RUN_DIR_DEFAULT).toBe("/run/stoa as root, else $XDG_RUNTIME_DIR/stoa, else /tmp/stoa-<uid>");
    expect(stateDirFlag("x").description).toContain(STATE_DIR_DEFAULT);
    // The words are the rule: what defaultRunDir()/defaultStateDir() answer for this user.
    const uid = process.getuid?.() ?? -1;
    const root = uid === 0;
    expect(defaultRunDir({ XDG_RUNTIME_DIR: "/x" })).toBe(root ? "/run/stoa" : "/x/stoa");
    expect(defaultRunDir({})).toBe(root ? "/run/stoa" : `/tmp/stoa-${uid}`);
    expect(defaultStateDir({ XDG_STATE_HOME: "/s" })).toBe(root ? "/var/lib/stoa" : "/s/stoa");
  });

  test("--ports defaults to the gateway's 8081,8082,8083", () => {
    expect(portsFlag("ports").default).toBe("8081,8082,8083");
  });

  /** Every leaf command of the program, from the command modules of src/cli/. */
  async function leaves(): Promise<{ path: string; cmd: LeafCommand }[]> {
    const dir = join(import.meta.dir, "..", "..", "src", "cli");
    const files = readdirSync(dir).filter((f) => /^export default define(Command|Group)\(/m.test(readFileSync(join(dir, f), "utf8")));
    const out: { path: string; cmd: LeafCommand }[] = [];
    const visit = (cmd: Command, path: string): void => {
      if (isGroup(cmd)) for (const sub of cmd.subcommands) visit(sub, `${path} ${sub.name}`);
      else out.push({ path, cmd });
    };
    for (const file of files) {
      const { default: cmd } = (await import(join(dir, file))) as { default: Command };
      visit(cmd, `stoa ${cmd.name}`);
    }
    return out;
  }

  test("every command's --run-dir, --state-dir and --ports is the shared one", async () => {
    const all = await leaves();
    expect(all.map((l) => l.path)).toContain("stoa hotlink tunnel");
    const seen = { runDir: 0, stateDir: 0, ports: 0 };
    for (const { path, cmd } of all) {
      const { runDir, stateDir, ports } = cmd.flags;
      if (runDir !== undefined) {
        seen.runDir++;
        expect({ path, text: runDir.description.endsWith(`(default: ${RUN_DIR_DEFAULT})`) }).toEqual({ path, text: true });
      }
      if (stateDir !== undefined) {
        seen.stateDir++;
        expect({ path, text: stateDir.description.endsWith(`(default: ${STATE_DIR_DEFAULT})`) }).toEqual({ path, text: true });
      }
      if (ports !== undefined) {
        seen.ports++;
        expect({ path, placeholder: ports.placeholder, default: ports.default }).toEqual({ path, placeholder: "S,T,P", default: "8081,8082,8083" });
      }
    }
    expect(seen.runDir).toBeGreaterThanOrEqual(10);
    expect(seen.stateDir).toBeGreaterThanOrEqual(5);
    expect(seen.ports).toBe(3);
  });
});
