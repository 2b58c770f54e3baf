/**
 * A small file a user points stoa at (a config, an ACL, a users, token or tokens file), read
 * whole as text: its size is checked before reading, so a wrong path to a huge file costs a
 * `stat`, and every failure is a `StoaError("config")` that names the file and says what to do.
 */
import { readFileSync, statSync } from "node:fs";
import { StoaError, describeError, errnoCode } from "./errors.ts";

interface SmallFileOptions {
  /** Longer is refused before reading. */
  maxBytes: number;
  /** The kind of file, for messages: "ACL file" → "ACL file /etc/x.json does not exist; …". */
  what: string;
  /** What to do when it is missing or unreadable, e.g. "check the --acl path". */
  fix: string;
  /** A missing file is `undefined` instead of an error. */
  optional?: boolean;
  /** Refuse it (`StoaError("permission")`) when group or others may read it: it holds a secret. */
  secret?: boolean;
}

/**
 * The text of `path`. Throws `StoaError("config")` when it is over `maxBytes`, missing (unless
 * `optional`) or unreadable, and `StoaError("permission")` for a `secret` file others may read.
 * @example
 * const text = readSmallFile(file, { maxBytes: MAX_ACL_FILE_BYTES, what: "ACL file", fix: "check the --acl path" });
 */
export function readSmallFile(path: string, o: SmallFileOptions & { optional: true }): string | undefined;
export function readSmallFile(path: string, o: SmallFileOptions): string;
export function readSmallFile(path: string, o: SmallFileOptions): string | undefined {
  try {
    const st = statSync(path);
    if (o.secret === true && (st.mode & 0o077) !== 0) {
      throw new StoaError("permission", `${o.what} ${path} is readable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 ${path}`);
    }
    if (st.size > o.maxBytes) {
      throw new StoaError("config", `${o.what} ${path} is ${st.size} bytes, over the ${o.maxBytes}-byte limit; is it the right file?`);
    }
    return readFileSync(path, "utf8");
  } catch (err) {
    if (err instanceof StoaError) throw err;
    const code = errnoCode(err);
    if (code === "ENOENT" && o.optional === true) return undefined;
    const why = code === "ENOENT" ? "does not exist" : `cannot be read (${code !== "" ? code : describeError(err)})`;
    throw new StoaError("config", `${o.what} ${path} ${why}; ${o.fix}`, { cause: err });
  }
}
