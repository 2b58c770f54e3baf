#!/usr/bin/env bun
/**
 * stoa's entry point: the command table and nothing else. Each entry is loaded lazily, so a
 * command pays only for its own code. To add a command: create src/cli/<name>.ts exporting a
 * `defineCommand(...)` default and add one line here (keep the summary in step with its help).
 */
import type { CommandEntry } from "./cli/command.ts";
import { runCli } from "./cli/run.ts";

const commands: CommandEntry[] = [
  { name: "doctor", summary: "check this host: capabilities, io_uring, tools, free ports", load: () => import("./cli/doctor.ts") },
  { name: "completion", summary: "print shell completion for bash, zsh or fish", load: () => import("./cli/completion.ts") },
  { name: "version", summary: "print version, Bun version and build info", load: () => import("./cli/version.ts") },
];

void runCli(commands, process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
