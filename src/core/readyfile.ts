/**
 * `--ready-file F` of the daemons (`stoa up`, `stoa gateway`): once serving, F is written with
 * one JSON object `{"pid":…,…}` and a newline, atomically (core/atomicfile.ts: a temporary file
 * beside it, then a rename), so a script that sees F can read all of it and connect at once:
 *   stoa up --ready-file /tmp/up.ready & while [ ! -e /tmp/up.ready ]; do sleep 0.1; done
 * It is written at the moment a supervisor is told the daemon is ready; F is removed at shutdown
 * only if it is still the one this process wrote.
 */
import { readFileSync, rmSync } from "node:fs";
import { writeFileAtomic } from "./atomicfile.ts";

/** Writes `path` atomically with `{pid, ...fields}`; returns a remover for shutdown. */
export function writeReadyFile(path: string, fields: Record<string, unknown>): () => void {
  const text = `${JSON.stringify({ pid: process.pid, ...fields })}\n`;
  writeFileAtomic(path, text, { mode: 0o644, what: "the ready file" });
  return () => {
    try {
      if (readFileSync(path, "utf8") === text) rmSync(path, { force: true });
    } catch {
      // Gone already, or replaced by someone else's: not ours to remove.
    }
  };
}
