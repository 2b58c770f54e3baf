/**
 * `stoa doctor`'s look at a run dir (layout: core/paths.ts): how many publishers its subtree
 * holds, and leftovers of the layout before it — publisher directories `<run_dir>/<pub_id>/`
 * directly in the run dir, which no gateway of this version routes to or lists. Only reads.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { oldLayoutPublisherDirs, publishersDir } from "../core/paths.ts";
import type { Finding } from "./checks.ts";

/** Leftover directories named in the finding; the rest are counted. */
const MAX_NAMED = 5;

function dirsIn(dir: string): string[] | null {
  try {
    return readdirSync(dir, { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name);
  } catch {
    return null;
  }
}

export function runDirFinding(runDir: string): Finding {
  const root = dirsIn(runDir);
  if (root === null) return { name: "run dir", status: "ok", detail: `${runDir} does not exist yet (created by the first gateway or publisher)` };
  const publishers = dirsIn(publishersDir(runDir))?.length ?? 0;
  const old = oldLayoutPublisherDirs(runDir);
  const detail = `${runDir}: ${publishers} publisher director${publishers === 1 ? "y" : "ies"} in ${publishersDir(runDir)}`;
  if (old.length === 0) return { name: "run dir", status: "ok", detail };
  const named = old.slice(0, MAX_NAMED).map((n) => join(runDir, n));
  const more = old.length > MAX_NAMED ? ` and ${old.length - MAX_NAMED} more` : "";
  return {
    name: "run dir",
    status: "warn",
    detail: `${detail}; ${old.length} left from an older stoa (publishers now live in pub/<pub_id>/): ${named.join(", ")}${more}`,
    fix: `no gateway of this version routes to them: stop any older stoa pub or gateway on ${runDir}, then remove them (rm -r ${named.join(" ")}${more === "" ? "" : " …"})`,
  };
}
