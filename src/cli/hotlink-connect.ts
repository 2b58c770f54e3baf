/**
 * `stoa hotlink connect`: the client daemon (src/hotlink/daemon.ts). Kept apart from the rest
 * of the `hotlink` group (cli/hotlink.ts) because it is the largest subcommand.
 */
import { readFileSync, statSync } from "node:fs";
import { configFlag, defineCommand, list, str } from "./command.ts";
import { logFlags, startService } from "./common.ts";
import { StoaError } from "../core/errors.ts";
import { onShutdown } from "../core/shutdown.ts";
import { HotlinkDaemon, relayUrl } from "../hotlink/daemon.ts";
import { parseIpcSpec, parseTunnelSpec } from "../hotlink/specs.ts";
import { userNameProblem } from "../hotlink/users.ts";

/** Reads a token file: one line, the token. Refuses a file others may read. */
export function readTokenFile(file: string): string {
  let text: string;
  try {
    const mode = statSync(file).mode & 0o077;
    if (mode !== 0) {
      throw new StoaError("permission", `token file ${file} is readable by others (mode ${(statSync(file).mode & 0o777).toString(8)}); chmod 600 ${file}`);
    }
    text = readFileSync(file, "utf8");
  } catch (err) {
    if (err instanceof StoaError) throw err;
    throw new StoaError("config", `cannot read the token file ${file}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const token = text.trim();
  if (token.length === 0 || token.length > 256 || /\s/.test(token)) {
    throw new StoaError("config", `token file ${file} must hold one token on one line (as printed by 'stoa hotlink user add')`);
  }
  return token;
}

export const connect = defineCommand({
  name: "connect",
  summary: "run the client daemon: tunnels and HLNK sockets over the relay",
  description:
    "Keeps one WebSocket to the relay server (reconnecting with backoff) and serves this peer's\n" +
    "channels. --tunnel CHANNEL=HOST:PORT[@PEER] listens on HOST:PORT; the peer declares the same\n" +
    "channel with its own port, and an application connection on each side become one full-duplex\n" +
    "TCP connection (data sent before the other side's application connects is held, up to 30 s).\n" +
    "--ipc CHANNEL=unix:PATH serves a Unix socket (0600) where applications write and read HLNK\n" +
    "frames for CHANNEL and paths below it; every peer declaring the channel receives them.",
  config: true,
  flags: {
    server: str("relay server URL (ws://host:port or wss://host:port)", { placeholder: "url" }),
    user: str("this peer's user name on the server", { placeholder: "name" }),
    tokenFile: str("file holding the user's token (mode 0600)", { placeholder: "file" }),
    tunnel: list("a TCP tunnel CHANNEL=HOST:PORT[@PEER] (repeatable)", { placeholder: "spec" }),
    ipc: list("an HLNK socket CHANNEL=unix:PATH (repeatable)", { placeholder: "spec" }),
    telemetry: str("rewrite this JSON file every second with counters and latencies", { placeholder: "file" }),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa hotlink connect --server ws://relay:8443 --user alice --token-file ~/.stoa/alice.token \\\n" +
      "    --tunnel alice/mpc/run1/0_to_1=127.0.0.1:10001@bob",
    "stoa hotlink connect --server ws://127.0.0.1:8443 --user bob --token-file bob.token \\\n" +
      "    --ipc alice/bench/ipc=unix:/tmp/bob.sock --telemetry /tmp/bob-telemetry.json",
  ],
  async run({ flags, path }) {
    const need = (value: string | undefined, flag: string): string => {
      if (value === undefined || value === "") throw new StoaError("usage", `${path}: ${flag} is required`);
      return value;
    };
    const server = need(flags.server, "--server");
    relayUrl(server); // a bad URL fails here, before anything starts
    const user = need(flags.user, "--user");
    const problem = userNameProblem(user);
    if (problem !== null) throw new StoaError("usage", `${path}: --user ${problem}`);
    const token = readTokenFile(need(flags.tokenFile, "--token-file"));
    const tunnels = flags.tunnel.map(parseTunnelSpec);
    const ipc = flags.ipc.map(parseIpcSpec);
    if (tunnels.length + ipc.length === 0) {
      throw new StoaError("usage", `${path}: declare at least one --tunnel or --ipc channel`);
    }
    const log = startService("hotlink", flags);
    const daemon = await HotlinkDaemon.start({
      server,
      user,
      token,
      tunnels,
      ipc,
      log,
      ...(flags.telemetry === undefined ? {} : { telemetry: flags.telemetry }),
    });
    onShutdown("hotlink daemon", () => daemon.close());
    for (const t of daemon.status().tunnels) process.stdout.write(`tunnel ${t.channel}: ${t.listen}${t.peer === null ? "" : ` <-> ${t.peer}`}\n`);
    for (const c of daemon.status().ipc) process.stdout.write(`ipc ${c.channel}: unix:${c.path}\n`);
    process.stdout.write(`hotlink: ${user} via ${server}\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});
