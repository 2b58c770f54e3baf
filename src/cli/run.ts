/**
 * The dispatcher behind src/main.ts: finds the command, loads only its module, parses and
 * validates its flags, runs it and maps the outcome to an exit code (0 ok, 1 runtime failure,
 * 2 usage error). Errors are one line on stderr; the stack only with `--log-level debug` or
 * `STOA_DEBUG=1`.
 */
import { type Command, type CommandEntry, isGroup, parseCommandLine } from "./command.ts";
import { PROGRAM, commandHelp, programHelp } from "./help.ts";
import { StoaError, describeError, exitCodeFor } from "../core/errors.ts";
import { endOnBrokenStdout } from "../core/stdout.ts";

/** Runs the program and resolves to the exit code; never throws. */
export async function runCli(entries: readonly CommandEntry[], argv: string[]): Promise<number> {
  // `stoa … | head -1`: a reader that stops reading ends us quietly, exit 0 (core/stdout.ts).
  endOnBrokenStdout();
  const debug = process.env.STOA_DEBUG === "1" || argv.some((a, i) => a === "--log-level=debug" || (a === "--log-level" && argv[i + 1] === "debug"));
  try {
    return await dispatch(entries, argv);
  } catch (err) {
    process.stderr.write(`${describeError(err)}\n`);
    if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return exitCodeFor(err);
  }
}

async function dispatch(entries: readonly CommandEntry[], argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined) {
    process.stderr.write(programHelp(entries));
    return 2;
  }
  if (first === "-h" || first === "--help") {
    process.stdout.write(programHelp(entries));
    return 0;
  }
  if (first === "help") {
    if (rest.length === 0) {
      process.stdout.write(programHelp(entries));
      return 0;
    }
    return dispatch(entries, [...rest, "--help"]);
  }
  if (first === "--version" || first === "-V") return dispatch(entries, ["version"]);
  const entry = entries.find((e) => e.name === first);
  if (!entry) {
    const hint = suggest(first, entries.map((e) => e.name));
    const what = first.startsWith("-") ? `unknown flag ${first}` : `unknown command '${first}'`;
    throw new StoaError("usage", `${PROGRAM}: ${what}${hint ? ` (did you mean '${hint}'?)` : ""} (see '${PROGRAM} --help')`);
  }
  if (movesBytes(entry, rest)) {
    // Before the command's module loads: the exec (when there is one) starts it over.
    const failed = (await import("../core/runtime.ts")).execWithServiceAllocator();
    if (failed !== null && process.env.STOA_DEBUG === "1") process.stderr.write(`${PROGRAM}: the allocator keeps its default: ${failed}\n`);
  }
  const cmd = (await entry.load()).default;
  return runCommand(cmd, rest, `${PROGRAM} ${entry.name}`, entries);
}

/** Whether `argv` (after the command's name) runs one of `entry`'s `movesBytes` daemons; help is not one. */
export function movesBytes(entry: CommandEntry, argv: readonly string[]): boolean {
  const marked = entry.movesBytes;
  if (marked === undefined || argv.some((a) => a === "-h" || a === "--help")) return false;
  return marked === true || (argv[0] !== undefined && marked.includes(argv[0]));
}

async function runCommand(cmd: Command, argv: string[], path: string, entries: readonly CommandEntry[]): Promise<number> {
  if (isGroup(cmd)) {
    const [sub, ...rest] = argv;
    if (sub === undefined) {
      process.stderr.write(commandHelp(cmd, path));
      return 2;
    }
    if (sub === "-h" || sub === "--help" || sub === "help") {
      process.stdout.write(commandHelp(cmd, path));
      return 0;
    }
    const next = cmd.subcommands.find((s) => s.name === sub);
    if (!next) {
      const hint = suggest(sub, cmd.subcommands.map((s) => s.name));
      throw new StoaError("usage", `${path}: unknown command '${sub}'${hint ? ` (did you mean '${hint}'?)` : ""} (see '${path} --help')`);
    }
    return runCommand(next, rest, `${path} ${next.name}`, entries);
  }
  const parsed = parseCommandLine(cmd, argv, path, entries);
  if (parsed.help) {
    process.stdout.write(commandHelp(cmd, path));
    return 0;
  }
  return (await cmd.run(parsed.ctx)) ?? 0;
}

/** The closest name within edit distance 2, for "did you mean". */
function suggest(input: string, names: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const name of names) {
    const d = editDistance(input, name);
    if (d < bestDistance) {
      best = name;
      bestDistance = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 2 || a.length > 64) return 3;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      row.push(Math.min((prev[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + cost));
    }
    prev = row;
  }
  return prev[b.length] ?? 3;
}
