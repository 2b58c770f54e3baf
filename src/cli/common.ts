/**
 * Flags and wiring shared by the long-running commands (gateway, meta, up, pub, …): logging
 * flags, the logger built from them, and graceful shutdown on SIGINT/SIGTERM.
 */
import { str } from "./command.ts";
import { type LogFormat, type LogLevel, type Logger, createLogger } from "../core/log.ts";
import { installSignalHandlers } from "../core/shutdown.ts";

/** `--log-level` and `--log-format`, spread into a command's flags. */
export function logFlags() {
  return {
    logLevel: str<LogLevel>("debug|info|warn|error; debug also prints stack traces", {
      default: "info",
      choices: ["debug", "info", "warn", "error"],
    }),
    logFormat: str<LogFormat>("text, or json for one object per line", { default: "text", choices: ["text", "json"] }),
  };
}

/** The command's logger, on stderr, and SIGINT/SIGTERM handlers that log through it. */
export function startService(name: string, flags: { logLevel: LogLevel; logFormat: LogFormat }): Logger {
  const log = createLogger({ level: flags.logLevel, format: flags.logFormat, name });
  installSignalHandlers({ log });
  return log;
}
