#!/usr/bin/env bun
/**
 * stoa's entry point: the command table and nothing else. Each entry is loaded lazily, so a
 * command pays only for its own code. To add a command: create src/cli/<name>.ts exporting a
 * `defineCommand(...)` default and add one line here (keep the summary in step with its help;
 * `movesBytes` marks a daemon that moves bulk bytes through Bun's sockets until stopped — its
 * allocator is set for that: core/runtime.ts `execWithServiceAllocator`).
 */
import type { CommandEntry } from "./cli/command.ts";
import { runCli } from "./cli/run.ts";

const commands: CommandEntry[] = [
  { name: "up", summary: "run a whole host node: gateway + metaserver in one process", load: () => import("./cli/up.ts") },
  { name: "gateway", summary: "route three fixed ports to this host's publishers", load: () => import("./cli/gateway.ts") },
  { name: "pub", summary: "publish stdin as a stream under a name", load: () => import("./cli/pub.ts") },
  { name: "sub", summary: "subscribe to a stream by name and print its values", load: () => import("./cli/sub.ts") },
  { name: "meta", summary: "run the metaserver: who publishes what, on which host", load: () => import("./cli/meta.ts") },
  { name: "hotlink", summary: "lowest-latency peer data path: relay server, TCP tunnels, HLNK sockets", load: () => import("./cli/hotlink.ts"), movesBytes: ["serve", "connect"] },
  { name: "circles", summary: "many circles on one WebSocket port: secp256k1 auth, sandboxed scripts over a queue", load: () => import("./cli/circles.ts") },
  { name: "flows", summary: "services to OpenFlow on Open vSwitch, applied atomically", load: () => import("./cli/flows.ts") },
  { name: "supervisor", summary: "a UDP/multicast packet relay: supervisor, control plane, one io_uring data plane per core", load: () => import("./cli/supervisor.ts") },
  { name: "addr", summary: "IPv6 addresses over rtnetlink: /128s with nodad, local prefixes, gc", load: () => import("./cli/addr.ts") },
  { name: "status", summary: "show this host's gateway, publishers, hotlink daemons and relay; exit 0 when healthy", load: () => import("./cli/status.ts") },
  { name: "service", summary: "systemd integration: unit files for stoa's daemons", load: () => import("./cli/service.ts") },
  { name: "doctor", summary: "check this host: capabilities, io_uring, tools, free ports, run dir", load: () => import("./cli/doctor.ts") },
  { name: "completion", summary: "print shell completion for bash, zsh or fish", load: () => import("./cli/completion.ts") },
  { name: "man", summary: "print the stoa(1) manual page (roff)", load: () => import("./cli/man.ts") },
  { name: "version", summary: "print version, Bun version and build info", load: () => import("./cli/version.ts") },
];

void runCli(commands, process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
