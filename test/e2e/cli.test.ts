import { describe, expect, test } from "bun:test";
import pkg from "../../package.json" with { type: "json" };
import { ROOT, stoa } from "../helpers/stoa.ts";

/** [name, summary] of each command as `stoa --help` lists them (indented name, spaces, summary). */
function listedCommands(): [string, string][] {
  const help = stoa(["--help"]).stdout;
  const section = help.split("Commands:\n")[1]?.split("\n\n")[0] ?? "";
  return section.split("\n").map((line) => {
    const [name = "", summary = ""] = line.trim().split(/\s{2,}/);
    return [name, summary];
  });
}

describe("stoa --help", () => {
  test("lists every command, one per indented line with a summary", () => {
    const run = stoa(["--help"]);
    expect(run.code).toBe(0);
    for (const name of ["up", "gateway", "meta", "pub", "sub", "version", "completion", "doctor"]) {
      expect(run.stdout).toMatch(new RegExp(`^  ${name}\\s{3,}\\S.+$`, "m"));
    }
  });

  test("every listed command has help with its summary, usage, flags and an example", () => {
    const commands = listedCommands();
    expect(commands.length).toBeGreaterThanOrEqual(3);
    for (const [name, summary] of commands) {
      const run = stoa([name, "--help"]);
      expect(run.code, name).toBe(0);
      expect(run.stdout.split("\n")[0], name).toBe(`stoa ${name} — ${summary}`);
      expect(run.stdout, name).toContain(`Usage:\n  stoa ${name}`);
      expect(run.stdout, name).toMatch(/^(Flags|Commands):\n/m);
      const examples = run.stdout.split("Examples:\n")[1] ?? "";
      expect(examples, name).toContain(`stoa ${name}`);
    }
  });

  test("'stoa help <command>' is the same as '<command> --help'", () => {
    expect(stoa(["help", "doctor"]).stdout).toBe(stoa(["doctor", "--help"]).stdout);
  });

  test("no arguments prints the help on stderr and exits 2", () => {
    const run = stoa([]);
    expect(run.code).toBe(2);
    expect(run.stderr).toContain("Usage:");
  });
});

describe("usage errors exit 2 with one clear line", () => {
  test.each([
    [["bogus"], "unknown command 'bogus'"],
    [["versoin"], "did you mean 'version'"],
    [["version", "--bogus"], "unknown flag --bogus"],
    [["version", "--json=yes"], "--json takes no value"],
    [["version", "extra"], "unexpected argument 'extra'"],
    [["completion"], "missing <shell>"],
    [["completion", "tcsh"], "must be one of bash|zsh|fish"],
    [["--bogus"], "unknown flag --bogus"],
  ])("stoa %p", (args, message) => {
    const run = stoa(args);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(message);
    expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  });
});

describe("stoa version", () => {
  test("--json reports version, Bun, commit and build time", () => {
    const run = stoa(["version", "--json"]);
    expect(run.code).toBe(0);
    const info = JSON.parse(run.stdout);
    expect(info.version).toBe(pkg.version);
    expect(info.bun).toBe(pkg.devDependencies.bun);
    expect(info.compiled).toBe(true);
    expect(Number.isNaN(Date.parse(info.built))).toBe(false);
    const head = Bun.spawnSync(["git", "-C", ROOT, "rev-parse", "--short=12", "HEAD"]);
    if (head.exitCode === 0) expect(info.commit).toStartWith(head.stdout.toString().trim());
    else expect(info.commit).toBe("unknown");
  });

  test("text form and --version agree", () => {
    const text = stoa(["version"]).stdout;
    expect(text).toStartWith(`stoa ${pkg.version} (commit `);
    expect(stoa(["--version"]).stdout).toBe(text);
  });
});
