import { z } from "zod";
import { bool, configFlag, defineCommand, str } from "./command.ts";
import { clientLogFlags, clientLogLevel, portsFlag, startService, waitFlag } from "./common.ts";
import { metaFlag, runDirFlag, stateDirFlag } from "./flags.ts";
import { StoaError } from "../core/errors.ts";
import { defaultRunDir, defaultStateDir } from "../core/paths.ts";
import { clientToken, MetaClient } from "../meta/client.ts";
import { onShutdown, shutdown, shutdownManager } from "../core/shutdown.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { InputFormats, readValues } from "../stream/input.ts";
import { PubId } from "../stream/names.ts";
import { DEFAULT_HISTORY, MAX_HISTORY, SlowPolicy } from "../stream/protocol.ts";
import { startPublishing } from "../stream/session.ts";
import { waitForGateway, waitForMeta } from "../status/reach.ts";

export default defineCommand({
  name: "pub",
  summary: "publish stdin as a stream under a name",
  description:
    "Registers NAME with the metaserver, serves the stream behind this host's gateway (Unix\n" +
    "sockets in the run dir), gets confirmed through the gateway, then publishes each value read\n" +
    "from stdin. At the end of stdin it deregisters and exits (or keeps serving with --stay).\n" +
    "It waits up to --wait for the gateway and the metaserver to answer (a script may start\n" +
    "'stoa up &' just before), prints 'publishing NAME as PUB_ID: URL' on stdout once live, and\n" +
    "on stderr only warnings (-v: what it does).\n" +
    "With --addr auto there is no gateway: the publisher adds its own /128 (nodad) to --dev,\n" +
    "serves the three ports on it directly and deletes it on exit (stoa addr gc after a crash).",
  config: true,
  positionals: [{ name: "name", description: "hierarchical name, e.g. lab/sensors/temp", required: true }],
  flags: {
    meta: metaFlag(DEFAULT_META_PORT),
    runDir: runDirFlag("run dir of the local gateway"),
    tokenFile: str("the metaserver's token, mode 0600 (default: $STOA_META_TOKEN, else the state dir's meta.token if --meta is on this host)", { placeholder: "file" }),
    stateDir: stateDirFlag("where a local stoa up/meta keeps meta.token"),
    format: str("how stdin becomes values: lines (one string each), json (one JSON value per line), raw (byte chunks)", {
      default: "lines",
      choices: InputFormats,
    }),
    slow: str("what a too-slow subscriber gets", { default: "drop-oldest", choices: SlowPolicy.options }),
    pubId: str("stable pub_id (default: a fresh random one)", { placeholder: "id", schema: PubId }),
    host: str("host address clients reach the gateway at (default: from the gateway)", { placeholder: "addr" }),
    internal: str("how the gateway reaches this publisher", { default: "unix", choices: ["unix", "tcp"] }),
    stay: bool("keep serving the latest value after stdin ends, until SIGINT/SIGTERM"),
    history: str(`values kept for subscribers that start before now (stoa sub --from oldest), 1-${MAX_HISTORY}; 1 keeps the latest`, {
      default: String(DEFAULT_HISTORY),
      placeholder: "n",
      schema: z.coerce.number().int().min(1).max(MAX_HISTORY),
    }),
    addr: str("'auto': no gateway — serve on a random /128 of --prefix added to --dev (needs CAP_NET_ADMIN)", {
      choices: ["auto"],
    }),
    prefix: str("with --addr auto: the on-link prefix to draw the address from", { placeholder: "P/64" }),
    dev: str("with --addr auto: the interface to add the address to", { placeholder: "IF" }),
    ports: portsFlag("with --addr auto: service,string,ping ports to serve on"),
    ...waitFlag("the gateway and the metaserver"),
    ...clientLogFlags(),
    config: configFlag(),
  },
  examples: [
    "seq 1 100 | stoa pub demo/counter --stay --history 100",
    "sensor-read | sudo stoa pub lab/temp --addr auto --prefix fd00:1:2:3::/64 --dev eth0 --meta http://[fd00:1:2:3::9]:8090",
    "tail -F /var/log/app.json | stoa pub app/log --format json --meta http://[fd00::2]:8090 --token-file ~/.stoa/meta.token",
    "echo ready | stoa pub jobs/42/status --stay",
  ],
  async run({ flags, args, path }) {
    const log = startService("pub", { logLevel: clientLogLevel(flags), logFormat: flags.logFormat });
    const name = args[0] ?? "";
    if (flags.addr === "auto" && (flags.prefix === undefined || flags.dev === undefined)) {
      throw new StoaError("usage", `${path}: --addr auto needs --prefix P/64 and --dev IF`);
    }
    if (flags.addr === undefined && (flags.prefix !== undefined || flags.dev !== undefined)) {
      throw new StoaError("usage", `${path}: --prefix and --dev go with --addr auto`);
    }
    const runDir = flags.runDir ?? defaultRunDir();
    // A script starts `stoa up &` and this at once: wait for both to answer (--wait), and only
    // then look for the token, which a starting `stoa up` creates.
    const started = performance.now();
    // Waited for, not failed on: without them startPublishing fails with what to start.
    const gatewayUp = flags.addr !== undefined || (await waitForGateway(runDir, flags.wait, log).then(() => true, () => false));
    if (gatewayUp) await waitForMeta(new MetaClient(flags.meta), Math.max(0, flags.wait - (performance.now() - started)), log).catch(() => {});
    const metaToken = clientToken({ metaUrl: flags.meta, tokenFile: flags.tokenFile, stateDir: flags.stateDir ?? defaultStateDir() });
    const session = await startPublishing({
      name,
      pubId: flags.pubId,
      metaUrl: flags.meta,
      metaToken,
      runDir,
      host: flags.host,
      internal: flags.internal,
      ownAddress: flags.addr === "auto" && flags.prefix && flags.dev ? { prefix: flags.prefix, dev: flags.dev, ports: flags.ports } : undefined,
      slow: flags.slow,
      history: flags.history,
      log,
    });
    onShutdown("publisher", () => session.close());
    // Not a log line: what a script may want to know (its pub_id, its URL), on stdout, once live.
    process.stdout.write(`publishing ${session.info.name} as ${session.info.pub_id}: ${session.info.urls.service}\n`);
    for await (const value of readValues(Bun.stdin.stream(), flags.format, (bad) => log.warn("skipped a line of stdin", { line: bad.line, reason: bad.reason }))) {
      // A signal's shutdown closes the publisher while stdin still flows: let it finish and exit.
      if (shutdownManager.stopping) return await new Promise<number>(() => {});
      try {
        session.publisher.publish(value);
      } catch (err) {
        if (!(err instanceof StoaError) || err.code === "closed") throw err;
        log.warn("skipped a value", { reason: err.message });
      }
    }
    if (flags.stay) {
      log.info("stdin ended; serving the latest value until stopped");
      return await new Promise<number>(() => {});
    }
    return await shutdown("end of stdin");
  },
});
