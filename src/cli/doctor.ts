import { bool, defineCommand } from "./command.ts";
import { runDirFlag } from "./flags.ts";
import { runChecks } from "../doctor/checks.ts";

export default defineCommand({
  name: "doctor",
  summary: "check this host: capabilities, io_uring, tools, free ports, run dir",
  description:
    "Reports the kernel, root and capabilities (CAP_NET_ADMIN, CAP_NET_RAW), io_uring, the tools\n" +
    "this stoa's commands use (with --dev also those of the tests and benchmarks: ip, nginx),\n" +
    "whether the gateway's ports are free (or held by this host's own gateway), and the run dir:\n" +
    "its publishers, and directories an older stoa left there. Every finding that is not ok says\n" +
    "what to do. Exits 0 unless --strict finds a problem.",
  flags: {
    json: bool("print one JSON object: {ok, checks: [{name, status, detail, fix?}]}"),
    strict: bool("exit 1 when any check is not ok (for CI smoke tests)"),
    dev: bool("also check the tools the checkout's tests and benchmarks use (ip, nginx)"),
    runDir: runDirFlag("run dir to look at"),
  },
  examples: ["stoa doctor", "stoa doctor --json | jq '.checks[] | select(.status != \"ok\")'", "stoa doctor --strict && stoa up"],
  async run({ flags, commands }) {
    const checks = await runChecks({ runDir: flags.runDir, commands: commands.map((c) => c.name), dev: flags.dev });
    const ok = checks.every((c) => c.status === "ok");
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ ok, checks })}\n`);
    } else {
      const width = Math.max(...checks.map((c) => c.name.length));
      for (const c of checks) {
        const fix = c.fix ? `\n${" ".repeat(width + 9)}→ ${c.fix}` : "";
        process.stdout.write(`${c.status.padEnd(5)} ${c.name.padEnd(width)}   ${c.detail}${fix}\n`);
      }
      const problems = checks.filter((c) => c.status !== "ok").length;
      process.stdout.write(problems === 0 ? "\nall checks passed\n" : `\n${problems} check(s) need attention\n`);
    }
    return flags.strict && !ok ? 1 : 0;
  },
});
