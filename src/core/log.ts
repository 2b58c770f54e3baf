/**
 * One way to log: structured lines, one per event, to a sink (stderr by default).
 *
 * - text: `2026-11-22T03:32:42.123Z INFO  msg key=value key2="quoted value"` — logfmt-style;
 *   a value is quoted (JSON string escapes) when it is empty or holds a space, `"`, `=`, `\`
 *   or a control character, so every entry stays on one line.
 * - json: one object per line, `{"ts":…,"level":…,"name"?:…,"msg":…,…fields}`.
 * - Under systemd (`$JOURNAL_STREAM` names the stderr we write to, systemd.exec(5)) text lines
 *   carry no timestamp — journald adds its own — and start with the syslog priority `<N>`
 *   (sd-daemon(3); journald strips it and records the level).
 *
 * Field values: an Error is written as its message, a bigint as its decimal string, a Date as
 * ISO 8601, `undefined` is left out, anything else as JSON. A field named like a reserved key
 * (`ts`, `level`, `name`, `msg`) is written with a leading underscore so it cannot forge one.
 * Levels below the threshold are bound to a no-op function: a disabled call costs one call.
 * `reconfigureLogger` changes the level and format of a logger and of every logger related to
 * it (parent, children) at run time (a daemon's SIGHUP): it binds the methods again, so the
 * disabled path stays one call to a no-op.
 * Logging never throws: an unserialisable value is written as `"[unserializable]"`.
 */
import { fstatSync } from "node:fs";
import { z } from "zod";

/** Log levels, lowest first. */
export const LogLevel = z.enum(["debug", "info", "warn", "error"]);
export type LogLevel = z.infer<typeof LogLevel>;

/** Output formats for `--log-format`. */
export const LogFormat = z.enum(["text", "json"]);
export type LogFormat = z.infer<typeof LogFormat>;

/** Structured context attached to an entry. */
export type LogFields = Record<string, unknown>;

/** Anything with a `write(string)`: `process.stderr`, a file writer, a test buffer. */
interface LogSink {
  write(chunk: string): unknown;
}

export interface Logger {
  readonly level: LogLevel;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** Whether an entry at `level` would be written (to skip building costly fields). */
  enabled(level: LogLevel): boolean;
  /** A logger that adds `fields` to every entry (the child's own fields win on a clash). */
  child(fields: LogFields): Logger;
}

export interface LoggerOptions {
  level?: LogLevel;
  format?: LogFormat;
  stream?: LogSink;
  /** Component name, written after the level (text) or as `name` (json). */
  name?: string;
  /** Journal-style text lines (no timestamp, `<N>` priority); default: `journalStderr()`. */
  journal?: boolean;
}

/**
 * Whether stderr is connected to journald: `$JOURNAL_STREAM` is `<device>:<inode>` of the
 * stream systemd gave us, and stderr is still that stream (not redirected by a script).
 */
export function journalStderr(env: NodeJS.ProcessEnv = process.env): boolean {
  const stream = env.JOURNAL_STREAM;
  if (stream === undefined || stream === "") return false;
  try {
    const st = fstatSync(2);
    return stream === `${st.dev}:${st.ino}`;
  } catch {
    return false;
  }
}

// syslog(3) priorities, as sd-daemon(3) prefixes them.
const PRIORITY: Record<LogLevel, string> = { debug: "<7>", info: "<6>", warn: "<4>", error: "<3>" };

const RANK: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };
const LABEL: Record<LogLevel, string> = {
  debug: "DEBUG",
  info: "INFO ",
  warn: "WARN ",
  error: "ERROR",
};
const RESERVED = new Set(["ts", "level", "name", "msg"]);
const UNSERIALIZABLE = "[unserializable]";

const noop = (): void => {};

/**
 * Create a logger.
 *
 * @example
 * ```ts
 * const log = createLogger({ level: "info", format: "json", name: "gateway" });
 * const conn = log.child({ peer: "10.0.0.7:4100" });
 * conn.info("accepted", { port: 8081 });
 * conn.debug("hello frame", { bytes: 42 }); // dropped at level info
 * ```
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const config: Config = {
    level: options.level ?? "info",
    format: options.format ?? "text",
    sink: options.stream ?? process.stderr,
    name: options.name,
    journal: options.journal ?? journalStderr(),
    family: new Set(),
  };
  return makeLogger(config, {});
}

/**
 * Changes the level and/or format of `log`, of the logger it was made from and of every child:
 * they share one configuration. Returns false (nothing changed) for a logger not made by
 * `createLogger` (a worker's forwarding logger has its own way).
 * @example
 * reconfigureLogger(log, { level: "debug" }); // log.debug(...) writes from now on
 */
export function reconfigureLogger(log: Logger, changes: { level?: LogLevel; format?: LogFormat }): boolean {
  const config = configs.get(log);
  if (config === undefined) return false;
  if (changes.format !== undefined) config.format = changes.format; // read at each write
  if (changes.level !== undefined && changes.level !== config.level) {
    config.level = changes.level;
    for (const ref of config.family) {
      const member = ref.deref();
      if (member === undefined) config.family.delete(ref);
      else member.bind();
    }
  }
  return true;
}

interface Config {
  level: LogLevel;
  format: LogFormat;
  sink: LogSink;
  name: string | undefined;
  journal: boolean;
  /** Every logger sharing this configuration, to bind again when the level changes. */
  family: Set<WeakRef<Member>>;
}

/** A logger's mutable form: `bind()` puts the methods for the current level in place. */
interface Member extends Omit<Logger, "level"> {
  level: LogLevel;
  bind(): void;
}

const configs = new WeakMap<Logger, Config>();

function makeLogger(config: Config, bound: LogFields): Logger {
  const member: Member = {
    level: config.level,
    debug: noop,
    info: noop,
    warn: noop,
    error: noop,
    enabled: () => false,
    child: (fields) => makeLogger(config, { ...bound, ...fields }),
    bind: () => bindMethods(member, config, bound),
  };
  member.bind();
  // Dead children (a closed tunnel's) are dropped at the next level change; few are made.
  config.family.add(new WeakRef(member));
  const logger: Logger = member;
  configs.set(logger, config);
  return logger;
}

function bindMethods(member: Member, config: Config, bound: LogFields): void {
  const threshold = RANK[config.level];
  const method = (level: LogLevel) =>
    RANK[level] < threshold
      ? noop
      : (msg: string, fields?: LogFields): void => {
          const all = fields === undefined ? bound : { ...bound, ...fields };
          const line =
            config.format === "json"
              ? jsonLine(level, config.name, msg, all)
              : textLine(level, config.name, msg, all, config.journal);
          try {
            config.sink.write(line);
          } catch {
            // A broken sink (closed stderr) must not take the process down with it.
          }
        };
  member.level = config.level;
  member.debug = method("debug");
  member.info = method("info");
  member.warn = method("warn");
  member.error = method("error");
  member.enabled = (level) => RANK[level] >= threshold;
}

function fieldKey(key: string): string {
  return RESERVED.has(key) ? `_${key}` : key;
}

function jsonLine(level: LogLevel, name: string | undefined, msg: string, fields: LogFields): string {
  const entry: Record<string, unknown> = { ts: new Date().toISOString(), level };
  if (name !== undefined) entry.name = name;
  entry.msg = msg;
  for (const [key, value] of Object.entries(fields)) entry[fieldKey(key)] = value;
  try {
    return `${JSON.stringify(entry, replacer)}\n`;
  } catch {
    // Circular values and throwing toJSON: keep the entry, lose only the bad fields.
    for (const [key, value] of Object.entries(entry)) {
      entry[key] = safeJson(value) === undefined ? UNSERIALIZABLE : value;
    }
    return `${JSON.stringify(entry, replacer)}\n`;
  }
}

function replacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Error) return value.message;
  return value;
}

function safeJson(value: unknown): string | undefined {
  try {
    return JSON.stringify(value, replacer) ?? "null";
  } catch {
    return undefined;
  }
}

function textLine(level: LogLevel, name: string | undefined, msg: string, fields: LogFields, journal: boolean): string {
  let line = journal ? `${PRIORITY[level]}${LABEL[level]} ` : `${new Date().toISOString()} ${LABEL[level]} `;
  if (name !== undefined) line += `${name}: `;
  line += escapeControl(msg);
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    line += ` ${textKey(fieldKey(key))}=${textValue(value)}`;
  }
  return `${line}\n`;
}

// Keys are identifiers in practice; anything that would break `key=value` parsing becomes `_`.
function textKey(key: string): string {
  return key === "" ? "_" : key.replace(/[\s="\\\p{Cc}]/gu, "_");
}

function textValue(value: unknown): string {
  let text: string;
  if (typeof value === "string") text = value;
  else if (typeof value === "number" || typeof value === "boolean" || typeof value === "bigint")
    text = String(value);
  else if (value === null) text = "null";
  else if (value instanceof Error) text = value.message;
  else if (value instanceof Date) text = Number.isNaN(value.getTime()) ? "Invalid Date" : value.toISOString();
  else text = safeJson(value) ?? UNSERIALIZABLE;
  return needsQuotes(text) ? JSON.stringify(text) : text;
}

function needsQuotes(text: string): boolean {
  return text === "" || /[\s="\\\p{Cc}]/u.test(text);
}

// The message is free text, unquoted, but must not split the entry over lines.
function escapeControl(text: string): string {
  return text.replace(/\p{Cc}/gu, (c) => {
    if (c === "\n") return "\\n";
    if (c === "\r") return "\\r";
    if (c === "\t") return "\\t";
    return `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
  });
}
