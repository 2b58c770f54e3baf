/**
 * Dropping root for good: a supervisor's workers open nothing privileged themselves — they get
 * their sockets from the supervisor — then become `--user` before they touch a packet. Through
 * libc's setgroups, setresgid, setresuid, in that order (groups and gid while still root), which
 * glibc applies to every thread of the process; the raw syscalls would change only the calling
 * thread and leave Bun's other threads root (a trap measured on this kind of machine). Afterwards
 * every thread's real, effective, saved and filesystem ids are checked in /proc: a drop that did
 * not take everywhere is an error, never a warning.
 */
import { readFileSync, readdirSync } from "node:fs";
import { StoaError } from "../core/errors.ts";
import { errno, libc, strerror } from "./libc.ts";

export interface Account {
  name: string;
  uid: number;
  gid: number;
}

/** `name` (or a numeric uid) from /etc/passwd. */
export function lookupUser(name: string, passwd = "/etc/passwd"): Account {
  const text = readFileSync(passwd, "utf8");
  for (const line of text.split("\n")) {
    const [user, , uid, gid] = line.split(":");
    if (user === undefined || uid === undefined || gid === undefined) continue;
    if (user === name || uid === name) return { name: user, uid: Number(uid), gid: Number(gid) };
  }
  throw new StoaError("not_found", `no user ${name} in ${passwd}: give --user an existing account (e.g. nobody)`);
}

function ids(status: string, field: "Uid" | "Gid"): number[] {
  const line = new RegExp(`^${field}:\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)`, "m").exec(status);
  return line === null ? [] : line.slice(1).map(Number);
}

/** Every thread of this process with its four uids and gids (from /proc/self/task). */
export function threadIds(): { tid: string; uids: number[]; gids: number[] }[] {
  return readdirSync("/proc/self/task").map((tid) => {
    const status = readFileSync(`/proc/self/task/${tid}/status`, "utf8");
    return { tid, uids: ids(status, "Uid"), gids: ids(status, "Gid") };
  });
}

/** Becomes `account` in every thread: supplementary groups = [its gid], then gid, then uid. */
export function dropPrivileges(account: Account): void {
  const groups = new Uint32Array([account.gid]);
  if (libc().setgroups(1, groups) !== 0) throw new StoaError("permission", `setgroups(${account.gid}): ${strerror(errno())} (dropping privileges needs root)`);
  if (libc().setresgid(account.gid, account.gid, account.gid) !== 0) throw new StoaError("permission", `setresgid(${account.gid}): ${strerror(errno())}`);
  if (libc().setresuid(account.uid, account.uid, account.uid) !== 0) throw new StoaError("permission", `setresuid(${account.uid}): ${strerror(errno())}`);
  for (const t of threadIds()) {
    if (t.uids.some((u) => u !== account.uid) || t.gids.some((g) => g !== account.gid)) {
      throw new StoaError("internal", `thread ${t.tid} kept uids ${t.uids.join(",")} gids ${t.gids.join(",")} after dropping to ${account.name}: refusing to go on half-privileged`);
    }
  }
}
