/**
 * One config layer: command-line flags > `STOA_*` environment > JSON config file, validated by
 * one zod object schema.
 *
 * Keys: the schema's keys are canonical. A key matches any spelling with the same words —
 * `runDir`, `run_dir` and `run-dir` are one key, read from the flag `--run-dir` and the
 * environment variable `STOA_RUN_DIR`.
 * - flags: only the flags the user set; keys not in the schema are ignored (they belong to the
 *   command, e.g. `--json`). String values are coerced like environment values.
 * - env: one variable per schema key; an empty variable counts as unset. Strings are coerced by
 *   the key's schema type (optional/default/nullable unwrapped): booleans from
 *   1/true/yes/on and 0/false/no/off, numbers from decimal notation only, arrays split on
 *   commas. Anything else is left to the schema to judge.
 * - file: a JSON object of at most `MAX_CONFIG_FILE_BYTES`; an unknown key is an error.
 *
 * Every failure is a `StoaError("config")` naming where the bad value came from — the flag, the
 * variable or the file and key — and the rule it broke.
 */
import { z } from "zod";
import { StoaError, describeError } from "./errors.ts";
import { readSmallFile } from "./smallfile.ts";

/** A config file larger than this is refused before it is read. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

interface ResolveOptions {
  /** Flags the user actually set, keyed by flag or schema name. */
  flags?: Record<string, unknown>;
  /** Defaults to `process.env`. */
  env?: Record<string, string | undefined>;
  /** Path of a JSON config file; when given, it must exist. */
  file?: string;
  /** Defaults to `STOA_`. */
  prefix?: string;
}

/**
 * Merge flags, environment and config file by precedence and validate the result.
 *
 * @example
 * ```ts
 * const Gateway = z.object({
 *   runDir: z.string().default("/run/stoa"),
 *   port: z.number().int().min(1).max(65535).default(8081),
 *   verbose: z.boolean().default(false),
 * });
 * // --port 9000 wins over STOA_PORT, which wins over "port" in /etc/stoa.json
 * const cfg = resolveConfig(Gateway, { flags: { port: "9000" }, file: "/etc/stoa.json" });
 * ```
 */
export function resolveConfig<S extends z.ZodObject>(schema: S, options: ResolveOptions = {}): z.output<S> {
  const env = options.env ?? process.env;
  const prefix = options.prefix ?? "STOA_";
  const shape: Record<string, z.ZodType> = schema.shape;
  const byWords = new Map<string, string>();
  for (const key of Object.keys(shape)) byWords.set(words(key), key);

  const merged: Record<string, unknown> = {};
  const origin = new Map<string, string>();

  if (options.file !== undefined) {
    const path = options.file;
    for (const [fileKey, value] of Object.entries(readConfigFile(path))) {
      const key = byWords.get(words(fileKey));
      if (key === undefined) {
        throw new StoaError(
          "config",
          `config file ${path}: unknown key ${JSON.stringify(fileKey)}; ` +
            `remove it or use one of: ${Object.keys(shape).join(", ")}`,
        );
      }
      if (origin.has(key)) {
        throw new StoaError(
          "config",
          `config file ${path}: key ${JSON.stringify(fileKey)} repeats ${JSON.stringify(key)}; keep one`,
        );
      }
      merged[key] = value;
      origin.set(key, `config file ${path} key ${JSON.stringify(fileKey)}`);
    }
  }

  for (const [key, type] of Object.entries(shape)) {
    const name = envName(key, prefix);
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    const where = `environment variable ${name}`;
    merged[key] = coerce(raw, type, where);
    origin.set(key, where);
  }

  for (const [flag, value] of Object.entries(options.flags ?? {})) {
    const key = byWords.get(words(flag));
    if (key === undefined || value === undefined) continue;
    const where = `flag --${kebab(flag)}`;
    const type = shape[key];
    merged[key] = type === undefined ? value : coerceFlag(value, type, where);
    origin.set(key, where);
  }

  const result = schema.safeParse(merged);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const top = issue.path[0];
    const key = typeof top === "string" ? top : undefined;
    const inner = issue.path.length > 1 ? ` (at ${issue.path.slice(1).join(".")})` : "";
    if (key === undefined) return issue.message;
    const where = origin.get(key);
    if (where === undefined) {
      return `${key} is required: set --${kebab(key)}, ${prefix}${words(key)} or "${key}" in the config file`;
    }
    return `${where}${inner}: ${issue.message}`;
  });
  throw new StoaError("config", `bad configuration: ${problems.join("; ")}`);
}

/** `runDir`, `run_dir`, `run-dir` → `RUN_DIR`: the identity of a key across its spellings. */
function words(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/-/g, "_")
    .toUpperCase();
}

/** `runDir` → `STOA_RUN_DIR`: the environment variable a key is read from. */
export function envName(key: string, prefix = "STOA_"): string {
  return prefix + words(key);
}

/** `logLevel` (or `log_level`) → `log-level`: how a key is spelled as a command-line flag. */
export function kebab(key: string): string {
  return words(key).toLowerCase().replace(/_/g, "-");
}

function readConfigFile(path: string): Record<string, unknown> {
  const text = readSmallFile(path, { maxBytes: MAX_CONFIG_FILE_BYTES, what: "config file", fix: "check the path you passed" });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    const detail = describeError(err);
    throw new StoaError("config", `config file ${path} is not valid JSON (${detail}); fix its syntax`, {
      cause: err,
    });
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new StoaError("config", `config file ${path} must hold a JSON object ({ "key": value, ... })`);
  }
  return parsed as Record<string, unknown>;
}

type Kind = "boolean" | "number" | "bigint" | { array: z.ZodType } | "other";

/** What a string must become for `type`, looking through wrappers that do not change it. */
function kindOf(type: z.ZodType): Kind {
  let t: z.ZodType = type;
  for (;;) {
    if (
      t instanceof z.ZodOptional ||
      t instanceof z.ZodNullable ||
      t instanceof z.ZodDefault ||
      t instanceof z.ZodPrefault ||
      t instanceof z.ZodNonOptional ||
      t instanceof z.ZodReadonly ||
      t instanceof z.ZodCatch
    ) {
      t = t.unwrap() as z.ZodType;
    } else if (t instanceof z.ZodPipe) {
      t = t.in as z.ZodType;
    } else break;
  }
  if (t instanceof z.ZodBoolean) return "boolean";
  if (t instanceof z.ZodNumber) return "number";
  if (t instanceof z.ZodBigInt) return "bigint";
  if (t instanceof z.ZodArray) return { array: t.element as z.ZodType };
  return "other";
}

const TRUE = new Set(["1", "true", "yes", "on"]);
const FALSE = new Set(["0", "false", "no", "off"]);
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;
const INTEGER = /^[+-]?\d+$/;

// parseArgs gives strings, booleans, and arrays of strings for repeatable flags.
function coerceFlag(value: unknown, type: z.ZodType, where: string): unknown {
  if (typeof value === "string") return coerce(value, type, where);
  const kind = kindOf(type);
  if (Array.isArray(value) && typeof kind === "object") {
    return value.map((item, i) => (typeof item === "string" ? coerce(item, kind.array, `${where} item ${i + 1}`) : item));
  }
  return value;
}

function coerce(raw: string, type: z.ZodType, where: string): unknown {
  const kind = kindOf(type);
  const text = raw.trim();
  if (kind === "boolean") {
    const lower = text.toLowerCase();
    if (TRUE.has(lower)) return true;
    if (FALSE.has(lower)) return false;
    throw new StoaError("config", `${where}=${JSON.stringify(raw)}: expected a boolean (1/true/yes/on or 0/false/no/off)`);
  }
  if (kind === "number") {
    if (!DECIMAL.test(text)) throw new StoaError("config", `${where}=${JSON.stringify(raw)}: expected a decimal number`);
    return Number(text);
  }
  if (kind === "bigint") {
    if (!INTEGER.test(text)) throw new StoaError("config", `${where}=${JSON.stringify(raw)}: expected an integer`);
    return BigInt(text);
  }
  if (kind !== "other") {
    if (text === "") return [];
    return text.split(",").map((item, i) => coerce(item.trim(), kind.array, `${where} item ${i + 1}`));
  }
  return raw;
}
