/**
 * The one small command-line layer of stoa: `node:util` `parseArgs` plus subcommands, help
 * rendering and zod validation of flag values. Every file in src/cli/ describes its command
 * with {@link defineCommand}; src/main.ts lists them in a table of lazy loaders so that only
 * the command that runs is loaded.
 *
 * Conventions: flags are declared with camelCase keys and spelled kebab-case on the command
 * line (`logLevel` → `--log-level`). `-h`/`--help` is added to every command. Usage errors are
 * `StoaError("usage")` (exit 2); anything else a command throws is a runtime failure (exit 1).
 * The parser checks what it can, once, so a command's `run` gets values of their final type: a
 * flag of `choices` has their union as its type, a `required` one is never undefined. Errors from
 * the layers below carry no command name; {@link under} puts it in front.
 */
import { parseArgs } from "node:util";
import { z } from "zod";
import { kebab, resolveConfig } from "../core/config.ts";
import { StoaError, describeError } from "../core/errors.ts";

/** One flag: how parseArgs reads it, how help shows it, and the zod schema its value must pass. */
export interface Flag<T> {
  readonly kind: "string" | "boolean";
  readonly description: string;
  readonly short?: string;
  readonly multiple?: boolean;
  /** Shown in help: `--port <port>`. */
  readonly placeholder?: string;
  /** The raw default, shown in help and fed through the schema when the flag is absent. */
  readonly default?: string | boolean | string[];
  readonly schema: z.ZodType<T>;
  /** Values offered by shell completion and listed in help. */
  readonly choices?: readonly string[];
  /** What shell completion offers for the value: file or directory names (see {@link valueCompletion}). */
  readonly complete?: ValueCompletion;
  /** The command cannot run without it: see {@link RequiredFlag}. */
  readonly required?: RequiredFlag;
}

/**
 * A flag the command cannot run without. The parser refuses its absence (or an empty value) with
 * one wording, `stoa addr add: --dev is required, e.g. --dev eth0 (see 'stoa addr add --help')`,
 * exit 2 — after the environment and `--config` file of a `config: true` command had their say —
 * and help marks it "(required)". It has no default: the user must say which.
 */
interface RequiredFlag {
  /** A value to show in the error, e.g. `eth0`. */
  readonly example: string;
}

/** Names a shell completes after a flag: any file (or socket), or directories only. */
export type ValueCompletion = "file" | "dir";

/**
 * A flag's completion kind: `complete` when given, else from its placeholder — `file` and `path`
 * complete file names, `dir` directories — so that help and completion agree without a second list.
 */
function valueCompletion(opts: { placeholder?: string; complete?: ValueCompletion }): ValueCompletion | undefined {
  if (opts.complete !== undefined) return opts.complete;
  if (opts.placeholder === "file" || opts.placeholder === "path") return "file";
  if (opts.placeholder === "dir") return "dir";
  return undefined;
}

/** The values a flag's schema admits, when it is a plain `z.enum` (offered like `choices`). */
function enumChoices(schema: z.ZodType | undefined): readonly string[] | undefined {
  return schema instanceof z.ZodEnum ? (schema.options as readonly string[]) : undefined;
}

type FlagMap = Record<string, Flag<unknown>>;
type FlagValues<F extends FlagMap> = { [K in keyof F]: F[K] extends Flag<infer T> ? T : never };

/** A boolean switch, false unless given. */
export function bool(description: string, opts: { short?: string } = {}): Flag<boolean> {
  return { kind: "boolean", description, default: false, schema: z.boolean(), ...opts };
}

interface ValueOpts {
  short?: string;
  placeholder?: string;
  /** Completion of the value; inferred from a `file`/`path`/`dir` placeholder (see {@link valueCompletion}). */
  complete?: ValueCompletion;
}

interface StringOpts<T> extends ValueOpts {
  schema?: z.ZodType<T>;
}

interface ChoiceOpts<C extends string> extends ValueOpts {
  choices: readonly C[];
}

/** What makes a value always present: a default, or the parser's refusal to go without it. */
type Present<D extends string> = { default: D; required?: never } | { required: RequiredFlag; default?: never };

/**
 * A flag that takes a value. With a default, or `required`, the value is always present;
 * otherwise it is `undefined` when not given. A flag of `choices` takes one of them, and its
 * value's type is their union: `run` needs no check or cast of its own.
 * @example
 * const port = str("port to listen on", { default: "8081", schema: z.coerce.number().int() });
 * const mode = str("how to run", { default: "fast", choices: ["fast", "safe"] }); // Flag<"fast" | "safe">
 * const dev = str("the interface", { placeholder: "IF", required: { example: "eth0" } }); // Flag<string>
 */
export function str<const C extends string>(description: string, opts: ChoiceOpts<C> & Present<NoInfer<C>>): Flag<C>;
export function str<const C extends string>(description: string, opts: ChoiceOpts<C>): Flag<C | undefined>;
export function str<T = string>(description: string, opts: StringOpts<T> & Present<string>): Flag<NoInfer<T>>;
export function str<T = string>(description: string, opts?: StringOpts<T>): Flag<NoInfer<T> | undefined>;
export function str<T>(
  description: string,
  opts: StringOpts<T> & { choices?: readonly string[]; default?: string; required?: RequiredFlag } = {},
): Flag<T | undefined> {
  const base = opts.schema ?? (opts.choices ? z.enum(opts.choices as [string, ...string[]]) : z.string());
  const schema = opts.default === undefined ? base.optional() : base;
  const choices = opts.choices ?? enumChoices(opts.schema);
  const complete = valueCompletion(opts);
  return {
    kind: "string",
    description,
    ...opts,
    ...(choices ? { choices } : {}),
    ...(complete ? { complete } : {}),
    schema: schema as z.ZodType<T | undefined>,
  };
}

/** A repeatable flag (`--tunnel a --tunnel b`); each value passes through `schema`. */
export function list<T = string>(
  description: string,
  opts: { short?: string; placeholder?: string; schema?: z.ZodType<T>; complete?: ValueCompletion } = {},
): Flag<NoInfer<T>[]> {
  const item = opts.schema ?? z.string();
  const complete = valueCompletion(opts);
  return {
    kind: "string",
    description,
    multiple: true,
    default: [],
    short: opts.short,
    placeholder: opts.placeholder,
    ...(complete ? { complete } : {}),
    schema: z.array(item) as unknown as z.ZodType<T[]>,
  };
}

interface Positional {
  readonly name: string;
  readonly description: string;
  readonly required?: boolean;
  readonly variadic?: boolean;
  readonly choices?: readonly string[];
}

interface Context<F extends FlagMap> {
  readonly flags: FlagValues<F>;
  readonly args: string[];
  /** The full command path, e.g. `stoa addr add`, for messages. */
  readonly path: string;
  /** The program's command table, for commands that describe the program (completion). */
  readonly commands: readonly CommandEntry[];
  /**
   * `config: true` commands started with `--config F` (or `$STOA_CONFIG`): F, and the flags
   * resolved again — the same command line and environment, F read anew — for a daemon's
   * SIGHUP (cli/common.ts `reloadConfigOnHangup`). Throws `StoaError("config")` for a bad F.
   */
  readonly config?: { file: string; reread(): FlagValues<F> };
}

/** What src/main.ts lists for each top-level command: enough to print `stoa --help` unloaded. */
export interface CommandEntry {
  readonly name: string;
  readonly summary: string;
  readonly load: () => Promise<{ default: Command }>;
  /**
   * A daemon that moves bulk bytes through Bun's sockets until stopped (true), or a group's
   * subcommands that do: run with the allocator's setting for that (core/runtime.ts
   * `execWithServiceAllocator`, from run.ts).
   */
  readonly movesBytes?: true | readonly string[];
}

export interface LeafCommand<F extends FlagMap = FlagMap> {
  readonly name: string;
  readonly summary: string;
  readonly description?: string;
  readonly flags: F;
  readonly positionals?: readonly Positional[];
  readonly examples: readonly string[];
  /**
   * Also read flags from `STOA_<FLAG>` environment variables and a `--config` JSON file (the
   * command must declare `config: configFlag()`), for long-running commands.
   */
  readonly config?: boolean;
  /** Returns the exit code (default 0). */
  run(ctx: Context<F>): Promise<number | void> | number | void;
}

export interface GroupCommand {
  readonly name: string;
  readonly summary: string;
  readonly description?: string;
  readonly subcommands: readonly Command[];
  readonly examples: readonly string[];
}

export type Command = LeafCommand<FlagMap> | GroupCommand;

/** Declares a command; the identity function that makes flag types flow into `run`. */
export function defineCommand<F extends FlagMap>(cmd: LeafCommand<F>): Command {
  return cmd as unknown as Command;
}

export function defineGroup(cmd: GroupCommand): Command {
  return cmd;
}

export function isGroup(cmd: Command): cmd is GroupCommand {
  return "subcommands" in cmd;
}

export { kebab };

/** Parses argv for one leaf command and validates every flag. Throws StoaError("usage"). */
export function parseCommandLine<F extends FlagMap>(
  cmd: LeafCommand<F>,
  argv: string[],
  path: string,
  commands: readonly CommandEntry[] = [],
): { help: true } | { help: false; ctx: Context<F> } {
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [key, flag] of Object.entries(cmd.flags)) {
    options[kebab(key)] = {
      type: flag.kind,
      ...(flag.short ? { short: flag.short } : {}),
      ...(flag.multiple ? { multiple: true } : {}),
    };
  }
  let parsed: { values: Record<string, unknown>; positionals: string[] };
  try {
    parsed = parseArgs({ args: dashValues(argv, options), allowPositionals: true, options, strict: true });
  } catch (err) {
    throw new StoaError("usage", `${path}: ${explainParseError(err)} (see '${path} --help')`);
  }
  if (parsed.values.help === true) return { help: true };

  const values: Record<string, unknown> = {};
  const explicit: Record<string, unknown> = {};
  for (const [key, flag] of Object.entries(cmd.flags)) {
    const given = parsed.values[kebab(key)];
    if (given !== undefined) explicit[key] = given;
    const raw = given ?? flag.default;
    const result = flag.schema.safeParse(raw);
    if (!result.success) {
      const issue = result.error.issues[0];
      const shown = Array.isArray(raw) ? raw.join(", ") : String(raw);
      const reason = flag.choices ? `expected one of ${flag.choices.join("|")}` : (issue?.message ?? "invalid value");
      throw new StoaError("usage", `${path}: invalid --${kebab(key)} '${shown}': ${reason}`);
    }
    values[key] = result.data;
  }
  let config: Context<F>["config"];
  if (cmd.config) {
    // A re-read starts again from the command line and the defaults, so a setting deleted from
    // the file goes back to its default instead of keeping the value the file gave at start.
    const fromArgv = { ...values };
    Object.assign(values, layeredFlags(cmd.flags, explicit, path));
    const file = configFile(explicit);
    const reread = (): FlagValues<F> => {
      const next = { ...fromArgv, ...layeredFlags(cmd.flags, explicit, path) };
      checkRequired(cmd.flags, next, path, "config");
      return next as FlagValues<F>;
    };
    if (file !== undefined) config = { file, reread };
  }
  checkPositionals(cmd.positionals ?? [], parsed.positionals, path);
  checkRequired(cmd.flags, values, path, "usage");
  return { help: false, ctx: { flags: values as FlagValues<F>, args: parsed.positionals, path, commands, ...(config ? { config } : {}) } };
}

/**
 * For commands with `config: true`: flags the user did not give come from `STOA_<FLAG>` in the
 * environment, then from the JSON file named by `--config` / `STOA_CONFIG`, then the default
 * (src/core/config.ts does the merging and says where a bad value came from).
 */
function layeredFlags(flags: FlagMap, explicit: Record<string, unknown>, path: string): Record<string, unknown> {
  const file = configFile(explicit);
  const shape: Record<string, z.ZodType> = {};
  for (const [key, flag] of Object.entries(flags)) {
    if (key === "config") continue;
    shape[key] = flag.default === undefined ? flag.schema : flag.schema.prefault(flag.default);
  }
  const given = Object.fromEntries(Object.entries(explicit).filter(([key]) => key !== "config"));
  try {
    return resolveConfig(z.object(shape), { flags: given, file });
  } catch (err) {
    if (err instanceof StoaError) throw new StoaError(err.code, `${path}: ${err.message}`);
    throw err;
  }
}

function configFile(explicit: Record<string, unknown>): string | undefined {
  return typeof explicit.config === "string" ? explicit.config : process.env.STOA_CONFIG || undefined;
}

/** The `--config` flag every `config: true` command declares. */
export const configFlag = (): Flag<string | undefined> =>
  str("JSON file of flag values (flags > STOA_* env > this file)", { placeholder: "file" });

/**
 * Every `required` flag has a value (an empty one does not count), in the one wording of
 * {@link RequiredFlag}: a usage error at start, a config error when a daemon re-reads its
 * `--config` file (the reload keeps the running values).
 */
function checkRequired(flags: FlagMap, values: Record<string, unknown>, path: string, code: "usage" | "config"): void {
  for (const [key, flag] of Object.entries(flags)) {
    const value = values[key];
    if (flag.required === undefined || (value !== undefined && value !== "")) continue;
    const name = `--${kebab(key)}`;
    throw new StoaError(code, `${path}: ${name} is required, e.g. ${name} ${flag.required.example} (see '${path} --help')`);
  }
}

/**
 * Runs `fn` and puts the command path before the message of a StoaError it throws (or its
 * promise rejects with): errors from src/<subsystem>/ carry no command name, and every stoa
 * error line starts with one. Other errors pass unchanged.
 * @example
 * const owned = under(path, () => addOwnedAddress({ addr, dev, runDir })); // "stoa addr add: cannot add …"
 */
export function under<T>(path: string, fn: () => T): T {
  const prefixed = (err: unknown): never => {
    if (err instanceof StoaError) throw new StoaError(err.code, `${path}: ${err.message}`, { cause: err });
    throw err;
  };
  try {
    const result = fn();
    return (result instanceof Promise ? result.catch(prefixed) : result) as T;
  } catch (err) {
    return prefixed(err);
  }
}

function checkPositionals(specs: readonly Positional[], args: string[], path: string): void {
  const variadic = specs.some((p) => p.variadic);
  const required = specs.filter((p) => p.required).length;
  if (args.length < required) {
    const missing = specs[args.length];
    throw new StoaError("usage", `${path}: missing <${missing?.name ?? "argument"}> (see '${path} --help')`);
  }
  if (!variadic && args.length > specs.length) {
    throw new StoaError("usage", `${path}: unexpected argument '${args[specs.length]}' (see '${path} --help')`);
  }
  specs.forEach((spec, i) => {
    const value = args[i];
    if (value !== undefined && spec.choices && !spec.choices.includes(value)) {
      throw new StoaError("usage", `${path}: <${spec.name}> must be one of ${spec.choices.join("|")}, got '${value}'`);
    }
  });
}

/**
 * parseArgs takes every argument that starts with `-` for a flag, so `--count -1` reads as
 * `--count` without its value and the error would blame the flag, not the value. A flag that
 * takes a value takes the next argument as that value when it is not one of the command's own
 * flags (`--count --json` still says `--count` needs a value); the value then gets its own
 * check and error ("invalid --count '-1': …").
 */
function dashValues(argv: string[], options: Record<string, { type: "string" | "boolean"; short?: string }>): string[] {
  const takesValue = new Set<string>();
  const known = new Set<string>();
  for (const [name, opt] of Object.entries(options)) {
    known.add(`--${name}`);
    if (opt.short) known.add(`-${opt.short}`);
    if (opt.type === "string") {
      takesValue.add(`--${name}`);
      if (opt.short) takesValue.add(`-${opt.short}`);
    }
  }
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    if (arg === "--") {
      out.push(...argv.slice(i));
      break;
    }
    const next = argv[i + 1];
    const flagOfNext = next?.split("=")[0] ?? "";
    if (takesValue.has(arg) && next !== undefined && next.startsWith("-") && next !== "-" && next !== "--" && !known.has(flagOfNext)) {
      out.push(arg.startsWith("--") ? `${arg}=${next}` : `${arg}${next}`);
      i++;
      continue;
    }
    out.push(arg);
  }
  return out;
}

function explainParseError(err: unknown): string {
  const code = err instanceof Error && "code" in err ? String(err.code) : "";
  const message = describeError(err);
  const option = /'(-[^']*)'/.exec(message)?.[1];
  switch (code) {
    case "ERR_PARSE_ARGS_UNKNOWN_OPTION":
      return `unknown flag ${option ?? message}`;
    case "ERR_PARSE_ARGS_INVALID_OPTION_VALUE":
      return option ? `flag ${option.split(" ")[0]} ${/argument missing|argument is ambiguous/.test(message) ? "needs a value" : "takes no value"}` : message;
    default:
      return message;
  }
}
