import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { bool, type CommandEntry, defineCommand, defineGroup, str } from "../../src/cli/command.ts";
import { bashScript, commandTree, fishScript } from "../../src/cli/shells.ts";

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
