/**
 * The metaserver's authentication, as `stoa meta` and `stoa up` (which runs one) both take it:
 * the flags, the AuthConfig built from them (src/meta/auth.ts), and what SIGHUP re-reads. Here
 * rather than in cli/meta.ts so that `stoa up` does not load another command's module.
 */
import { bool, str } from "./command.ts";
import { type Reloadable, reloadConfigOnHangup } from "./common.ts";
import type { LogFormat, Logger, LogLevel } from "../core/log.ts";
import { onReload } from "../core/daemon.ts";
import { loadAuth, readWriters, type AuthConfig } from "../meta/auth.ts";
import { META_TOKEN_FILE } from "../meta/protocol.ts";

/** The metaserver's authentication flags, shared by `stoa meta` and `stoa up`. */
export function authFlags() {
  return {
    tokenFile: str(`admin token file, mode 0600 (default: $STOA_META_TOKEN, else <state dir>/${META_TOKEN_FILE}, created when missing)`, { placeholder: "file" }),
    tokensFile: str("extra writer tokens: one 'sha256:<hex of the token's SHA-256> [label]' per line (example below)", { placeholder: "file" }),
    readTokenFile: str("reads (GET) need this token, the admin's or a writer's; default: reads are open", { placeholder: "file" }),
    noAuth: bool("no tokens at all: anyone who reaches the port may register, replace and delete (quotas per address)"),
  };
}

/**
 * The metaserver's AuthConfig from its flags, a warning when authentication is off, and the
 * banner's words for where the token is (never the token).
 */
export function metaAuth(
  flags: { tokenFile?: string; tokensFile?: string; readTokenFile?: string; noAuth: boolean },
  stateDir: string,
  log: Logger,
): { auth: AuthConfig; banner: string } {
  const { config, where, created } = loadAuth({ ...flags, stateDir });
  if (!config.required) {
    log.warn("authentication is off (--no-auth): anyone who reaches the metaserver can register, replace and delete publishers");
    return { auth: config, banner: "no auth: anyone may write" };
  }
  if (created) log.info("created the admin token", { file: where });
  const reads = config.read === null ? "reads open" : "reads need a token";
  return { auth: config, banner: `writes need the token in ${where}; ${reads}` };
}

/**
 * What SIGHUP reloads on a metaserver: the `--config` file (log level and format, which
 * `--tokens-file` to read; anything else is logged as needing a restart), then the writer
 * tokens file (a bad file is logged and the old writers kept).
 */
export function reloadMetaOnHangup<V extends { logLevel: LogLevel; logFormat: LogFormat; tokensFile?: string; noAuth: boolean }>(
  ctx: { flags: V; config?: { file: string; reread(): V } },
  log: Logger,
  meta: { setWriters(writers: readonly string[]): void },
  more: readonly Reloadable<V>[] = [],
): void {
  if (ctx.flags.noAuth) {
    reloadConfigOnHangup(ctx, log, more);
    return;
  }
  let file = ctx.flags.tokensFile;
  reloadConfigOnHangup(ctx, log, [
    ...more,
    {
      keys: ["tokensFile"],
      apply: (next) => {
        const writers = next.tokensFile === undefined ? [] : readWriters(next.tokensFile); // throws: old file kept
        meta.setWriters(writers);
        file = next.tokensFile;
      },
    },
  ]);
  if (file === undefined && ctx.config === undefined) return;
  onReload("writer tokens", () => {
    if (file === undefined) return "none";
    const writers = readWriters(file);
    meta.setWriters(writers);
    return `${writers.length} from ${file}`;
  });
}
