/**
 * ARCHITECTURE.md's layering, checked on the source: dependencies point down (nothing in
 * src/core/ imports a subsystem, src/ffi/ imports only core/errors.ts), libc is opened once
 * (src/ffi/libc.ts is the only dlopen) and cbor-x is imported by core/codec.ts alone.
 */
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const SRC = join(import.meta.dir, "..", "..", "src");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((d) => d.isFile() && d.name.endsWith(".ts"))
    .map((d) => join(d.parentPath, d.name))
    .sort();
}

/** Every module specifier `text` imports or re-exports, statically or with `import()`. */
function specifiersIn(text: string): string[] {
  const found: string[] = [];
  for (const m of text.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)"([^"]+)"/gm)) found.push(m[1] ?? "");
  return found;
}

function specifiers(file: string): string[] {
  return specifiersIn(readFileSync(file, "utf8"));
}

/** `src/…` paths a file's relative imports point at. */
function localImports(file: string): string[] {
  return specifiers(file)
    .filter((s) => s.startsWith("."))
    .map((s) => relative(SRC, join(file, "..", s)));
}

describe("layering", () => {
  test("the specifier scan sees static, type, re-export, side-effect and dynamic imports", () => {
    // The rules below rest on it: it must not miss a form.
    const text = [
      'import { a } from "../stream/a.ts";',
      'import type { B } from "../hotlink/b.ts";',
      'export { C, type D } from "../meta/c.ts";',
      'import "../gateway/d.ts";',
      'const e = await import("../addr/e.ts");',
      "import {",
      "  f,",
      '} from "cbor-x";',
    ].join("\n");
    expect(specifiersIn(text)).toEqual(["../stream/a.ts", "../hotlink/b.ts", "../meta/c.ts", "../gateway/d.ts", "../addr/e.ts", "cbor-x"]);
  });

  test("nothing in src/core/ imports a subsystem", () => {
    const upward: string[] = [];
    for (const file of sources(join(SRC, "core"))) {
      for (const target of localImports(file)) {
        if (target.startsWith("core/") || target.startsWith("ffi/")) continue;
        if (target === "../package.json") continue; // buildinfo.ts: the version
        upward.push(`${relative(SRC, file)} imports ${target}`);
      }
    }
    expect(upward).toEqual([]);
  });

  test("src/ffi/ imports nothing above it but core/errors.ts", () => {
    const upward: string[] = [];
    for (const file of sources(join(SRC, "ffi"))) {
      for (const target of localImports(file)) {
        if (target.startsWith("ffi/") || target === "core/errors.ts") continue;
        upward.push(`${relative(SRC, file)} imports ${target}`);
      }
    }
    expect(upward).toEqual([]);
    expect(localImports(join(SRC, "core", "errors.ts"))).toEqual([]);
  });

  test("libc is opened in src/ffi/libc.ts alone", () => {
    const opening = sources(SRC).filter((file) => /\bdlopen\s*[(<]/.test(readFileSync(file, "utf8")));
    expect(opening.map((f) => relative(SRC, f))).toEqual(["ffi/libc.ts"]);
  });

  test("cbor-x is imported by core/codec.ts alone", () => {
    const importing = sources(SRC).filter((file) => specifiers(file).includes("cbor-x"));
    expect(importing.map((f) => relative(SRC, f))).toEqual(["core/codec.ts"]);
  });
});
