import { z } from "zod";
import { bool, configFlag, defineCommand, str } from "./command.ts";
import { logFlags, startService } from "./common.ts";
import { StoaError } from "../core/errors.ts";
import { onShutdown, shutdown } from "../core/shutdown.ts";
import { defaultStateDir } from "../core/paths.ts";
import { clientToken, MetaClient } from "../meta/client.ts";
import { DEFAULT_META_PORT } from "../meta/protocol.ts";
import { latest, subscribe } from "../stream/subscriber.ts";
import { valueText, valueToJson } from "../stream/value.ts";

export default defineCommand({
  name: "sub",
  summary: "subscribe to a stream by name and print its values",
  description:
    "Looks NAME up in the metaserver, connects through the publisher's gateway and prints each\n" +
    "value on its own line, reconnecting with backoff. Values missed (a slow reader, a reconnect)\n" +
    "are reported on stderr. --latest asks for the latest value once and exits.",
  config: true,
  positionals: [{ name: "name", description: "the publisher's name, e.g. lab/sensors/temp", required: true }],
  flags: {
    meta: str("metaserver URL", { default: `http://[::1]:${DEFAULT_META_PORT}`, placeholder: "url" }),
    tokenFile: str("token for a metaserver whose reads need one, mode 0600 (default: $STOA_META_TOKEN, else the state dir's meta.token if --meta is on this host)", { placeholder: "file" }),
    stateDir: str("where a local stoa up/meta keeps meta.token (default: /var/lib/stoa as root, else ~/.local/state/stoa)", { placeholder: "dir" }),
    json: bool('one JSON object per value: {"seq":n,"ts":"…","value":…}'),
    latest: bool("print the latest value once (a ping through the gateway) and exit"),
    count: str("exit after this many values", { placeholder: "n", schema: z.coerce.number().int().min(1) }),
    ...logFlags(),
    config: configFlag(),
  },
  examples: [
    "stoa sub demo/counter",
    "stoa sub app/log --json | jq .value",
    "stoa sub jobs/42/status --latest",
    "stoa sub demo/counter --count 10 --meta http://[fd00::2]:8090",
  ],
  async run({ flags, args }) {
    const log = startService("sub", flags);
    const token = clientToken({ metaUrl: flags.meta, tokenFile: flags.tokenFile, stateDir: flags.stateDir ?? defaultStateDir() });
    const info = await new MetaClient(flags.meta, { token }).lookup(args[0] ?? "");
    if (flags.latest) {
      const reply = await latest(info.urls.ping);
      if (flags.json) process.stdout.write(`${JSON.stringify(reply)}\n`);
      else if (reply.value === null) throw new StoaError("closed", `${info.name} has published nothing yet`);
      else process.stdout.write(`${reply.value}\n`);
      return 0;
    }
    let seen = 0;
    const done = Promise.withResolvers<number>();
    const sub = subscribe(info.urls.service, {
      onValue: ({ seq, ts, value }) => {
        process.stdout.write(flags.json ? `${JSON.stringify({ seq, ts, value: valueToJson(value) })}\n` : `${valueText(value)}\n`);
        if (flags.count !== undefined && ++seen >= flags.count) done.resolve(0);
      },
      onGap: ({ next, dropped, reason }) => log.warn("missed values", { dropped, next, reason }),
      onOpen: () => log.info("subscribed", { publisher: info.name, url: info.urls.service }),
      onClose: (code, reason, willRetry) => log.info("connection closed", { code, reason, retrying: willRetry }),
    });
    onShutdown("subscription", () => sub.close());
    return await Promise.race([done.promise, sub.closed.then(() => 1)]).then((code) => shutdown("done", code));
  },
});
