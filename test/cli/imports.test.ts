/**
 * The module graph of the commands: each command loads only what it runs. src/main.ts loads
 * one command's module lazily, so a command module that imports another drags that command's
 * whole subsystem (for `stoa pub`: the gateway, its splice engine and epoll) into its own start.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const ROOT = join(import.meta.dir, "..", "..");
const CLI = join(ROOT, "src", "cli");
const transpiler = new Bun.Transpiler({ loader: "ts" });

/** The modules of src/cli/ that define a command (or a group of them), by base name. */
function commandModules(): Map<string, string[]> {
  const modules = new Map<string, string[]>();
  for (const file of readdirSync(CLI).filter((f) => f.endsWith(".ts"))) {
    const source = readFileSync(join(CLI, file), "utf8");
    if (file === "command.ts" || !/\bdefine(Command|Group)\(/.test(source)) continue;
    const siblings = transpiler
      .scanImports(source)
      .map((imp) => /^\.\/([\w-]+)\.ts$/.exec(imp.path)?.[1])
      .filter((name): name is string => name !== undefined);
    modules.set(file.slice(0, -".ts".length), siblings);
  }
  return modules;
}

describe("command modules", () => {
  test("no command module imports another; a group only its own parts (hotlink.ts: hotlink-*.ts)", () => {
    const modules = commandModules();
    expect([...modules.keys()]).toContain("pub");
    expect([...modules.keys()]).toContain("hotlink-control");
    const crossings = [...modules].flatMap(([name, imports]) =>
      imports.filter((imported) => modules.has(imported) && !imported.startsWith(`${name}-`)).map((imported) => `${name}.ts imports ${imported}.ts`),
    );
    expect(crossings).toEqual([]);
  });
});

/** The project's own modules (paths from the checkout's root) that bundling `entry` pulls in. */
async function graphOf(entry: string): Promise<string[]> {
  const build = await Bun.build({ entrypoints: [join(ROOT, entry)], target: "bun", metafile: true });
  expect(build.success).toBe(true);
  return Object.keys(build.metafile?.inputs ?? {}).filter((path) => path.startsWith("src/"));
}

describe("module graphs", () => {
  test("stoa pub loads no gateway server: not cli/gateway.ts, the gateway, its routers or the splice engine", async () => {
    const graph = await graphOf("src/cli/pub.ts");
    expect(graph).toContain("src/stream/session.ts"); // the graph is pub's, as read from the metafile
    expect(graph).toContain("src/gateway/control.ts"); // the control socket's client: pub talks to the gateway
    const server = graph.filter((path) => /^src\/(cli\/gateway|gateway\/(gateway|router|workers|routes)|core\/fdsplice[\w-]*)\.ts$/.test(path));
    expect(server).toEqual([]);
  });

  test("stoa up runs the metaserver on its thread without loading cli/meta.ts or the server in its own graph", async () => {
    const graph = await graphOf("src/cli/up.ts");
    expect(graph).toContain("src/meta/thread.ts");
    expect(graph.filter((path) => path === "src/cli/meta.ts" || path === "src/meta/server.ts")).toEqual([]);
  });
});
