/**
 * `stoa circles`: many circles (tenants named by secp256k1 public keys) on one WebSocket port,
 * scripts run in each circle's sandboxed worker. `serve` runs the server (src/circles/server.ts)
 * over the task queue of src/circles/queues.ts; `worker` runs Redis workers for other machines
 * (src/circles/redis-queue.ts); `play` runs one script (src/circles/client.ts);
 * `keygen` makes a key (src/circles/auth.ts). Each subcommand is defined on its own and listed
 * in `subcommands` at the bottom.
 */
import { readFileSync } from "node:fs";
import { z } from "zod";
import { type Command, type Flag, bool, defineCommand, defineGroup, list, str, under } from "./command.ts";
import { HostPort, serveMetrics, splitList, startService, waitFlag } from "./common.ts";
import { stateDirFlag } from "./flags.ts";
import { Duration } from "../core/duration.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { LogFormat, LogLevel, createLogger } from "../core/log.ts";
import { defaultStateDir } from "../core/paths.ts";
import { onShutdown } from "../core/shutdown.ts";
import { announceReady } from "../core/daemon.ts";
import { type PublicKey, generateKey, parsePublicKey, writeKeyFile } from "../circles/auth.ts";
import { MAX_INFLIGHT_PER_CONNECTION, MAX_SCRIPT_BYTES } from "../circles/protocol.ts";
import { AUTH_DEADLINE_MS, startCirclesServer } from "../circles/server.ts";
import { DEFAULT_PLAY_TIMEOUT_MS, playOnce } from "../circles/client.ts";
import { createTaskQueue } from "../circles/queues.ts";
import { KV_LIMITS } from "../circles/kv.ts";
import { RedisWorkers } from "../circles/redis-queue.ts";
import { bytesToHex } from "@noble/hashes/utils.js";

const MiB = 1024 * 1024;

/** How long the queue gets to stop once the server has answered or failed every play. */
const QUEUE_CLOSE_GRACE_MS = 2_000;
/** Slack of the whole shutdown over the plays' grace and the queue's. */
const SHUTDOWN_SLACK_MS = 1_000;
/** How long `worker` gets to stop on SIGTERM: its threads' stop (redis-queue.ts) and the slack. */
const WORKER_SHUTDOWN_MS = 5_000;
const EXAMPLE_KEY = "02a1…(66 hex digits)";

/** `-v`, repeatable (the seed's launcher took -v, -vv): each count logs at debug level. */
const verboseFlag: Flag<number> = {
  kind: "boolean",
  description: "log at debug level (-vv, as the seed's launcher took it, is the same)",
  short: "v",
  multiple: true,
  default: [],
  schema: z.array(z.boolean()).transform((given) => given.length),
};

const serve = defineCommand({
  name: "serve",
  summary: "serve circles on one port: WebSocket /<circle_pk>, JSON-RPC, sandboxed scripts",
  description:
    "Serves every circle given with -k on one port: a client connects to ws://HOST:PORT/<circle_pk>\n" +
    "(the key compressed or not) and speaks JSON-RPC 2.0 — fetch_nonce, authenticate (an eth-style\n" +
    "secp256k1 signature of the nonce), play {script}. An unknown circle gets 404 before any upgrade,\n" +
    "a path that is not a key 400. Scripts run in the circle's worker (QuickJS sandbox, the circle's\n" +
    "own db) through a task queue: embedded (in this process, db in SQLite under the state dir) or,\n" +
    "with --redis-url, Redis lists rhai_tasks:<circle_pk> served by workers anywhere. Also GET /health,\n" +
    "/metrics, /auth/nonce?public_key=PK (a nonce good on any connection) and the browser console at /.\n" +
    `A circle's db holds up to ${KV_LIMITS.circleBytes / MiB} MiB (embedded; with Redis its maxmemory is the bound) and one play\n` +
    `writes at most ${KV_LIMITS.playWriteBytes / MiB} MiB, all or nothing.\n` +
    `With --enable-auth a connection must authenticate within ${AUTH_DEADLINE_MS / 1000} s of connecting (else closed, 1008).\n` +
    `A connection runs at most ${MAX_INFLIGHT_PER_CONNECTION} plays at once. On SIGTERM plays in flight get up to --task-timeout\n` +
    "to finish, then answer -32000 \"server stopping\". Prints 'circles: <url>' and one line per circle when ready.",
  flags: {
    port: str("port to serve on (0 picks a free one)", { default: "8080", placeholder: "port", schema: z.coerce.number().int().min(0).max(65535) }),
    host: str("address to serve on (0.0.0.0 or :: for every address)", { default: "127.0.0.1", placeholder: "host" }),
    publicKey: list("a circle's public key (hex, compressed or not); several: -k a -k b or -k a,b", { short: "k", placeholder: "pk" }),
    enableAuth: bool("refuse play (-32001) until the connection authenticated"),
    redisUrl: str("run plays through Redis at this URL (workers: stoa circles worker); default the embedded queue", { placeholder: "url" }),
    stateDir: stateDirFlag("where the embedded queue keeps each circle's db (circles/)"),
    taskTimeout: str("a script's time limit", { default: "5s", placeholder: "duration", schema: Duration }),
    tlsCert: str("PEM certificate: serve https:// and wss:// (with --tls-key)", { placeholder: "file" }),
    tlsKey: str("PEM private key of --tls-cert", { placeholder: "file" }),
    metricsListen: str("also serve Prometheus /metrics, /ready and /healthz on this HOST:PORT", { placeholder: "host:port", schema: HostPort }),
    readyFile: str("once serving, write this file (JSON: pid, url, ws_url, port, circles) atomically; removed at exit", { placeholder: "file" }),
    debug: bool("log at debug level (connections, authentications, plays)"),
    verbose: verboseFlag,
    logLevel: str("debug|info|warn|error (default: info; debug with --debug or -v)", { choices: LogLevel.options }),
    logFormat: str("text, or json for one object per line", { default: "text", choices: LogFormat.options }),
  },
  examples: [
    "stoa circles serve -k 02a1… -k 03b2…   # two circles on ws://127.0.0.1:8080/<pk>",
    "stoa circles serve -k 02a1…,03b2… --enable-auth --host 0.0.0.0 --port 8080",
    "stoa circles serve -k $(stoa circles keygen --out circle.key) --redis-url redis://127.0.0.1:6379 --task-timeout 2s",
    "stoa circles serve -k 02a1… --tls-cert cert.pem --tls-key key.pem --metrics-listen 127.0.0.1:9480",
    "curl -s http://127.0.0.1:8080/health",
  ],
  async run({ flags, path }) {
    const circles = parseCircleKeys(flags.publicKey, path);
    const tls = readTls(flags.tlsCert, flags.tlsKey, path);
    const level = flags.logLevel ?? (flags.debug || flags.verbose > 0 ? "debug" : "info");
    const graceMs = flags.taskTimeout;
    const log = startService("circles", { logLevel: level, logFormat: flags.logFormat }, {
      daemon: true,
      shutdownTimeoutMs: graceMs + QUEUE_CLOSE_GRACE_MS + SHUTDOWN_SLACK_MS,
    });
    const queue = await under(path, () =>
      createTaskQueue({
        circles: circles.map((key) => key.hex),
        redisUrl: flags.redisUrl,
        stateDir: flags.stateDir ?? defaultStateDir(),
        log,
      }),
    );
    let server: ReturnType<typeof startCirclesServer>;
    try {
      server = under(path, () =>
        startCirclesServer({
          host: flags.host,
          port: flags.port,
          circles,
          enableAuth: flags.enableAuth,
          queue,
          taskTimeoutMs: flags.taskTimeout,
          ...(tls === undefined ? {} : { tls }),
          log,
        }),
      );
    } catch (err) {
      await queue.close(0);
      throw err;
    }
    onShutdown("circles server and queue", async () => {
      await server.close(graceMs);
      await queue.close(QUEUE_CLOSE_GRACE_MS);
    });
    serveMetrics(flags.metricsListen, log);
    const auth = flags.enableAuth ? "auth required" : "auth optional";
    log.info("circles serving", { url: server.wsUrl, circles: circles.length, auth: flags.enableAuth, queue: flags.redisUrl === undefined ? "embedded" : "redis" });
    process.stdout.write(
      `circles: ${server.wsUrl} (${circles.length} circle${circles.length === 1 ? "" : "s"}; ${auth}; console ${server.url}/)\n` +
        circles.map((key) => `  ${server.wsUrl}/${key.hex}\n`).join(""),
    );
    announceReady({
      status: `circles ${server.wsUrl} (${circles.length} circles)`,
      readyFile: flags.readyFile,
      fields: { url: server.url, ws_url: server.wsUrl, port: server.port, circles: circles.map((key) => key.hex) },
    });
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});

/** The -k values (repeatable, comma-separated), parsed and deduplicated; a usage error names a bad key. */
function parseCircleKeys(values: readonly string[], path: string): PublicKey[] {
  const given = splitList(values);
  if (given.length === 0) throw new StoaError("usage", `${path}: -k/--public-key is required, e.g. -k ${EXAMPLE_KEY} (make one with stoa circles keygen)`);
  const keys = new Map<string, PublicKey>();
  for (const text of given) {
    try {
      const key = parsePublicKey(text);
      keys.set(key.hex, key);
    } catch (err) {
      throw new StoaError("usage", `${path}: bad -k/--public-key: ${describeError(err)}`);
    }
  }
  return [...keys.values()];
}

/** The PEM text of --tls-cert and --tls-key (both or neither); a config error names the flag. */
function readTls(cert: string | undefined, key: string | undefined, path: string): { cert: string; key: string } | undefined {
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || key === undefined) throw new StoaError("usage", `${path}: --tls-cert and --tls-key go together: give both`);
  const read = (file: string, flag: string): string => {
    let text: string;
    try {
      text = readFileSync(file, "utf8");
    } catch (err) {
      throw new StoaError("config", `${path}: cannot read ${flag} ${file}: ${describeError(err)}`);
    }
    if (!text.includes("-----BEGIN")) throw new StoaError("config", `${path}: ${flag} ${file} is not a PEM file`);
    return text;
  };
  return { cert: read(cert, "--tls-cert"), key: read(key, "--tls-key") };
}

const play = defineCommand({
  name: "play",
  summary: "run one script in a circle and print its output",
  description:
    "Connects to a circle (ws://HOST:PORT/<circle_pk>), authenticates when given --key-file (fetch_nonce,\n" +
    "sign, authenticate), runs SCRIPT (JavaScript; '-' reads it from stdin) and prints its output.\n" +
    "A JSON-RPC error prints its message on stderr and exits 1; so does a refused connection\n" +
    `(with the server's status and message). Scripts are at most ${MAX_SCRIPT_BYTES / 1024} KiB.`,
  flags: {
    url: str("the circle's WebSocket URL", { placeholder: "url", required: { example: "ws://127.0.0.1:8080/<circle_pk>" } }),
    keyFile: str("private key file (stoa circles keygen --out F): authenticate before the play", { placeholder: "file" }),
    timeout: str("give up after this long (connect, authenticate and play)", {
      default: `${DEFAULT_PLAY_TIMEOUT_MS / 1000}s`,
      placeholder: "duration",
      schema: Duration,
    }),
    ...waitFlag("the circles server"),
  },
  positionals: [{ name: "SCRIPT", description: "the script, or - to read it from stdin", required: true }],
  examples: [
    "stoa circles play --url ws://127.0.0.1:8080/02a1… '40 + 2'   # prints 42",
    "stoa circles play --url ws://127.0.0.1:8080/02a1… --key-file me.key 'db.set(\"n\", 1); db.get(\"n\")'",
    "echo 'print(CONTEXT_ID)' | stoa circles play --url ws://127.0.0.1:8080/02a1… --key-file me.key -",
  ],
  async run({ flags, args, path }) {
    const arg = args[0] ?? "";
    const script = arg === "-" ? await Bun.stdin.text() : arg;
    const log = createLogger({ level: "warn" });
    const output = await under(path, () => playOnce({ url: flags.url, keyFile: flags.keyFile, script, timeoutMs: flags.timeout, waitMs: flags.wait, log }));
    process.stdout.write(output.endsWith("\n") || output === "" ? output : `${output}\n`);
  },
});

const keygen = defineCommand({
  name: "keygen",
  summary: "make a secp256k1 key: private key to a 0600 file, public key on stdout",
  description:
    "Makes a new secp256k1 key pair. The private key goes, as hex on one line, to the file given by\n" +
    "--out (mode 0600; an existing file is never replaced) and the public key (compressed, hex) is\n" +
    'printed; with --json one object {"public_key", "private_key_file"}. Without --out the private key\n' +
    'is printed only when asked with --json ({"public_key", "private_key"}), never by accident.\n' +
    "The public key names a circle (serve -k) or a caller (play --key-file).",
  flags: {
    out: str("write the private key here (mode 0600)", { placeholder: "file" }),
    json: bool('print JSON: {"public_key", "private_key_file"} (or "private_key" without --out)'),
  },
  examples: [
    "stoa circles keygen --out me.key             # prints the public key",
    "stoa circles keygen --out circle.key --json | jq -r .public_key",
    "stoa circles serve -k $(stoa circles keygen --out circle.key)",
  ],
  run({ flags, path }) {
    const keys = generateKey();
    const publicKey = keys.publicKey.hex;
    if (flags.out === undefined) {
      if (!flags.json) {
        throw new StoaError("usage", `${path}: give --out FILE for the private key (mode 0600), or --json to print it, e.g. --out me.key`);
      }
      process.stdout.write(`${JSON.stringify({ public_key: publicKey, private_key: bytesToHex(keys.privateKey) })}\n`);
      return;
    }
    const out = flags.out;
    under(path, () => writeKeyFile(out, keys.privateKey));
    process.stdout.write(flags.json ? `${JSON.stringify({ public_key: publicKey, private_key_file: out })}\n` : `${publicKey}\n`);
  },
});

const worker = defineCommand({
  name: "worker",
  summary: "run circles' scripts from Redis (the queue of serve --redis-url), on any machine",
  description:
    "Takes the plays of each circle given with -k from Redis (the list rhai_tasks:<circle_pk> that\n" +
    "'stoa circles serve --redis-url' fills), one worker thread per circle, the circle's db in the Redis\n" +
    "hash circle_db:<circle_pk>. Run as many as you like, here or elsewhere: a worker that dies mid-play\n" +
    "loses no play (another takes it once its heartbeat expires). SIGTERM: the play running finishes\n" +
    "(or goes back to the queue), the worker leaves. Prints 'circles worker: …' when taking plays.",
  flags: {
    redisUrl: str("the Redis of the server (serve --redis-url)", { placeholder: "url", required: { example: "redis://127.0.0.1:6379" } }),
    publicKey: list("a circle's public key (hex, compressed or not); several: -k a -k b or -k a,b", { short: "k", placeholder: "pk" }),
    debug: bool("log at debug level"),
    verbose: verboseFlag,
    logLevel: str("debug|info|warn|error (default: info; debug with --debug or -v)", { choices: LogLevel.options }),
    logFormat: str("text, or json for one object per line", { default: "text", choices: LogFormat.options }),
  },
  examples: [
    "stoa circles worker --redis-url redis://10.0.0.5:6379 -k 02a1… -k 03b2…",
    "stoa circles serve -k 02a1… --redis-url redis://127.0.0.1:6379 & stoa circles worker --redis-url redis://127.0.0.1:6379 -k 02a1…",
  ],
  async run({ flags, path }) {
    const circles = parseCircleKeys(flags.publicKey, path).map((key) => key.hex);
    const level = flags.logLevel ?? (flags.debug || flags.verbose > 0 ? "debug" : "info");
    const log = startService("circles-worker", { logLevel: level, logFormat: flags.logFormat }, { shutdownTimeoutMs: WORKER_SHUTDOWN_MS });
    const workers = await RedisWorkers.start({ url: flags.redisUrl, circles, log, perCircle: 1 });
    onShutdown("circle workers", () => workers.close());
    process.stdout.write(`circles worker: ${circles.length} circle${circles.length === 1 ? "" : "s"} from ${flags.redisUrl} (${workers.workerIds.join(", ")})\n`);
    await new Promise(() => {}); // runs until a signal; shutdown exits the process
  },
});

/** The subcommands of `stoa circles`, in help order. */
const subcommands: Command[] = [serve, worker, play, keygen];

export default defineGroup({
  name: "circles",
  summary: "many circles on one WebSocket port: secp256k1 auth, sandboxed scripts over a queue",
  description:
    "A circle is a tenant named by a secp256k1 public key. One server ('serve') serves many circles on\n" +
    "one port, by path; clients authenticate per circle with an eth-style signature and run scripts\n" +
    "('play') in that circle's sandboxed worker, with that circle's own db. 'keygen' makes keys.",
  subcommands,
  examples: [
    "stoa circles keygen --out circle-a.key > circle-a.pub; stoa circles keygen --out me.key > me.pub",
    "stoa circles serve -k $(cat circle-a.pub) --enable-auth",
    "stoa circles play --url ws://127.0.0.1:8080/$(cat circle-a.pub) --key-file me.key '40 + 2'",
  ],
});
