import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, stoa } from "../helpers/stoa.ts";

const dir = mkdtempSync(join(tmpdir(), "stoa-completion-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// What file and directory completion should find: the shells run in `work`.
const work = join(dir, "work");
mkdirSync(join(work, "state"), { recursive: true });
mkdirSync(join(work, "run dir"));
for (const f of ["users.json", "acl.json", "with space.json"]) writeFileSync(join(work, f), "{}");
const FILES = ["acl.json", "run dir", "state", "users.json", "with space.json"];
const DIRS = ["run dir", "state"];

function script(shell: string): string {
  const run = stoa(["completion", shell]);
  expect(run.code).toBe(0);
  const file = join(dir, `stoa.${shell}`);
  writeFileSync(file, run.stdout);
  return file;
}

function sh(argv: string[], cwd?: string): string {
  const proc = Bun.spawnSync(argv, { stdin: "ignore", cwd });
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
    const out = sh(["bash", "-c", `source '${file}'; COMP_WORDS=(${array}); COMP_CWORD=${cword}; _stoa; printf '%s\\n' "\${COMPREPLY[@]}"`], work);
    return out.split("\n").filter(Boolean).sort();
  };

  test("completes command names from the command table", () => {
    expect(complete(["stoa", "ver"])).toEqual(["version"]);
    expect(complete(["stoa", ""])).toEqual(expect.arrayContaining(["doctor", "completion", "version"]));
  });

  test("completes a command's flags and fixed argument choices", () => {
    const flags = complete(["stoa", "doctor", "--"]);
    expect(flags).toEqual(expect.arrayContaining(["--help", "--json", "--run-dir", "--strict"]));
    expect(flags.every((f) => f.startsWith("--"))).toBe(true);
    expect(complete(["stoa", "completion", "z"])).toEqual(["zsh"]);
  });

  test("offers file names, not flag names, after a flag that takes a file", () => {
    expect(complete(["stoa", "hotlink", "serve", "--users", ""])).toEqual(FILES);
    expect(complete(["stoa", "hotlink", "serve", "--users", "u"])).toEqual(["users.json"]);
    expect(complete(["stoa", "gateway", "--config", ""])).toEqual(FILES);
    expect(complete(["stoa", "hotlink", "user", "add", "--users", "w"])).toEqual(["with space.json"]);
    // --flag=value: bash splits the word at '='.
    expect(complete(["stoa", "hotlink", "serve", "--acl", "=", "a"])).toEqual(["acl.json"]);
  });

  test("offers only directories after a flag that takes one", () => {
    expect(complete(["stoa", "meta", "--state-dir", ""])).toEqual(DIRS);
    expect(complete(["stoa", "gateway", "--run-dir", "r"])).toEqual(["run dir"]);
  });

  test("offers a flag's choices, and nothing after a free-form value flag", () => {
    expect(complete(["stoa", "gateway", "--data-path", ""])).toEqual(["bun", "epoll"]);
    expect(complete(["stoa", "gateway", "--data-path", "=", ""])).toEqual(["bun", "epoll"]);
    expect(complete(["stoa", "gateway", "--log-level", "w"])).toEqual(["warn"]);
    expect(complete(["stoa", "pub", "--format", ""])).toEqual(["json", "lines", "raw"]);
    expect(complete(["stoa", "gateway", "--ports", ""])).toEqual([]);
    // After the value, flags again.
    expect(complete(["stoa", "gateway", "--data-path", "bun", "--data"])).toEqual(["--data-path"]);
  });

  test("offers the subcommands of groups", () => {
    expect(complete(["stoa", "hotlink", ""])).toEqual(["--help", "close", "connect", "ipc", "ls", "serve", "tunnel", "user"]);
    expect(complete(["stoa", "hotlink", "user", "r"])).toEqual(["remove"]);
    expect(complete(["stoa", "addr", "prefix", ""])).toEqual(expect.arrayContaining(["add", "del"]));
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

  // The real completion system: test/helpers/zsh-complete.zsh types the line and a Tab into an
  // interactive zsh (compinit, the script on $fpath) and prints what the completion added.
  /** Each completion starts zsh's completion system afresh (~0.5 s idle, several seconds on a loaded 2-core machine). */
  const ZSH_TIMEOUT_MS = 30_000;
  const zshComplete = (line: string): string[] => {
    const fpath = join(dir, "zfunc");
    mkdirSync(fpath, { recursive: true });
    writeFileSync(join(fpath, "_stoa"), stoa(["completion", "zsh"]).stdout);
    return sh(["zsh", "-f", join(ROOT, "test", "helpers", "zsh-complete.zsh"), fpath, line], work).split("\n").filter(Boolean).sort();
  };

  test("offers file names after a flag that takes a file (the real completion system)", () => {
    expect(zshComplete("stoa hotlink serve --users ")).toEqual(FILES.map((f) => f.replace(/ /g, "\\ ")));
    expect(zshComplete("stoa gateway --config u")).toEqual(["users.json"]);
    expect(zshComplete("stoa hotlink serve --acl=a")).toEqual(["acl.json"]);
  }, ZSH_TIMEOUT_MS);

  test("offers only directories after a flag that takes one, and choices after a choice flag", () => {
    expect(zshComplete("stoa meta --state-dir ")).toEqual(DIRS.map((f) => f.replace(/ /g, "\\ ")));
    expect(zshComplete("stoa gateway --data-path ")).toEqual(["bun", "epoll"]);
    expect(zshComplete("stoa gateway --log-level w")).toEqual(["warn"]);
    expect(zshComplete("stoa gateway --ports ")).toEqual([]);
    expect(zshComplete("stoa hotlink user ")).toEqual(["add", "ls", "remove"]);
  }, ZSH_TIMEOUT_MS);
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

  const fishComplete = (line: string): string[] => {
    const file = script("fish");
    const out = sh(["fish", "-c", `source '${file}'; complete -C '${line}'`], work);
    return out.split("\n").filter(Boolean).map((l) => l.split("\t")[0] ?? "").sort();
  };

  test("offers file names after a flag that takes a file, and none after one that does not", () => {
    expect(fishComplete("stoa hotlink serve --users ")).toEqual(FILES.map((f) => (DIRS.includes(f) ? `${f}/` : f)));
    expect(fishComplete("stoa gateway --config u")).toEqual(["users.json"]);
    expect(fishComplete("stoa hotlink serve --acl=a")).toEqual(["--acl=acl.json"]);
    expect(fishComplete("stoa gateway --ports ")).toEqual([]);
  });

  test("offers only directories after a flag that takes one, and choices after a choice flag", () => {
    expect(fishComplete("stoa meta --state-dir ")).toEqual(DIRS.map((d) => `${d}/`));
    expect(fishComplete("stoa gateway --data-path ")).toEqual(["bun", "epoll"]);
    expect(fishComplete("stoa gateway --log-level w")).toEqual(["warn"]);
    expect(fishComplete("stoa hotlink user ")).toEqual(["add", "ls", "remove"]);
    // The value of --users ("user") is not taken for a command: still at `hotlink user add`.
    expect(fishComplete("stoa hotlink user add --users user --")).toEqual(expect.arrayContaining(["--replace", "--users"]));
  });
});
