import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, stoa } from "../helpers/stoa.ts";

/** Every command path and the flags its --help lists, found by walking the binary's help. */
function helpTree(): { path: string; flags: string[] }[] {
  const found: { path: string; flags: string[] }[] = [];
  const visit = (path: string[]): void => {
    const help = stoa([...path, "--help"]);
    expect(help.code).toBe(0);
    const section = (title: string) => {
      const lines = help.stdout.split("\n");
      const start = lines.indexOf(`${title}:`);
      if (start < 0) return [];
      const end = lines.findIndex((l, i) => i > start && l === "");
      return lines.slice(start + 1, end < 0 ? undefined : end);
    };
    const flags = section("Flags").flatMap((row) => /^ {2}(?:-\w, )?(--[a-z0-9-]+)/.exec(row)?.[1] ?? []);
    found.push({ path: ["stoa", ...path].join(" "), flags });
    for (const row of section("Commands")) {
      const name = /^ {2}([a-z][a-z0-9-]*)\s/.exec(row)?.[1];
      if (name) visit([...path, name]);
    }
  };
  visit([]);
  return found;
}

/** The page as plain text: roff escapes for hyphens and fonts undone. */
function plain(roff: string): string {
  return roff.replace(/\\-/g, "-").replace(/\\f[BIR]/g, "").replace(/\\&/g, "");
}

const hasGroff = Bun.which("groff") !== null;
const hasMan = Bun.which("man") !== null;
if (!hasGroff) console.warn("skipping the groff rendering test: groff is not installed (Debian: groff-base)");
if (!hasMan) console.warn("skipping the man -l rendering test: man is not installed (Debian: man-db)");

describe("stoa man", () => {
  const page = stoa(["man"]);

  test("prints a roff page with every section of stoa(1)", () => {
    expect(page.code).toBe(0);
    expect(page.stderr).toBe("");
    expect(page.stdout).toStartWith(".\\\"");
    expect(page.stdout).toContain('.TH STOA 1 "');
    for (const section of ["NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "FILES"]) {
      expect(page.stdout).toMatch(new RegExp(`^\\.SH ${section}$`, "m"));
    }
    // Nothing outside ASCII: troff reads raw input as Latin-1.
    expect(page.stdout).toMatch(/^[\x00-\x7f]*$/);
  });

  test("has a section for every command and subcommand, with every flag its --help lists", () => {
    const text = plain(page.stdout);
    const tree = helpTree();
    expect(tree.map((n) => n.path)).toEqual(expect.arrayContaining(["stoa hotlink user add", "stoa addr prefix add", "stoa man"]));
    for (const { path, flags } of tree) {
      if (path === "stoa") continue;
      const start = text.indexOf(`\n.SS ${path}\n`);
      expect(start, `no section for ${path}`).toBeGreaterThan(0);
      const next = text.indexOf("\n.S", start + 1);
      const section = text.slice(start, next);
      for (const flag of flags) {
        if (flag === "--help") continue;
        expect(section, `${path}: ${flag} missing`).toMatch(new RegExp(`\\n\\.TP\\n(-\\w, )?${flag}( |\\n)`));
      }
    }
  });

  test("names the exit codes, the STOA_* environment and the run dir layout", () => {
    const text = plain(page.stdout);
    const after = (heading: string) => text.slice(text.indexOf(`.SH ${heading}`));
    expect(after("EXIT STATUS")).toMatch(/^\.TP\n2\n.*usage/m);
    for (const name of ["STOA_CONFIG", "STOA_META_TOKEN", "STOA_RUN_DIR", "STOA_LOG_LEVEL", "STOA_DATA_PATH"]) {
      expect(after("ENVIRONMENT")).toContain(`.TP\n${name}\n`);
    }
    for (const file of ["<run dir>/gateway.sock", "<run dir>/pub/<pub_id>/service.sock", "<run dir>/hotlink/<user>.sock", "<state dir>/meta.db"]) {
      expect(after("FILES")).toContain(`.TP\n${file}\n`);
    }
  });

  test("the build wrote the same page to dist/stoa.1", () => {
    expect(readFileSync(join(ROOT, "dist", "stoa.1"), "utf8")).toBe(page.stdout);
  });

  test.if(hasGroff)("groff renders it without a warning", () => {
    const proc = Bun.spawnSync(["groff", "-man", "-Tutf8", "-ww", "-z"], { stdin: Buffer.from(page.stdout) });
    expect(proc.exitCode).toBe(0);
    expect(proc.stderr.toString()).toBe("");
  });

  test.if(hasMan)("man -l renders it without a warning, with the flags readable", () => {
    const proc = Bun.spawnSync(["man", "--warnings", "-l", "-"], {
      stdin: Buffer.from(page.stdout),
      env: { ...process.env, MANWIDTH: "100", MAN_KEEP_FORMATTING: "", PAGER: "cat", MANPAGER: "cat" },
    });
    expect(proc.stderr.toString()).toBe("");
    expect(proc.exitCode).toBe(0);
    const rendered = proc.stdout.toString();
    expect(rendered).toContain("--data-path <epoll|bun>");
    expect(rendered).toContain("stoa hotlink serve");
  });
});
