import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stoa } from "../helpers/stoa.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-completion-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function script(shell: string): string {
  const run = stoa(["completion", shell]);
  expect(run.code).toBe(0);
  const file = join(dir, `stoa.${shell}`);
  writeFileSync(file, run.stdout);
  return file;
}

function sh(argv: string[]): string {
  const proc = Bun.spawnSync(argv, { stdin: "ignore" });
  if (proc.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${proc.stderr.toString()}`);
  return proc.stdout.toString();
}

const hasZsh = Bun.which("zsh") !== null;
const hasFish = Bun.which("fish") !== null;
if (!hasZsh) console.warn("skipping zsh completion tests: zsh is not installed (scripts/test installs it as root)");
if (!hasFish) console.warn("skipping fish completion tests: fish is not installed (scripts/test installs it as root)");

describe("bash completion", () => {
  const complete = (words: string[]): string[] => {
    const file = script("bash");
    const cword = words.length - 1;
    const array = words.map((w) => `'${w}'`).join(" ");
    const out = sh(["bash", "-c", `source '${file}'; COMP_WORDS=(${array}); COMP_CWORD=${cword}; _stoa; printf '%s\\n' "\${COMPREPLY[@]}"`]);
    return out.split("\n").filter(Boolean);
  };

  test("completes command names from the command table", () => {
    expect(complete(["stoa", "ver"])).toEqual(["version"]);
    expect(complete(["stoa", ""])).toEqual(expect.arrayContaining(["doctor", "completion", "version"]));
  });

  test("completes a command's flags and fixed argument choices", () => {
    expect(complete(["stoa", "doctor", "--"])).toEqual(["--json", "--strict", "--run-dir", "--help"]);
    expect(complete(["stoa", "completion", "z"])).toEqual(["zsh"]);
  });
});

describe.if(hasZsh)("zsh completion", () => {
  test("parses, and offers commands and flags", () => {
    const file = script("zsh");
    sh(["zsh", "-n", file]);
    // Outside a completion widget, words/CURRENT are plain variables: stub the completion
    // builtins and call the function directly.
    const run = (words: string[]) =>
      sh([
        "zsh",
        "-c",
        `compdef() { :; }; _describe() { print -l -- \${(P)\${@[-1]}}; }; compadd() { shift; print -l -- "$@"; }
         source '${file}'; words=(${words.map((w) => `'${w}'`).join(" ")}); CURRENT=${words.length}; _stoa`,
      ]);
    expect(run(["stoa", ""])).toContain("version:print version, Bun version and build info");
    expect(run(["stoa", "doctor", "--"])).toContain("--strict:");
  });
});

describe.if(hasFish)("fish completion", () => {
  test("parses, and offers commands, flags and choices", () => {
    const file = script("fish");
    sh(["fish", "-n", file]);
    const complete = (line: string) => sh(["fish", "-c", `source '${file}'; complete -C '${line}'`]);
    expect(complete("stoa ver")).toStartWith("version\tprint version");
    expect(complete("stoa completion ")).toContain("fish");
    expect(complete("stoa doctor --")).toContain("--strict\t");
  });
});
