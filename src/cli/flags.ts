/**
 * Flags several commands take, declared once so that their help says the same true thing: the
 * run and state dirs (with core/paths.ts's default chain), the metaserver's URL and the flags
 * that find a hotlink daemon's control socket. Light on purpose — it imports only the flag DSL — so a command that
 * takes `--run-dir` pays nothing more for it. The flags of the long-running commands that come
 * with wiring (`logFlags`, `waitFlag`, `portsFlag`) are in common.ts.
 */
import { type Flag, str } from "./command.ts";

/** core/paths.ts `defaultRunDir()`, in words: for help, the man page and `--run-dir`. */
export const RUN_DIR_DEFAULT = "/run/stoa as root, else $XDG_RUNTIME_DIR/stoa, else /tmp/stoa-<uid>";

/** core/paths.ts `defaultStateDir()`, in words. */
export const STATE_DIR_DEFAULT = "/var/lib/stoa as root, else $XDG_STATE_HOME/stoa, else ~/.local/state/stoa";

/**
 * `--run-dir DIR`: `what` the command keeps or finds there; help adds the default. Undefined
 * when not given (the command resolves `defaultRunDir()`, and may say whether it was given).
 * @example
 * flags: { runDir: runDirFlag("run dir of the local gateway") }
 */
export function runDirFlag(what: string): Flag<string | undefined> {
  return str(`${what} (default: ${RUN_DIR_DEFAULT})`, { placeholder: "dir" });
}

/**
 * `--meta URL`: the metaserver a client command talks to, by default the one on this host at
 * `port` (meta/protocol.ts `DEFAULT_META_PORT`, passed in so that this module stays light).
 * @example
 * flags: { meta: metaFlag(DEFAULT_META_PORT) }
 */
export function metaFlag(port: number): Flag<string> {
  return str("metaserver URL", { default: `http://[::1]:${port}`, placeholder: "url" });
}

/** `--state-dir DIR`, like {@link runDirFlag} with `defaultStateDir()`. */
export function stateDirFlag(what: string): Flag<string | undefined> {
  return str(`${what} (default: ${STATE_DIR_DEFAULT})`, { placeholder: "dir" });
}

/**
 * `--control PATH` and `--run-dir DIR`: where a hotlink daemon's control socket is, for
 * `stoa hotlink connect` (which binds it) and `tunnel|ipc|ls|close` (which reach it).
 */
export function hotlinkControlFlags(): { control: Flag<string | undefined>; runDir: Flag<string | undefined> } {
  return {
    control: str("the daemon's control socket (default: <run-dir>/hotlink/<user>.sock)", { placeholder: "path" }),
    runDir: runDirFlag("run dir of the daemon"),
  };
}
