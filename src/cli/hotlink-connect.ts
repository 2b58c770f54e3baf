/**
 * `stoa hotlink connect`: the client daemon (src/hotlink/daemon.ts). Kept apart from the rest
 * of the `hotlink` group (cli/hotlink.ts) because it is the largest subcommand.
 */
import { configFlag, defineCommand, list, str } from "./command.ts";
import { collectStartupGarbage } from "../core/runtime.ts";
import { logFlags, splitList, startService, waitFlag } from "./common.ts";
import { hotlinkControlFlags } from "./flags.ts";
import { StoaError } from "../core/errors.ts";
import { readTokenFile } from "../core/token.ts";
import { defaultRunDir } from "../core/paths.ts";
import type { Logger } from "../core/log.ts";
import { onShutdown } from "../core/shutdown.ts";
import { WAIT_QUIET_MS } from "../core/wait.ts";
import { prepareUnixPath } from "../core/unixsock.ts";
import { type HotlinkControl, hotlinkControlPath, startHotlinkControl } from "../hotlink/control.ts";
import { HotlinkDaemon, relayUrl } from "../hotlink/daemon.ts";
import { ICE_SERVERS_ENV, parseIceServers } from "../hotlink/ice-servers.ts";
import { MAX_DIALED_CANDIDATES } from "../hotlink/protocol.ts";
import { parseIpcSpec, parseTunnelSpec } from "../hotlink/specs.ts";
import { userNameProblem } from "../hotlink/users.ts";
import { type MarkerWatcher, watchMarkers } from "../hotlink/watch.ts";

/**
 * A bind error of the control socket, as one line under the command. A live socket means this
 * user's daemon already runs here: say so, and how to run two.
 */
function inUse(err: unknown, path: string, user: string, socket: string): unknown {
  if (!(err instanceof StoaError)) return err;
  if (err.code !== "in_use") return new StoaError(err.code, `${path}: control socket: ${err.message}`, { cause: err });
  return new StoaError(
    "in_use",
    `${path}: a hotlink daemon for user ${user} is already running with control socket ${socket} (${err.message}); ` +
      "stop it, or give this one another --run-dir or --control",
    { cause: err },
  );
}

export const connect = defineCommand({
  name: "connect",
  summary: "run the client daemon: tunnels and HLNK sockets over the relay",
  description:
    "Keeps one connection to the relay server (reconnecting with backoff, said at info once per\n" +
    "backoff step while it is unreachable) and serves this peer's channels: the relay's framed TCP\n" +
    "link when it offers one (serve --link-listen) and the URL is ws://, else the WebSocket\n" +
    "(--relay-link ws: always the WebSocket). At start it waits up to\n" +
    "--wait for the relay's first welcome, prints its lines on stdout, or fails. This peer's\n" +
    "--tunnel CHANNEL=HOST:PORT[@PEER] listens on HOST:PORT; the peer declares the same\n" +
    "channel with its own port, and an application connection on each side become one full-duplex\n" +
    "TCP connection (data sent before the other side's application connects is held, up to 30 s).\n" +
    "--ipc CHANNEL=unix:PATH serves a Unix socket (0600) where applications write and read HLNK\n" +
    "frames for CHANNEL and paths below it; every peer declaring the channel receives them.\n" +
    "--watch DIR turns marker files DIR/<channel>/stream.tcp holding {\"from\", \"to\", \"ports\":\n" +
    "{user: port}} into tunnels (listening on 127.0.0.1:ports[user]), started and stopped as the\n" +
    "files come and go. The control socket (<run-dir>/hotlink/<user>.sock, mode 0600) lets\n" +
    "'stoa hotlink tunnel|ipc|ls|close' change the running daemon; one daemon per user and run dir.\n" +
    "Each session climbs a ladder, automatically. With --direct on (the default) a receiving daemon\n" +
    "offers a direct TLS connection (per-session certificate pinned by fingerprint); when the sender\n" +
    "cannot reach it, a WebRTC data channel over ICE: host and server-reflexive candidates (STUN\n" +
    "hole punching through NATs), then a TURN server's relay candidate; else the session stays on\n" +
    "the relay. A rung that fails or drops mid-stream falls back to the relay without loss.\n" +
    "--direct tls or ice keeps only that rung, off keeps every session on the relay. STUN/TURN\n" +
    `servers come from --ice-servers, else $${ICE_SERVERS_ENV}, else the relay server's own list.\n` +
    "On the relay's framed link, a tunnel whose sending daemon runs with --direct off carries its\n" +
    "connection on a relay stream: a TCP connection of its own to the relay's link port, spliced in\n" +
    "the kernel at both daemons and the relay (--relay-streams off: Data messages, as on a WebSocket).\n" +
    "'stoa hotlink ls' shows the rung of each session and why the rungs above it failed. A sender\n" +
    `dials only its own sessions' first offer, and at most ${MAX_DIALED_CANDIDATES} of the addresses in it.`,
  config: true,
  flags: {
    server: str("relay server URL (ws://host:port or wss://host:port)", { placeholder: "url", required: { example: "ws://relay:8470" } }),
    user: str("this peer's user name on the server", { placeholder: "name", required: { example: "alice@example.org" } }),
    tokenFile: str("file holding the user's token (mode 0600)", { placeholder: "file", required: { example: "alice.token" } }),
    tunnel: list("a TCP tunnel CHANNEL=HOST:PORT[@PEER]", { placeholder: "spec" }),
    ipc: list("an HLNK socket CHANNEL=unix:PATH", { placeholder: "spec" }),
    watch: str("start and stop tunnels from stream.tcp marker files under this directory", { placeholder: "dir" }),
    telemetry: str("rewrite this JSON file every second with counters and latencies", { placeholder: "file" }),
    direct: str("upgrade sessions off the relay: on (TLS, then ICE), tls, ice, or off", { default: "on", choices: ["on", "off", "tls", "ice"] }),
    relayLink: str("how to reach the relay: auto (its framed TCP link when offered, for ws:// URLs) or ws", { default: "auto", choices: ["auto", "ws"] }),
    relayStreams: str("on the framed link, carry each tunnel connection on a TCP stream of its own, spliced in the kernel (on), or in messages (off)", {
      default: "on",
      choices: ["on", "off"],
    }),
    iceServers: str(`STUN/TURN servers for ICE: stun:HOST[:PORT],turn:USER:PASS@HOST[:PORT] (default $${ICE_SERVERS_ENV}, else the relay's)`, { placeholder: "list" }),
    directListen: str("address to accept direct connections on (:: for all)", { default: "::", placeholder: "addr" }),
    directAdvertise: list(`address to offer peers for direct connections (default: this host's addresses; the first ${MAX_DIALED_CANDIDATES} are offered)`, { placeholder: "addr" }),
    ...waitFlag("the relay server (the first connection; later losses are retried for ever)"),
    ...hotlinkControlFlags(),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa hotlink connect --server ws://relay:8443 --user alice --token-file ~/.stoa/alice.token \\\n" +
      "    --tunnel alice/mpc/run1/0_to_1=127.0.0.1:10001@bob",
    "stoa hotlink connect --server ws://127.0.0.1:8443 --user bob --token-file bob.token \\\n" +
      "    --ipc alice/bench/ipc=unix:/tmp/bob.sock --telemetry /tmp/bob-telemetry.json",
    "stoa hotlink connect --server wss://relay.example.org --user alice --token-file alice.token \\\n" +
      "    --watch ~/datasites   # tunnels from DIR/alice/mpc/run1/0_to_1/stream.tcp and the like",
    "stoa hotlink connect --server ws://relay:8470 --user bob --token-file bob.token \\\n" +
      "    --ice-servers stun:relay:3478,turn:bob:s3cret@relay:3478 --tunnel alice/mpc/run1/1_to_0=127.0.0.1:10002@alice",
  ],
  async run({ flags, path }) {
    const { server, user } = flags;
    relayUrl(server); // a bad URL fails here, before anything starts
    const problem = userNameProblem(user);
    if (problem !== null) throw new StoaError("usage", `${path}: --user ${problem}`);
    const token = readTokenFile(flags.tokenFile, "one token on one line (as printed by 'stoa hotlink user add')");
    const tunnels = flags.tunnel.map(parseTunnelSpec);
    // The flag, else the seed's environment variable; neither: the relay's list from Welcome.
    const iceText = flags.iceServers ?? process.env[ICE_SERVERS_ENV];
    const iceServers = iceText === undefined ? undefined : parseIceServers(iceText, flags.iceServers === undefined ? `$${ICE_SERVERS_ENV}` : "--ice-servers");
    const ipc = flags.ipc.map(parseIpcSpec);
    // No channel at start is fine: the control socket and --watch add them later.
    const socket = flags.control ?? hotlinkControlPath(flags.runDir ?? defaultRunDir(), user);
    // Fail before dialing the relay when this user's daemon already runs here.
    await prepareUnixPath(socket).catch((err: unknown) => {
      throw inUse(err, path, user, socket);
    });
    const log = startService("hotlink", flags);
    const daemon = await HotlinkDaemon.start({
      server,
      user,
      token,
      tunnels,
      ipc,
      log,
      linkMode: flags.relayLink,
      relayStreams: flags.relayStreams === "on",
      ...(flags.telemetry === undefined ? {} : { telemetry: flags.telemetry }),
      ...(flags.direct === "on" || flags.direct === "tls"
        ? {
            direct: {
              listen: flags.directListen.replace(/^\[(.*)\]$/, "$1"),
              ...(flags.directAdvertise.length === 0 ? {} : { advertise: splitList(flags.directAdvertise) }),
            },
          }
        : {}),
      ...(flags.direct === "on" || flags.direct === "ice" ? { ice: iceServers === undefined ? {} : { servers: iceServers } } : {}),
    });
    let control: HotlinkControl | null = null;
    let watcher: MarkerWatcher | null = null;
    try {
      control = await startHotlinkControl(socket, daemon, log).catch((err: unknown) => {
        throw inUse(err, path, user, socket);
      });
      if (flags.watch !== undefined) watcher = await watchMarkers({ dir: flags.watch, user, target: daemon, log });
    } catch (err) {
      await control?.close();
      await daemon.close();
      throw err;
    }
    // A script starts the relay and its daemons together: the lines below (what scripts wait
    // for) come once the relay has welcomed us, or never if it does not within --wait.
    if (flags.wait > 0 && !(await reachedRelay(daemon, flags.wait, server, log))) {
      await watcher?.close();
      await control.close();
      await daemon.close();
      const why = daemon.link.lastFailure;
      throw new StoaError(
        "io",
        `cannot reach the relay server at ${server} within ${flags.wait / 1000}s${why === "" ? "" : ` (${why})`}; is stoa hotlink serve running there? ` +
          "(--wait 0 starts without it and retries in the background)",
      );
    }
    // Shutdown runs these in reverse: the watcher and the control socket stop before the daemon.
    onShutdown("hotlink daemon", () => daemon.close());
    const controlled = control;
    onShutdown("hotlink control socket", () => controlled.close());
    const watching = watcher;
    if (watching !== null) onShutdown("hotlink marker files", () => watching.close());
    for (const t of daemon.status().tunnels) process.stdout.write(`tunnel ${t.channel}: ${t.listen}${t.peer === null ? "" : ` <-> ${t.peer}`}\n`);
    for (const c of daemon.status().ipc) process.stdout.write(`ipc ${c.channel}: unix:${c.path}\n`);
    process.stdout.write(`control: ${control.path}\n`);
    if (flags.watch !== undefined) process.stdout.write(`watch: ${flags.watch}\n`);
    collectStartupGarbage();
    process.stdout.write(`hotlink: ${user} via ${server}\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});

/** Whether the relay welcomes the daemon within `waitMs`; says once what it waits for after a second. */
async function reachedRelay(daemon: HotlinkDaemon, waitMs: number, server: string, log: Logger): Promise<boolean> {
  const up = daemon.connected().then(() => true);
  const quiet = Math.min(WAIT_QUIET_MS, waitMs);
  if (await Promise.race([up, Bun.sleep(quiet).then(() => false)])) return true;
  if (quiet < waitMs) {
    log.info("waiting for the relay server", { server, up_to: `${Math.round(waitMs / 1000)}s` });
    return await Promise.race([up, Bun.sleep(waitMs - quiet).then(() => false)]);
  }
  return false;
}
