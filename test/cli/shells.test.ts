import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import { bool, type CommandEntry, defineCommand, defineGroup, list, parseCommandLine, str } from "../../src/cli/command.ts";
import { bashScript, commandTree, fishScript, zshScript } from "../../src/cli/shells.ts";

// A table with nested groups, like `stoa addr prefix add`, to prove completion walks the tree.
const add = defineCommand({
  name: "add",
  summary: "add an address",
  flags: { dev: str("interface", { placeholder: "IF" }), nodad: bool("skip DAD") },
  examples: ["x"],
  run: () => 0,
});
const prefixAdd = defineCommand({
  name: "add",
  summary: "add a local prefix",
  flags: { table: str("routing table", { choices: ["local", "main"], default: "local" }) },
  examples: ["x"],
  run: () => 0,
});
const entries: CommandEntry[] = [
  {
    name: "addr",
    summary: "addresses",
    load: async () => ({
      default: defineGroup({
        name: "addr",
        summary: "addresses",
        examples: ["x"],
        subcommands: [add, defineGroup({ name: "prefix", summary: "prefixes", examples: ["x"], subcommands: [prefixAdd] })],
      }),
    }),
  },
];

const dir = mkdtempSync(join(tmpdir(), "stoa-shells-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("completion over nested command groups", async () => {
  const nodes = await commandTree(entries);

  test("flattens every group and leaf into a node", () => {
    expect(nodes.map((n) => n.path)).toEqual(["", "addr", "addr add", "addr prefix", "addr prefix add"]);
  });

  test("bash descends groups, skips flag values and offers a flag's choices", () => {
    const file = join(dir, "c.bash");
    writeFileSync(file, bashScript(nodes));
    const complete = (words: string[]) => {
      const array = words.map((w) => `'${w}'`).join(" ");
      const proc = Bun.spawnSync(["bash", "-c", `source '${file}'; COMP_WORDS=(${array}); COMP_CWORD=${words.length - 1}; _stoa; printf '%s\\n' "\${COMPREPLY[@]}"`]);
      return proc.stdout.toString().split("\n").filter(Boolean);
    };
    expect(complete(["stoa", "addr", ""])).toEqual(["add", "prefix", "--help"]);
    expect(complete(["stoa", "addr", "prefix", "add", "--"])).toEqual(["--table", "--help"]);
    expect(complete(["stoa", "addr", "prefix", "add", "--table", ""])).toEqual(["local", "main"]);
    // "prefix" here is the value of --dev, not the group: completion stays at `addr add`.
    expect(complete(["stoa", "addr", "add", "--dev", "prefix", "--n"])).toEqual(["--nodad"]);
  });

  test("fish conditions each completion on the exact command path", () => {
    const script = fishScript(nodes);
    expect(script).toContain(`complete -c stoa -n '__stoa_at '\\''addr prefix'\\''' -a 'add' -d 'add a local prefix'`);
    expect(script).toContain(`-l table -x -a 'local main'`);
    if (Bun.which("fish") === null) {
      console.warn("fish is not installed: checked the generated fish script's text only");
      return;
    }
    const file = join(dir, "c.fish");
    writeFileSync(file, script);
    const complete = (line: string) =>
      Bun.spawnSync(["fish", "-c", `source '${file}'; complete -C '${line}'`]).stdout.toString();
    expect(complete("stoa addr prefix ")).toStartWith("add\tadd a local prefix");
    expect(complete("stoa addr add --dev prefix --n")).toStartWith("--nodad");
  });
});

describe("what a flag's value completes to", () => {
  test("file and path placeholders complete files, dir completes directories, an explicit kind wins", () => {
    expect(str("x", { placeholder: "file" }).complete).toBe("file");
    expect(str("x", { placeholder: "path" }).complete).toBe("file");
    expect(str("x", { placeholder: "dir" }).complete).toBe("dir");
    expect(list("x", { placeholder: "dir" }).complete).toBe("dir");
    expect(str("x", { placeholder: "host:port" }).complete).toBeUndefined();
    expect(str("x", { placeholder: "socket", complete: "file" }).complete).toBe("file");
  });

  test("a z.enum schema gives the flag its choices, and a bad value names them", () => {
    const flag = str("x", { default: "epoll", placeholder: "epoll|bun", schema: z.enum(["epoll", "bun"]) });
    expect(flag.choices).toEqual(["epoll", "bun"]);
    expect(str("x", { schema: z.coerce.number() }).choices).toBeUndefined();
    const cmd = defineCommand({ name: "gw", summary: "gw", flags: { dataPath: flag }, examples: ["x"], run: () => 0 });
    expect(() => parseCommandLine(cmd as Parameters<typeof parseCommandLine>[0], ["--data-path", "uring"], "stoa gw")).toThrow(
      "expected one of epoll|bun",
    );
  });

  const serve = defineCommand({
    name: "serve",
    summary: "serve",
    flags: {
      users: str("users file", { placeholder: "file" }),
      stateDir: str("state dir", { placeholder: "dir" }),
      mode: str("mode", { default: "a", schema: z.enum(["a", "b"]) }),
      port: str("port", { short: "p", placeholder: "n" }),
      verbose: bool("more"),
    },
    examples: ["x"],
    run: () => 0,
  });
  const table: CommandEntry[] = [{ name: "serve", summary: "serve", load: async () => ({ default: serve }) }];

  test("bash offers files, directories, choices or nothing after a value flag, never flag names", async () => {
    const nodes = await commandTree(table);
    const file = join(dir, "v.bash");
    writeFileSync(file, bashScript(nodes));
    const cwd = join(dir, "cwd");
    mkdirSync(join(cwd, "sub"), { recursive: true });
    writeFileSync(join(cwd, "users.json"), "{}");
    const complete = (words: string[]) => {
      const array = words.map((w) => `'${w}'`).join(" ");
      const proc = Bun.spawnSync(["bash", "-c", `source '${file}'; COMP_WORDS=(${array}); COMP_CWORD=${words.length - 1}; _stoa; printf '%s\\n' "\${COMPREPLY[@]}"`], { cwd });
      return proc.stdout.toString().split("\n").filter(Boolean).sort();
    };
    expect(complete(["stoa", "serve", "--users", ""])).toEqual(["sub", "users.json"]);
    expect(complete(["stoa", "serve", "--state-dir", ""])).toEqual(["sub"]);
    expect(complete(["stoa", "serve", "--mode", ""])).toEqual(["a", "b"]);
    expect(complete(["stoa", "serve", "--port", ""])).toEqual([]);
    expect(complete(["stoa", "serve", "-p", ""])).toEqual([]);
    expect(complete(["stoa", "serve", "-p", "1", "--v"])).toEqual(["--verbose"]);
  });

  test("zsh calls _files, _files -/ or compadd of the choices after a value flag", async () => {
    const nodes = await commandTree(table);
    const file = join(dir, "v.zsh");
    writeFileSync(file, zshScript(nodes));
    if (Bun.which("zsh") === null) {
      console.warn("zsh is not installed: checked the generated zsh script's text only");
      expect(zshScript(nodes)).toContain("' serve:--users') _files ;;");
      return;
    }
    // Stubs for the completion builtins: each prints what it was asked to do.
    const run = (words: string[]) =>
      Bun.spawnSync([
        "zsh",
        "-c",
        `compdef() { :; }; _describe() { print -l -- \${(P)\${@[-1]}}; }; compadd() { shift; print -l -- "$@"; }
         _files() { print -- _files "$@"; }; _message() { print -- _message; }; compset() { :; }
         source '${file}'; words=(${words.map((w) => `'${w}'`).join(" ")}); CURRENT=${words.length}; _stoa`,
      ]).stdout.toString().trim();
    expect(run(["stoa", "serve", "--users", ""])).toBe("_files");
    expect(run(["stoa", "serve", "--state-dir", ""])).toBe("_files -/");
    expect(run(["stoa", "serve", "--mode", ""])).toBe("a\nb");
    expect(run(["stoa", "serve", "--mode="])).toBe("a\nb");
    expect(run(["stoa", "serve", "-p", ""])).toBe("_message");
  });

  test("fish marks each value flag with its completion", async () => {
    const script = fishScript(await commandTree(table));
    expect(script).toContain("-l users -r -F -d 'users file'");
    expect(script).toContain("-l state-dir -x -a '(__fish_complete_directories (commandline -ct))'");
    expect(script).toContain("-l mode -x -a 'a b'");
    expect(script).toContain("-l port -s p -x -d 'port'");
    expect(script).toContain("set -g __stoa_value_flags 'serve:--users' 'serve:--state-dir' 'serve:--mode' 'serve:--port' 'serve:-p'");
  });
});
