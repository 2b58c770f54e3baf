import { bool, defineCommand } from "./command.ts";
import { buildInfo } from "../core/buildinfo.ts";

export default defineCommand({
  name: "version",
  summary: "print version, Bun version and build info",
  flags: { json: bool("print one JSON object instead of text") },
  examples: ["stoa version", "stoa version --json | jq -r .commit"],
  run({ flags }) {
    const info = buildInfo();
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(info)}\n`);
      return;
    }
    process.stdout.write(
      `stoa ${info.version} (commit ${info.commit}, built ${info.built})\n` +
        `bun ${info.bun} ${info.platform}/${info.arch}${info.compiled ? "" : " (from source)"}\n`,
    );
  },
});
