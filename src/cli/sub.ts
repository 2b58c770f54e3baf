import { z } from "zod";
import { bool, configFlag, defineCommand, str } from "./command.ts";
import { clientLogFlags, clientLogLevel, startService, waitFlag } from "./common.ts";
import { metaFlag, stateDirFlag } from "./flags.ts";
import { StoaError } from "../core/errors.ts";
import { onShutdown, shutdown } from "../core/shutdown.ts";
import { defaultStateDir } from "../core/paths.ts";
import { clientToken, MetaClient } from "../meta/client.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { describeRefusal } from "../core/ws.ts";
import { FROM_WORDS } from "../stream/protocol.ts";
import { follow } from "../stream/follow.ts";
import { latest } from "../stream/subscriber.ts";
import { valueText, valueToJson } from "../stream/value.ts";
import { waitForMeta, waitForPublisher } from "../status/reach.ts";

const PositiveInt = z.string().regex(/^[0-9]+$/, "not a positive integer").transform(Number).pipe(z.number().int().min(1, "not a positive integer").max(Number.MAX_SAFE_INTEGER, "too large"));

export default defineCommand({
  name: "sub",
  summary: "subscribe to a stream by name and print its values",
  description:
    "Looks NAME up in the metaserver, connects through the publisher's gateway and prints each\n" +
    "value on its own line, reconnecting with backoff: the latest value first (--from), then live\n" +
    "ones. Values missed (a slow reader, a reconnect longer than the publisher's --history) are\n" +
    "reported on stderr, and so is a refusal by the gateway (e.g. 502 target_down). It follows\n" +
    "the publisher when it moves to another host or restarts under a new pub_id (it watches NAME\n" +
    "in the metaserver), from that publisher's oldest value. --latest asks for the latest value\n" +
    "once and exits. It waits up to --wait for the metaserver and for NAME to be registered (a\n" +
    "script may start the publisher just before); -v logs what it does.",
  config: true,
  positionals: [{ name: "name", description: "the publisher's name, e.g. lab/sensors/temp", required: true }],
  flags: {
    meta: metaFlag(DEFAULT_META_PORT),
    tokenFile: str("token for a metaserver whose reads need one, mode 0600 (default: $STOA_META_TOKEN, else the state dir's meta.token if --meta is on this host)", { placeholder: "file" }),
    stateDir: stateDirFlag("where a local stoa up/meta keeps meta.token"),
    json: bool('one JSON object per value: {"seq":n,"ts":"…","value":…}'),
    latest: bool("print the latest value once (a ping through the gateway) and exit"),
    from: str("where to start: latest (the last value, then live), now (only new values), oldest (the publisher's whole --history, then live)", {
      default: "latest",
      choices: FROM_WORDS,
    }),
    count: str("exit after this many values", { placeholder: "n", schema: PositiveInt }),
    ...waitFlag("the metaserver and the publisher"),
    ...clientLogFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa sub demo/counter",
    "stoa sub demo/counter --from oldest --count 100",
    "stoa sub app/log --json | jq .value",
    "stoa sub jobs/42/status --latest",
    "stoa sub demo/counter --count 10 --meta http://[fd00::2]:8090",
  ],
  async run({ flags, args }) {
    const log = startService("sub", { logLevel: clientLogLevel(flags), logFormat: flags.logFormat });
    // Started with the publisher in one script: wait for the metaserver, then for the name (--wait).
    const started = performance.now();
    await waitForMeta(new MetaClient(flags.meta), flags.wait, log);
    const token = clientToken({ metaUrl: flags.meta, tokenFile: flags.tokenFile, stateDir: flags.stateDir ?? defaultStateDir() });
    const left = Math.max(0, flags.wait - (performance.now() - started));
    const info = await waitForPublisher(new MetaClient(flags.meta, { token }), args[0] ?? "", left, log);
    if (flags.latest) {
      const reply = await latest(info.urls.ping);
      // The same object as a `--json` line of a subscription (a publisher before the ping
      // reply's `json` field: its text).
      if (flags.json) process.stdout.write(`${JSON.stringify({ seq: reply.seq, ts: reply.ts, value: reply.json === undefined ? reply.value : reply.json })}\n`);
      else if (reply.value === null) throw new StoaError("closed", `${info.name} has published nothing yet`);
      else process.stdout.write(`${reply.value}\n`);
      return 0;
    }
    let seen = 0;
    const done = Promise.withResolvers<number>();
    let refusal = "";
    // Subscribed, and watching NAME: a new registration of it (another pub_id or host) is followed.
    const sub = follow({
      meta: new MetaClient(flags.meta, { token }),
      info,
      log,
      from: { at: flags.from },
      // Each new answer once at warning level (a dead publisher's 502 and its message), its
      // repeats while retrying at info.
      onRefused: (r, publisher) => {
        const text = describeRefusal(r);
        if (text !== refusal) log.warn(`the gateway refused the subscription: ${text}; retrying`, { url: publisher.urls.service });
        else log.info(`still refused: ${text}; retrying`);
        refusal = text;
      },
      onMoved: () => {
        refusal = "";
      },
      onValue: ({ seq, ts, value }) => {
        process.stdout.write(flags.json ? `${JSON.stringify({ seq, ts, value: valueToJson(value) })}\n` : `${valueText(value)}\n`);
        if (flags.count !== undefined && ++seen >= flags.count) done.resolve(0);
      },
      onGap: ({ next, dropped, reason }) => log.warn("missed values", { dropped, next, reason }),
      onOpen: (_open, publisher) => {
        refusal = "";
        log.info("subscribed", { publisher: publisher.name, pub_id: publisher.pub_id, url: publisher.urls.service });
      },
      onClose: (code, reason, willRetry) => log.info("connection closed", { code, reason, retrying: willRetry }),
    });
    onShutdown("subscription", () => sub.close());
    return await Promise.race([done.promise, sub.closed.then(() => 1)]).then((code) => shutdown("done", code));
  },
});
