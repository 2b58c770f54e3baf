/**
 * Help text for the program, command groups and commands. Plain text, aligned columns, every
 * command with at least one example; written for a terminal 80 columns wide.
 */
import { type Command, type CommandEntry, type Flag, type GroupCommand, type LeafCommand, isGroup, kebab } from "./command.ts";
import { envName } from "../core/config.ts";

export const PROGRAM = "stoa";
export const TAGLINE = "the plumbing at the edge of a network, in one executable";

function table(rows: [string, string][], indent = 2): string {
  const width = Math.max(...rows.map(([left]) => left.length));
  return rows.map(([left, right]) => `${" ".repeat(indent)}${left.padEnd(width)}   ${right}`.trimEnd()).join("\n");
}

export function programHelp(entries: readonly CommandEntry[]): string {
  return [
    `${PROGRAM} — ${TAGLINE}`,
    "",
    "Usage:",
    `  ${PROGRAM} <command> [flags]`,
    "",
    "Commands:",
    table(entries.map((e) => [e.name, e.summary])),
    "",
    "Flags:",
    table([
      ["-h, --help", "show help (also: stoa <command> --help)"],
      ["--version", "print the version (same as 'stoa version')"],
    ]),
    "",
    `Run '${PROGRAM} <command> --help' for a command's flags and examples.`,
    "",
  ].join("\n");
}

export function commandHelp(cmd: Command, path: string): string {
  return isGroup(cmd) ? groupHelp(cmd, path) : leafHelp(cmd, path);
}

function groupHelp(cmd: GroupCommand, path: string): string {
  return [
    `${path} — ${cmd.summary}`,
    ...(cmd.description ? ["", cmd.description] : []),
    "",
    "Usage:",
    `  ${path} <command> [flags]`,
    "",
    "Commands:",
    table(cmd.subcommands.map((s) => [s.name, s.summary])),
    "",
    "Examples:",
    ...cmd.examples.map((e) => `  ${e}`),
    "",
    `Run '${path} <command> --help' for a command's flags.`,
    "",
  ].join("\n");
}

/** A flag as help and the man page show it: `-c, --config` and ` <file>`, and its help line. */
export function flagParts(key: string, flag: Flag<unknown>): { name: string; value: string; text: string } {
  const name = `${flag.short ? `-${flag.short}, ` : ""}--${kebab(key)}`;
  const value = flag.kind === "string" ? ` <${flag.placeholder ?? (flag.choices ? flag.choices.join("|") : "value")}>` : "";
  const shownDefault = flag.kind === "string" && typeof flag.default === "string" ? ` (default: ${flag.default})` : "";
  const required = flag.required ? " (required)" : "";
  const repeat = flag.multiple ? " (repeatable)" : "";
  return { name, value, text: `${flag.description}${shownDefault}${required}${repeat}` };
}

/** The usage line of a leaf command: `stoa addr add <ADDR/128> [flags]`. */
export function leafUsage(cmd: LeafCommand, path: string): string {
  const positionals = (cmd.positionals ?? []).map((p) => {
    const name = `${p.choices ? p.choices.join("|") : p.name}${p.variadic ? "..." : ""}`;
    return p.required ? `<${name}>` : `[${name}]`;
  });
  return [path, ...positionals, Object.keys(cmd.flags).length > 0 ? "[flags]" : ""].filter(Boolean).join(" ");
}

function leafHelp(cmd: LeafCommand, path: string): string {
  const flagRows: [string, string][] = Object.entries(cmd.flags).map(([key, flag]) => {
    const { name, value, text } = flagParts(key, flag);
    return [`${name}${value}`, text];
  });
  flagRows.push(["-h, --help", "show this help"]);
  const argRows: [string, string][] = (cmd.positionals ?? []).map((p) => [p.name, p.description]);
  return [
    `${path} — ${cmd.summary}`,
    ...(cmd.description ? ["", cmd.description] : []),
    "",
    "Usage:",
    `  ${leafUsage(cmd, path)}`,
    ...(argRows.length > 0 ? ["", "Arguments:", table(argRows)] : []),
    "",
    "Flags:",
    table(flagRows),
    ...(cmd.config ? ["", ...configNote(cmd)] : []),
    "",
    "Examples:",
    ...cmd.examples.map((e) => `  ${e}`),
    "",
  ].join("\n");
}

function configNote(cmd: LeafCommand): string[] {
  const sample = Object.keys(cmd.flags).find((k) => k !== "config") ?? "logLevel";
  const env = envName(sample);
  return [
    "Environment and config file:",
    `  Every flag can also be set as STOA_<FLAG> (e.g. ${env}) or as a key of the JSON file`,
    "  given by --config (or STOA_CONFIG). Flags win over the environment, which wins over the file.",
  ];
}
