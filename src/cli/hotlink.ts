/**
 * `stoa hotlink`: the relay server and its users. Each subcommand is defined on its own and
 * listed in `subcommands` at the bottom; a new one (connect, tunnel, ...) is one more
 * definition and one more entry there.
 */
import { z } from "zod";
import { type Command, bool, configFlag, defineCommand, defineGroup, str, under } from "./command.ts";
import { HostPort, logFlags, reloadConfigOnHangup, serveMetrics, startService } from "./common.ts";
import { onShutdown } from "../core/shutdown.ts";
import { announceReady, onReload } from "../core/daemon.ts";
import {
  HELLO_TIMEOUT_MS,
  MAX_CONNECTIONS_PER_USER,
  MAX_MESSAGE_BYTES,
  MAX_SESSIONS_PER_CONNECTION,
  MAX_SESSIONS_PER_USER,
} from "../hotlink/protocol.ts";
import { MAX_MESSAGE_BYTES_LIMIT, MIN_MESSAGE_BYTES, startHotlinkServer } from "../hotlink/server.ts";
import { addUser, loadUsers, removeUser } from "../hotlink/users.ts";
import { connect } from "./hotlink-connect.ts";
import { closeCommand, ipcCommand, lsCommand, tunnelCommand } from "./hotlink-control.ts";
import { parseIceServers } from "../hotlink/ice-servers.ts";
import { startStunServer } from "../hotlink/stun.ts";

const usersFlag = (example: string) => str("the users file, JSON with hashed tokens", { placeholder: "file", required: { example } });

const serve = defineCommand({
  name: "serve",
  summary: "run the relay server: WebSocket /v1/hotlink with token auth and path ACLs",
  description:
    "Serves the hotlink protocol (CBOR messages over WebSocket) on ws://HOST:PORT/v1/hotlink. Each\n" +
    "client daemon authenticates with 'Authorization: Bearer <user>:<token>' (a wrong token gets\n" +
    "401 before the upgrade), opens sessions on paths it may write, and the relay offers them to\n" +
    "the users who may read them. Access: a path's first segment is its owner (full access); the\n" +
    "--acl file adds rules {pattern, read: [users|*], write: [users|*]} with * ? ** globs.\n" +
    "A slow receiver pauses its sender instead of losing data. SIGHUP re-reads the users and ACL\n" +
    "files (a bad file is logged and the old one kept; removed users are disconnected) and the\n" +
    "--config file (log level and format, --users and --acl paths; other changes are logged as\n" +
    "needing a restart). Limits:\n" +
    `a connection that sends no Hello within ${HELLO_TIMEOUT_MS / 1000} s is closed; a user holds at most ${MAX_CONNECTIONS_PER_USER} connections\n` +
    `(more get 429) and ${MAX_SESSIONS_PER_USER} sessions, ${MAX_SESSIONS_PER_CONNECTION} per connection. Prints 'hotlink: <url>' when ready\n` +
    "(and 'hotlink link: tcp port N'); /v1/health answers without a token. --link-listen also\n" +
    "serves the same messages in length-delimited frames over TCP (no WebSocket framing or\n" +
    "masking: the relay's fast path), offered to daemons that dial ws:// (a wss:// relay keeps its\n" +
    "TLS WebSocket); the same tokens, ACLs, limits and backpressure apply. --stun-listen also\n" +
    "answers STUN binding requests (RFC 5389) on a UDP port, so peers behind NATs learn their\n" +
    "public address from the relay's host;\n" +
    "--ice-servers is sent to every daemon when it connects (its own --ice-servers wins), so clients\n" +
    "need no flag for hole punching or a TURN server.",
  config: true,
  flags: {
    listen: str("address and port to serve on", { placeholder: "host:port", schema: HostPort, required: { example: "[::]:8470" } }),
    linkListen: str("also serve framed TCP relay links here, offered to daemons dialing ws:// (faster than the WebSocket)", { placeholder: "host:port", schema: HostPort }),
    stunListen: str("answer STUN binding requests on this UDP HOST:PORT (3478 is STUN's port)", { placeholder: "host:port", schema: HostPort }),
    iceServers: str("STUN/TURN servers to tell the daemons: stun:HOST[:PORT],turn:USER:PASS@HOST[:PORT]", { placeholder: "list" }),
    users: usersFlag("/etc/stoa/hotlink-users.json"),
    acl: str("ACL file (JSON rules); without it only owners have access", { placeholder: "file" }),
    metricsListen: str("serve Prometheus /metrics on this HOST:PORT", { placeholder: "host:port", schema: HostPort }),
    maxMessageBytes: str(`largest message accepted, in bytes (${MIN_MESSAGE_BYTES} to ${MAX_MESSAGE_BYTES_LIMIT})`, {
      default: String(MAX_MESSAGE_BYTES),
      placeholder: "n",
      schema: z.coerce.number().int().min(MIN_MESSAGE_BYTES).max(MAX_MESSAGE_BYTES_LIMIT),
    }),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa hotlink user add alice@example.org --users /etc/stoa/hotlink-users.json",
    "stoa hotlink serve --listen [::]:8470 --users /etc/stoa/hotlink-users.json",
    "stoa hotlink serve --listen :8470 --users users.json --acl acl.json --metrics-listen 127.0.0.1:9470",
    "stoa hotlink serve --listen [::]:8470 --link-listen [::]:8471 --users users.json   # + the framed TCP link",
    "stoa hotlink serve --listen [::]:8470 --stun-listen [::]:3478 --users users.json   # relay + STUN for hole punching",
    "stoa hotlink serve --listen [::]:8470 --stun-listen [::]:3478 --users users.json \\\n" +
      "    --ice-servers stun:relay.example.org:3478,turn:peer:s3cret@relay.example.org:3479   # what daemons use for ICE",
    "kill -HUP $relay_pid   # re-read the users and ACL files",
  ],
  async run(ctx) {
    const { flags, path } = ctx;
    const log = startService("hotlink", flags, { daemon: true });
    const relay = under(path, () =>
      startHotlinkServer({
        hostname: flags.listen.hostname,
        port: flags.listen.port,
        usersFile: flags.users,
        aclFile: flags.acl,
        maxMessageBytes: flags.maxMessageBytes,
        ...(flags.linkListen === undefined ? {} : { linkListen: { hostname: flags.linkListen.hostname, port: flags.linkListen.port } }),
        ...(flags.iceServers === undefined ? {} : { iceServers: parseIceServers(flags.iceServers) }),
        log,
      }),
    );
    onShutdown("hotlink relay", () => relay.close());
    if (flags.stunListen !== undefined) {
      const stun = await startStunServer({ hostname: flags.stunListen.hostname, port: flags.stunListen.port, log });
      onShutdown("stun", () => stun.close());
    }
    serveMetrics(flags.metricsListen, log);
    // The config file's log settings and users/ACL paths; other changes need a restart (logged).
    let fresh = false; // the config reload read the users and ACL already
    reloadConfigOnHangup(ctx, log, [
      {
        keys: ["users", "acl"],
        apply: (next) => {
          fresh = true;
          const { ok, errors } = relay.reload({ usersFile: next.users, aclFile: next.acl });
          if (!ok) throw new Error(errors.join("; "));
        },
      },
    ]);
    onReload("users and acl", () => {
      if (fresh) {
        fresh = false;
        return "with the config";
      }
      const { ok, errors } = relay.reload(); // logs what it did, and keeps the old files' content on error
      if (!ok) throw new Error(errors.join("; "));
    });
    log.info("hotlink relay listening", { url: relay.url, link_port: relay.linkPort });
    process.stdout.write(`hotlink: ${relay.url}\n`);
    if (relay.linkPort !== undefined) process.stdout.write(`hotlink link: tcp port ${relay.linkPort}\n`);
    announceReady({ status: `hotlink relay ${relay.url}` });
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});

const nameArg = [{ name: "NAME", description: "user name: lowercase a-z 0-9 . _ @ + -, e.g. alice@example.org", required: true }];

const userAdd = defineCommand({
  name: "add",
  summary: "add a user and print its new token",
  description:
    "Adds NAME to the users file (created, mode 0600, when missing) with a fresh random token and\n" +
    "prints the token, alone, on stdout. Only a salted hash is stored: the token is shown this\n" +
    "once, so hand it to the user now (e.g. into a token file for 'stoa hotlink connect').\n" +
    "A running server accepts it after SIGHUP.",
  flags: {
    users: usersFlag("users.json"),
    replace: bool("issue a new token for an existing user (the old one stops working on reload)"),
    verbose: bool("also say on stderr where the hash went and what to do next", { short: "v" }),
  },
  positionals: nameArg,
  examples: [
    "stoa hotlink user add alice@example.org --users users.json > alice.token && chmod 600 alice.token",
    "stoa hotlink user add alice@example.org --users users.json --replace",
  ],
  run({ flags, args, path }) {
    const file = flags.users;
    const name = args[0] ?? "";
    const token = under(path, () => addUser(file, name, { replace: flags.replace }));
    // The token is the data (`> alice.token`); the words about it only with -v.
    process.stdout.write(`${token}\n`);
    if (flags.verbose) {
      process.stderr.write(
        `${flags.replace ? "new token" : "token"} for ${name} on stdout; only its hash is stored in ${file}, so this is the only time it is shown.\n` +
          "A running 'stoa hotlink serve' loads it on SIGHUP.\n",
      );
    }
  },
});

const userRemove = defineCommand({
  name: "remove",
  summary: "remove a user; its token stops working at the server's next reload",
  flags: { users: usersFlag("users.json") },
  positionals: nameArg,
  examples: ["stoa hotlink user remove alice@example.org --users users.json && kill -HUP $relay_pid"],
  run({ flags, args, path }) {
    const file = flags.users;
    const name = args[0] ?? "";
    under(path, () => removeUser(file, name));
    process.stdout.write(`removed ${name} from ${file}; a running server disconnects it on SIGHUP\n`);
  },
});

const userLs = defineCommand({
  name: "ls",
  summary: "list the users of a users file",
  flags: {
    users: usersFlag("users.json"),
    json: bool('print one JSON object: {"users": [names]}'),
  },
  examples: ["stoa hotlink user ls --users users.json", "stoa hotlink user ls --users users.json --json | jq -r '.users[]'"],
  run({ flags, path }) {
    const file = flags.users;
    const names = under(path, () => loadUsers(file).names());
    if (flags.json) process.stdout.write(`${JSON.stringify({ users: names })}\n`);
    else for (const name of names) process.stdout.write(`${name}\n`);
  },
});

const user = defineGroup({
  name: "user",
  summary: "manage the relay's users and their tokens",
  description:
    "Users authenticate to 'stoa hotlink serve' with a bearer token. The users file keeps a salted\n" +
    "SHA-256 hash of each token, never the token; it is rewritten atomically, so a server may\n" +
    "re-read it at any time (SIGHUP).",
  subcommands: [userAdd, userRemove, userLs],
  examples: [
    "stoa hotlink user add bob@example.org --users users.json",
    "stoa hotlink user ls --users users.json",
    "stoa hotlink user remove bob@example.org --users users.json",
  ],
});

/** The subcommands of `stoa hotlink`, in help order: define a new one above and add it here. */
const subcommands: Command[] = [serve, connect, tunnelCommand, ipcCommand, lsCommand, closeCommand, user];

export default defineGroup({
  name: "hotlink",
  summary: "lowest-latency peer data path: relay server, TCP tunnels, HLNK sockets",
  description:
    "Peers exchange bytes through a relay server ('serve') over one WebSocket each, with tokens\n" +
    "per user and path ACLs; sessions carry CBOR Data messages with sequence numbers, so a\n" +
    "receiver can reorder what arrives over the relay and a direct path alike. Each peer runs a\n" +
    "daemon ('connect'); 'tunnel', 'ipc', 'ls' and 'close' change a running daemon through its\n" +
    "control socket.",
  subcommands,
  examples: [
    "stoa hotlink user add alice@example.org --users users.json",
    "stoa hotlink serve --listen [::]:8470 --users users.json --acl acl.json",
    "stoa hotlink connect --server ws://relay:8470 --user alice@example.org --token-file alice.token \\\n" +
      "    --tunnel alice@example.org/mpc/0_to_1=127.0.0.1:10001@bob@example.org",
    "stoa hotlink tunnel alice@example.org/mpc/1_to_0=127.0.0.1:10002@bob@example.org",
    "stoa hotlink ls",
    "stoa hotlink close alice@example.org/mpc/1_to_0",
  ],
});
