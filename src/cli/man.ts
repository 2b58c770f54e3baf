/**
 * `stoa man`: the stoa(1) manual page in roff (man(7) macros), generated from the same command
 * table as help and completion — every command, subcommand, flag and example — plus the exit
 * status (core/errors.ts), the STOA_* environment of `config: true` commands and the run/state
 * dir layout (core/paths.ts). scripts/build.ts writes it to dist/stoa.1.
 */
import { join } from "node:path";
import { LOCK_FILE, STATE_FILE } from "../addr/model.ts";
import { buildInfo } from "../core/buildinfo.ts";
import { envName } from "../core/config.ts";
import { gatewayControlPath, hotlinkControlPath, publisherSocketPath, subtreeDir } from "../core/paths.ts";
import { META_TOKEN_ENV, META_TOKEN_FILE } from "../meta/protocol.ts";
import { KINDS } from "../stream/names.ts";
import { type Command, type CommandEntry, type LeafCommand, defineCommand, isGroup } from "./command.ts";
import { RUN_DIR_DEFAULT, STATE_DIR_DEFAULT } from "./flags.ts";
import { PROGRAM, TAGLINE, flagParts, leafUsage } from "./help.ts";

/**
 * Text for a roff line: backslashes and hyphens escaped, anything outside ASCII as a `\[uXXXX]`
 * glyph (troff reads its input as Latin-1 unless preconv runs), no control character at the start.
 */
function esc(text: string): string {
  const escaped = text
    .replace(/\\/g, "\\e")
    .replace(/-/g, "\\-")
    .replace(/[^\x00-\x7f]/gu, (c) => `\\[u${(c.codePointAt(0) ?? 0x3f).toString(16).toUpperCase().padStart(4, "0")}]`);
  return /^[.']/.test(escaped) ? `\\&${escaped}` : escaped;
}

/** Hard-wrapped help prose as filled roff paragraphs (blank lines separate paragraphs). */
function prose(text: string): string[] {
  return text
    .split(/\n\s*\n/)
    .map((para) => esc(para.replace(/\s*\n\s*/g, " ").trim()))
    .flatMap((para, i) => (i === 0 ? [para] : [".PP", para]));
}

/** Lines shown as typed (examples), indented and unfilled. */
function verbatim(lines: readonly string[]): string[] {
  return [".RS", ".nf", ...lines.flatMap((l) => l.split("\n")).map(esc), ".fi", ".RE"];
}

const bold = (text: string) => `\\fB${esc(text)}\\fR`;
const italic = (text: string) => `\\fI${esc(text)}\\fR`;

function leafSection(cmd: LeafCommand, path: string): string[] {
  const out = [`.SS ${esc(path)}`, bold(leafUsage(cmd, path)), ".PP", esc(`${cmd.summary}.`)];
  if (cmd.description) out.push(".PP", ...prose(cmd.description));
  for (const p of cmd.positionals ?? []) out.push(".TP", italic(p.name), esc(p.description));
  for (const [key, flag] of Object.entries(cmd.flags)) {
    const { name, value, text } = flagParts(key, flag);
    out.push(".TP", `${bold(name)}${value ? ` ${italic(value.trim())}` : ""}`, esc(text));
  }
  if (cmd.config) {
    out.push(".PP", esc("Every flag can also be set as STOA_<FLAG> or as a key of the --config file (see ENVIRONMENT)."));
  }
  if (cmd.examples.length > 0) out.push(".PP", "Examples:", ...verbatim(cmd.examples));
  return out;
}

function commandSections(cmd: Command, path: string): string[] {
  if (!isGroup(cmd)) return leafSection(cmd, path);
  const out = [`.SS ${esc(path)}`, bold(`${path} <command> [flags]`), ".PP", esc(`${cmd.summary}.`)];
  if (cmd.description) out.push(".PP", ...prose(cmd.description));
  out.push(".PP", esc(`Commands: ${cmd.subcommands.map((s) => s.name).join(", ")}.`));
  if (cmd.examples.length > 0) out.push(".PP", "Examples:", ...verbatim(cmd.examples));
  return [...out, ...cmd.subcommands.flatMap((sub) => commandSections(sub, `${path} ${sub.name}`))];
}

/** `STOA_<FLAG>` of every `config: true` command, with the commands that read it. */
function configEnvironment(commands: { cmd: Command; path: string }[]): string[] {
  const vars = new Map<string, { flag: string; paths: string[] }>();
  const visit = (cmd: Command, path: string): void => {
    if (isGroup(cmd)) {
      for (const sub of cmd.subcommands) visit(sub, `${path} ${sub.name}`);
      return;
    }
    if (!cmd.config) return;
    for (const [key, flag] of Object.entries(cmd.flags)) {
      if (key === "config") continue;
      const name = envName(key);
      const entry = vars.get(name) ?? { flag: flagParts(key, flag).name, paths: [] };
      entry.paths.push(path);
      vars.set(name, entry);
    }
  };
  for (const { cmd, path } of commands) visit(cmd, path);
  return [...vars.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .flatMap(([name, { flag, paths }]) => [".TP", bold(name), esc(`${flag.replace(/^-\w, /, "")} of ${paths.join(", ")}`)]);
}

function files(): string[] {
  const run = "<run dir>";
  const state = "<state dir>";
  const entry = (path: string, text: string) => [".TP", italic(path), esc(text)];
  return [
    ...entry(run, `Unix sockets, lost at reboot: ${RUN_DIR_DEFAULT} (--run-dir). Created 0700.`),
    ...entry(gatewayControlPath(run), "the gateway's control socket"),
    ...KINDS.flatMap((kind) => entry(publisherSocketPath(run, "<pub_id>", kind), `a publisher's ${kind} socket, the only place the gateway routes to`)),
    ...entry(hotlinkControlPath(run, "<user>"), "the control socket of a user's hotlink daemon (stoa hotlink tunnel, ipc, ls, close)"),
    ...entry(join(subtreeDir(run, "addr"), STATE_FILE), `the addresses stoa added (stoa addr), locked by ${LOCK_FILE}`),
    ...entry(state, `data that survives restarts: ${STATE_DIR_DEFAULT} (--state-dir)`),
    ...entry(join(state, "meta.db"), "the metaserver's SQLite database (stoa meta, stoa up)"),
    ...entry(join(state, META_TOKEN_FILE), "the metaserver's admin token, mode 0600, created when missing"),
  ];
}

/** The whole page. */
async function manPage(entries: readonly CommandEntry[]): Promise<string> {
  const info = buildInfo();
  const date = info.built === "unknown" ? new Date().toISOString().slice(0, 10) : info.built.slice(0, 10);
  const commands = await Promise.all(entries.map(async (e) => ({ cmd: (await e.load()).default, path: `${PROGRAM} ${e.name}` })));
  const lines = [
    `.\\" Generated by '${PROGRAM} man' from the command table; do not edit.`,
    `.TH STOA 1 "${date}" "${esc(`${PROGRAM} ${info.version}`)}" "User Commands"`,
    ".SH NAME",
    `${PROGRAM} \\- ${esc(TAGLINE)}`,
    ".SH SYNOPSIS",
    `${bold(PROGRAM)} ${italic("command")} [${italic("flags")}]`,
    ".br",
    `${bold(PROGRAM)} ${italic("command")} ${bold("--help")}`,
    ".SH DESCRIPTION",
    esc(`${PROGRAM} is one executable with many subcommands: a gateway that routes three fixed ports to this host's publishers, a metaserver that records who publishes what, publishers and subscribers of named streams, the hotlink peer data path, and IPv6 address management.`),
    ".PP",
    esc(`Every command prints its flags and examples with --help. Long-running commands also read their flags from STOA_* environment variables and a JSON --config file.`),
    ".SH COMMANDS",
    ...entries.flatMap((e) => [".TP", bold(e.name), esc(e.summary)]),
    ...commands.flatMap(({ cmd, path }) => commandSections(cmd, path)),
    ".SH EXIT STATUS",
    ".TP", "0", "success",
    ".TP", "1", esc("a runtime failure: the one line on stderr says what failed and what to do"),
    ".TP", "2", esc("a usage or configuration error: a bad command line, flag value, environment variable or config file"),
    ".SH ENVIRONMENT",
    ".TP", bold("STOA_CONFIG"), esc("the JSON config file, when --config is not given (commands with --config)"),
    ".TP", bold("STOA_DEBUG"), esc("1: print the stack trace of an error (like --log-level debug)"),
    ".TP", bold("MIMALLOC_PURGE_DELAY"), esc("how long freed memory stays with the process, in ms; hotlink serve and hotlink connect set 10000 for themselves (one exec at start, same PID) unless it is set already"),
    ".TP", bold(META_TOKEN_ENV), esc(`the metaserver's token, when --token-file is not given (stoa meta, up, pub, sub)`),
    ".TP", bold("NOTIFY_SOCKET"), esc("set by systemd for Type=notify: daemons send READY=1 once serving, RELOADING=1 on SIGHUP, STOPPING=1 at shutdown"),
    ".TP", bold("WATCHDOG_USEC"), esc("set by systemd with WatchdogSec=: daemons send WATCHDOG=1 every half of it from their event loop"),
    ".TP", bold("LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES"), esc("socket activation: stoa gateway (and up) serve the passed sockets (named service, string, ping, or in that order) instead of binding --listen/--ports"),
    ".TP", bold("JOURNAL_STREAM"), esc("set by systemd when stderr goes to the journal: log lines carry a <priority> prefix instead of a timestamp"),
    ".TP", bold("XDG_RUNTIME_DIR"), esc("the run dir is $XDG_RUNTIME_DIR/stoa for users other than root"),
    ".TP", bold("XDG_STATE_HOME"), esc("the state dir is $XDG_STATE_HOME/stoa for users other than root"),
    ".PP",
    esc("Flags of long-running commands, as STOA_<FLAG> (flags win over the environment, which wins over the --config file):"),
    ...configEnvironment(commands),
    ".SH FILES",
    ...files(),
    ".SH SEE ALSO",
    esc(`${PROGRAM} <command> --help; ${PROGRAM} completion bash|zsh|fish`),
  ];
  return `${lines.join("\n")}\n`;
}

export default defineCommand({
  name: "man",
  summary: "print the stoa(1) manual page (roff)",
  description: "Prints the manual page of every command, generated from the same table as --help and completion.",
  flags: {},
  examples: ["stoa man | man -l -", "stoa man > /usr/local/share/man/man1/stoa.1"],
  async run({ commands }) {
    process.stdout.write(await manPage(commands));
  },
});
