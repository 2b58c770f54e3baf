/**
 * `stoa hotlink tunnel|ipc|ls|close`: change a running `stoa hotlink connect` through its
 * control socket (src/hotlink/control.ts). Which daemon: `--control PATH`, else the one of
 * `--user U` in the run dir, else the only one running in the run dir.
 */
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { bool, defineCommand, str, under } from "./command.ts";
import { hotlinkControlFlags } from "./flags.ts";
import { StoaError } from "../core/errors.ts";
import { defaultRunDir, subtreeDir } from "../core/paths.ts";
import { hotlinkControlPath, hotlinkControlRequest } from "../hotlink/control.ts";
import type { ControlRequest, DaemonStatus } from "../hotlink/protocol.ts";
import { parseIpcSpec, parseTunnelSpec } from "../hotlink/specs.ts";
import { userNameProblem } from "../hotlink/users.ts";

/** The flags that pick the daemon: those `connect` binds its control socket by, and its user. */
const pickFlags = () => ({
  ...hotlinkControlFlags(),
  user: str("the daemon's user, when several daemons run in the run dir", { placeholder: "name" }),
});

interface Pick {
  control?: string;
  runDir?: string;
  user?: string;
}

/** The control socket to talk to, and what to say if nobody answers there. */
function locate(flags: Pick): { socket: string; hint: string } {
  if (flags.control !== undefined) return { socket: flags.control, hint: "; is `stoa hotlink connect --control` running with that path?" };
  const runDir = flags.runDir ?? defaultRunDir();
  const withRunDir = flags.runDir === undefined ? "" : ` with --run-dir ${runDir}`;
  if (flags.user !== undefined) {
    const problem = userNameProblem(flags.user);
    if (problem !== null) throw new StoaError("usage", `--user ${problem}`);
    return { socket: hotlinkControlPath(runDir, flags.user), hint: `; is \`stoa hotlink connect\` running for user ${flags.user}${withRunDir}?` };
  }
  const dir = subtreeDir(runDir, "hotlink");
  const users = socketsIn(dir);
  if (users.length === 1) {
    const user = users[0] as string;
    return { socket: hotlinkControlPath(runDir, user), hint: `; is \`stoa hotlink connect\` still running for user ${user}${withRunDir}?` };
  }
  if (users.length > 1) throw new StoaError("usage", `several hotlink daemons run in ${runDir} (${users.join(", ")}); choose one with --user`);
  throw new StoaError("closed", `no hotlink daemon is running: no control socket in ${dir}; is \`stoa hotlink connect\` running${withRunDir}? (or name its socket with --control)`);
}

/** The users whose control sockets are in `dir`. */
function socketsIn(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n.endsWith(".sock") && !n.startsWith("."))
    .filter((n) => {
      try {
        return statSync(join(dir, n)).isSocket();
      } catch {
        return false;
      }
    })
    .map((n) => n.slice(0, -".sock".length))
    .sort();
}

function request<R extends ControlRequest>(flags: Pick, req: R) {
  const { socket, hint } = locate(flags);
  return hotlinkControlRequest(socket, req, { hint });
}

const json = (shape: string) => bool(`print one JSON object: ${shape}`);

export const tunnelCommand = defineCommand({
  name: "tunnel",
  summary: "add a TCP tunnel to the running daemon",
  description:
    "Declares CHANNEL=HOST:PORT[@PEER] on a running 'stoa hotlink connect', as --tunnel does at\n" +
    "start: the daemon listens on HOST:PORT at once (PORT 0 picks a free port, printed here) and\n" +
    "pairs it with PEER's tunnel on the same channel. Remove it with 'stoa hotlink close'.",
  flags: { ...pickFlags(), json: json('{"tunnel": {channel, listen, port, peer, ...}}') },
  positionals: [{ name: "SPEC", description: "CHANNEL=HOST:PORT[@PEER], e.g. alice/mpc/run1/0_to_1=127.0.0.1:10001@bob", required: true }],
  examples: [
    "stoa hotlink tunnel alice/mpc/run1/0_to_1=127.0.0.1:10001@bob",
    "stoa hotlink tunnel alice/mpc/run2/0_to_1=127.0.0.1:0@bob --user alice --json | jq .tunnel.port",
  ],
  async run({ flags, args, path }) {
    const spec = args[0] ?? "";
    await under(path, () => parseTunnelSpec(spec)); // a typo is a usage error, before any daemon is asked
    const { tunnel } = await under(path, () => request(flags, { type: "tunnel", spec }));
    if (flags.json) process.stdout.write(`${JSON.stringify({ tunnel })}\n`);
    else process.stdout.write(`tunnel ${tunnel.channel}: ${tunnel.listen}${tunnel.peer === null ? "" : ` <-> ${tunnel.peer}`}\n`);
  },
});

export const ipcCommand = defineCommand({
  name: "ipc",
  summary: "add an HLNK IPC socket to the running daemon",
  description:
    "Declares CHANNEL=unix:PATH on a running 'stoa hotlink connect', as --ipc does at start: the\n" +
    "daemon serves a Unix socket (mode 0600) at PATH where applications write and read HLNK frames.",
  flags: { ...pickFlags(), json: json('{"ipc": {channel, path, apps, ...}}') },
  positionals: [{ name: "SPEC", description: "CHANNEL=unix:PATH, e.g. alice/bench/ipc=unix:/tmp/alice.sock", required: true }],
  examples: ["stoa hotlink ipc alice/bench/ipc=unix:/tmp/alice.sock", "stoa hotlink ipc alice/bench/ipc=unix:/tmp/bob.sock --user bob"],
  async run({ flags, args, path }) {
    const spec = args[0] ?? "";
    await under(path, () => parseIpcSpec(spec));
    const { ipc } = await under(path, () => request(flags, { type: "ipc", spec }));
    if (flags.json) process.stdout.write(`${JSON.stringify({ ipc })}\n`);
    else process.stdout.write(`ipc ${ipc.channel}: unix:${ipc.path}\n`);
  },
});

export const lsCommand = defineCommand({
  name: "ls",
  summary: "show the running daemon: connection, tunnels, IPC sockets, counters",
  description:
    "Asks a running 'stoa hotlink connect' for its status: whether it is connected to the relay,\n" +
    "its tunnels and IPC channels (where each came from: flag, control or watch), the sessions\n" +
    "open now and the relay counters; PATH is the rung that carries each session (tls, ice, turn or\n" +
    "relay), and a line under the table says why each rung above it failed. --json prints the\n" +
    "daemon's whole answer.",
  flags: { ...pickFlags(), json: json('{"status": {user, server, connected, tunnels, ipc, sessions, counters}}') },
  examples: ["stoa hotlink ls", "stoa hotlink ls --user bob --json | jq -r '.status.tunnels[] | \"\\(.channel) \\(.port)\"'"],
  async run({ flags, path }) {
    const { status } = await under(path, () => request(flags, { type: "ls" }));
    process.stdout.write(flags.json ? `${JSON.stringify({ status })}\n` : formatStatus(status));
  },
});

export const closeCommand = defineCommand({
  name: "close",
  summary: "remove a tunnel or IPC channel from the running daemon",
  description:
    "Removes CHANNEL from a running 'stoa hotlink connect': its port or socket is released and its\n" +
    "sessions end (a connected application is reset). Exits 1 if no such channel is declared.",
  flags: pickFlags(),
  positionals: [{ name: "CHANNEL", description: "the channel path, e.g. alice/mpc/run1/0_to_1", required: true }],
  examples: ["stoa hotlink close alice/mpc/run1/0_to_1", "stoa hotlink close alice/bench/ipc --user bob"],
  async run({ flags, args, path }) {
    const channel = args[0] ?? "";
    const answer = await under(path, () => request(flags, { type: "close", channel }));
    process.stdout.write(`closed ${answer.kind} ${answer.channel}\n`);
  },
});

/** `ls` for a terminal: a summary line, then one row per tunnel or channel. */
function formatStatus(status: DaemonStatus): string {
  const relay = record(status.counters.relay);
  const num = (key: string): number => (typeof relay[key] === "number" ? relay[key] : 0);
  const lines = [
    `${status.user} via ${status.server}: ${status.connected ? `connected${status.relay_link === "tcp" ? " (framed TCP link)" : status.relay_link === "ws" ? " (WebSocket)" : ""}` : "NOT connected (retrying)"}; ` +
      `sessions ${status.sessions.outgoing} out, ${status.sessions.incoming} in; ` +
      `relay tx ${num("txPackets")} msgs ${bytes(num("txBytes"))}, rx ${num("rxPackets")} msgs ${bytes(num("rxBytes"))}` +
      (status.counters.stream === undefined || status.counters.stream.connections === 0
        ? ""
        : `; relay streams ${status.counters.stream.connections}, tx ${bytes(status.counters.stream.txBytes)}, rx ${bytes(status.counters.stream.rxBytes)}`),
    `rungs: ${[...status.rungs, "relay"].join(" > ")}` +
      (status.rungs.includes("ice") ? `; ICE servers: ${status.ice_servers.length === 0 ? "none (host candidates only)" : status.ice_servers.join(", ")}` : ""),
  ];
  const rows: string[][] = [["KIND", "CHANNEL", "LOCAL", "PEER", "ORIGIN", "APPS", "OUT", "PATH", "SENT", "RECEIVED", "HELD"]];
  // Why the rungs above a sending session's path failed, one line each under the table.
  const why: string[] = [];
  const failures = (channel: string, out: { rung: string; via?: string | undefined; failed: { rung: string; error: string }[] } | null): void => {
    if (out?.via !== undefined) via.push(`${channel}: ${out.rung} via ${out.via}`);
    for (const f of out?.failed ?? []) why.push(`${channel}: ${f.rung}: ${f.error}`);
  };
  const via: string[] = [];
  for (const t of status.tunnels) {
    rows.push([
      "tunnel", t.channel, t.listen, t.peer ?? "*", t.origin, t.app ? "1" : "0",
      t.out?.state ?? "-",
      // A relay stream (src/hotlink/relay-stream.ts) carries both directions; its bytes are in the summary line.
      t.stream === "spliced" ? "relay-stream" : t.stream === "attaching" ? "relay-stream(attaching)" : (t.out?.rung ?? t.in?.rung ?? "-"),
      bytes(t.out?.bytes ?? 0), bytes(t.in?.bytes ?? 0), bytes(t.held),
    ]);
    failures(t.channel, t.out);
  }
  for (const c of status.ipc) {
    const received = c.in.reduce((sum, s) => sum + s.bytes, 0);
    const paths = [...new Set([c.out?.rung, ...c.in.map((s) => s.rung)].filter((r) => r !== undefined))];
    rows.push([
      "ipc", c.channel, `unix:${c.path}`, "*", c.origin, String(c.apps),
      c.out?.state ?? "-", paths.join(",") || "-", bytes(c.out?.bytes ?? 0), bytes(received), bytes(c.held),
    ]);
    failures(c.channel, c.out);
  }
  if (rows.length === 1) lines.push("no tunnels or IPC channels (add one with 'stoa hotlink tunnel' or 'stoa hotlink ipc')");
  else {
    const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length))) ?? [];
    for (const r of rows) lines.push(r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join("  "));
    if (via.length > 0) lines.push("paths of the sessions sent from here:", ...via.map((v) => `  ${v}`));
    if (why.length > 0) lines.push("rungs that failed (the path above is what carries each session now):", ...why.map((w) => `  ${w}`));
  }
  return `${lines.join("\n")}\n`;
}

function record(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null ? (value as Record<string, unknown>) : {};
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
