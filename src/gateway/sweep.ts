/**
 * Reclaiming what crashed publishers leave in `<run_dir>/pub/`: a publisher removes its
 * `pub/<pub_id>/` when it stops, but one killed (SIGKILL, OOM, power) leaves the directory and
 * its socket files, which nobody with a fresh random pub_id would ever reuse. The gateway owns
 * the subtree it routes into, so it sweeps it: at start and every `SWEEP_INTERVAL_MS`.
 *
 * A directory is removed only when all of these hold, so a live or starting publisher is never
 * touched: it is a real directory (not a symlink) owned by the gateway's uid, named a valid
 * pub_id; nothing in it has changed for `SWEEP_GRACE_MS` (a publisher creates its directory and
 * binds its sockets within milliseconds); and every entry is a socket that refuses connections
 * (core/unixsock.ts's probe: a live one, even a stopped process's, accepts; one that does not
 * answer in time counts as live). Removal unlinks the dead sockets, then `rmdir` — which fails,
 * harmlessly, if a publisher put something there meanwhile.
 */
import { lstat, readdir, rmdir } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../core/log.ts";
import { publisherDir, publishersDir } from "../core/paths.ts";
import { prepareUnixPath } from "../core/unixsock.ts";
import { isValidPubId } from "../stream/names.ts";
import { PUBLISHER_UID } from "./routes.ts";
import { describeError } from "../core/errors.ts";

/** How often a running gateway sweeps. */
export const SWEEP_INTERVAL_MS = 60_000;
/** A directory changed more recently than this may belong to a publisher that is starting. */
const SWEEP_GRACE_MS = 10_000;
/** Most directories looked at per sweep (the rest wait for the next one). */
const MAX_SWEPT_PER_PASS = 1_000;

/** Removes crashed publishers' directories; returns the pub_ids reclaimed. Never throws. */
export async function sweepDeadPublishers(runDir: string, log: Logger, options: { graceMs?: number; uid?: number } = {}): Promise<string[]> {
  const grace = options.graceMs ?? SWEEP_GRACE_MS;
  const uid = options.uid ?? PUBLISHER_UID;
  let names: string[];
  try {
    names = (await readdir(publishersDir(runDir), { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name);
  } catch {
    return []; // nothing published here yet
  }
  const reclaimed: string[] = [];
  for (const pubId of names.slice(0, MAX_SWEPT_PER_PASS)) {
    if (!isValidPubId(pubId)) continue;
    const dir = publisherDir(runDir, pubId);
    try {
      const st = await lstat(dir);
      if (!st.isDirectory() || st.uid !== uid || Date.now() - st.mtimeMs < grace) continue;
      const entries = await readdir(dir);
      if (entries.length === 0) continue; // not what a crash leaves; a publisher may be starting
      let dead = true;
      for (const entry of entries) {
        const path = join(dir, entry);
        const est = await lstat(path);
        if (!est.isSocket() || est.uid !== uid) {
          dead = false;
          break;
        }
      }
      if (!dead) continue;
      // Each throws "in_use" for a live (or silent) socket and unlinks a refusing one.
      for (const entry of entries) await prepareUnixPath(join(dir, entry));
      await rmdir(dir);
      reclaimed.push(pubId);
    } catch (err) {
      // Live, changed meanwhile, or not ours: leave it.
      log.debug("kept a publisher directory", { pub_id: pubId, reason: describeError(err) });
    }
  }
  if (reclaimed.length > 0) log.info("removed crashed publishers' socket directories", { count: reclaimed.length, pub_ids: reclaimed.slice(0, 10).join(",") });
  return reclaimed;
}
