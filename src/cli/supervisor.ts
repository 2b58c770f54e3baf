/**
 * `stoa supervisor`: a UDP/multicast packet relay (src/supervisor/: supervisor.ts has the
 * processes, protocol.ts the messages and who holds which fd). `run` is the daemon; the other
 * subcommands talk to it over its control socket; `worker` is what `run` starts.
 */
import { availableParallelism } from "node:os";
import { z } from "zod";
import { type Command, bool, defineCommand, defineGroup, list, str } from "./command.ts";
import { logFlags, startService, waitFlag } from "./common.ts";
import { runDirFlag } from "./flags.ts";
import { announceReady } from "../core/daemon.ts";
import { parseEndpoint } from "../core/endpoint.ts";
import { StoaError } from "../core/errors.ts";
import { createLogger } from "../core/log.ts";
import { waitFor } from "../core/wait.ts";
import { defaultRunDir, supervisorControlPath } from "../core/paths.ts";
import { onShutdown, shutdown } from "../core/shutdown.ts";
import { lookupUser } from "../ffi/privileges.ts";
import { supervisorRequest } from "../supervisor/control-client.ts";
import { type ControlRequest, MAX_OUTPUTS_PER_RULE, NewRule, type Output, type Rule, SHUTDOWN_GRACE_MS } from "../supervisor/protocol.ts";
import { MAX_DATA_WORKERS, Supervisor } from "../supervisor/supervisor.ts";

/** `--control unix:PATH` (or a plain path): the control socket. */
const ControlPath = z.string().transform((text, ctx) => {
  if (!text.startsWith("unix:")) {
    if (text.startsWith("/") || text.startsWith(".")) return text;
    ctx.addIssue({ code: "custom", message: `--control is unix:PATH (or a path), got "${text}"` });
    return z.NEVER;
  }
  try {
    const endpoint = parseEndpoint(text);
    if (endpoint.kind === "unix") return endpoint.path;
  } catch (err) {
    ctx.addIssue({ code: "custom", message: err instanceof Error ? err.message : String(err) });
    return z.NEVER;
  }
  return z.NEVER;
});

const controlFlags = () => ({
  control: str("the supervisor's control socket, unix:PATH (default: unix:<run-dir>/supervisor/control.sock)", { placeholder: "unix:path", schema: ControlPath }),
  runDir: runDirFlag("run dir of the supervisor"),
  ...waitFlag("the supervisor"),
});

function controlPathOf(flags: { control?: string; runDir?: string }): string {
  return flags.control ?? supervisorControlPath(flags.runDir ?? defaultRunDir());
}

/** One request to the supervisor, waiting up to --wait for one to serve the control socket (`run &` then a client). */
function ask<R extends ControlRequest>(flags: { control?: string; runDir?: string; wait: number }, request: R): ReturnType<typeof supervisorRequest<R>> {
  const path = controlPathOf(flags);
  return waitFor(() => supervisorRequest(path, request), {
    what: `the supervisor at ${path}`,
    waitMs: flags.wait,
    retryable: (err) => err instanceof StoaError && err.code === "closed",
    log: createLogger({ level: "warn", name: "supervisor" }),
  });
}

const json = (what: string) => bool(`print ${what} as JSON`);

function print(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return `${rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")).join("\n")}\n`;
}

const outputText = (o: Output): string => `${o.group}:${o.port}:${o.interface}`;

const run = defineCommand({
  name: "run",
  summary: "the relay: a supervisor, one control-plane worker and N data-plane workers",
  description:
    "Starts the supervisor, which starts this binary again as one control-plane worker (it serves\n" +
    "the control socket) and N data-plane workers (one io_uring loop each, reading the input\n" +
    "interfaces' packets through AF_PACKET with PACKET_FANOUT, so each packet goes to one worker).\n" +
    "The supervisor stays root to open the sockets of every rule and passes them to the workers\n" +
    "(SCM_RIGHTS); the workers drop to --user before they touch a packet. A worker that dies or\n" +
    "stops answering is started again (250 ms backoff doubling to 16 s) with the current rules.\n" +
    "With --rules FILE the rules are loaded at start and the file is rewritten on every change.\n" +
    "SIGTERM or SIGINT: workers are told to stop, killed after 3 s, and the control socket removed.",
  flags: {
    workers: str("data-plane workers (default: one per core)", { placeholder: "n", schema: z.coerce.number().int().min(1).max(MAX_DATA_WORKERS) }),
    control: controlFlags().control,
    runDir: controlFlags().runDir,
    user: str("the account workers drop to (default: nobody when run as root, else none)", { placeholder: "user" }),
    rules: str("a JSON list of rules: loaded at start, rewritten on every change (stoa supervisor list-rules --json writes one)", { placeholder: "file" }),
    readyFile: str("once every worker runs, write this file (JSON: pid, control, workers) atomically; removed at exit", { placeholder: "file" }),
    ...logFlags(),
  },
  examples: [
    "sudo stoa supervisor run --workers 2",
    "sudo stoa supervisor run --rules /var/lib/stoa/relay-rules.json --user nobody",
    "sudo stoa supervisor run --control unix:/tmp/relay.sock --ready-file /tmp/relay.ready &",
  ],
  async run({ flags }) {
    const log = startService("supervisor", flags, { daemon: true, shutdownTimeoutMs: SHUTDOWN_GRACE_MS + 5_000 });
    const user = flags.user ?? (process.getuid?.() === 0 ? "nobody" : undefined);
    if (user !== undefined) lookupUser(user); // a clear error now, not from every worker
    const supervisor = await Supervisor.start({
      workers: flags.workers ?? availableParallelism(),
      controlPath: controlPathOf(flags),
      user,
      rulesFile: flags.rules,
      workerFlags: ["--log-level", flags.logLevel, "--log-format", flags.logFormat],
      log,
    });
    onShutdown("supervisor", () => supervisor.stop());
    supervisor.onStopRequest(() => void shutdown("shutdown requested on the control socket", 0));
    const workers = supervisor.workers();
    announceReady({
      status: `supervisor ${supervisor.controlPath}`,
      readyFile: flags.readyFile,
      fields: { control: supervisor.controlPath, workers: workers.map((w) => ({ role: w.role, index: w.index, pid: w.pid })) },
    });
    log.info("supervisor running", { control: supervisor.controlPath, data_workers: workers.length - 1, user: user ?? "(unchanged)" });
    await new Promise(() => {}); // until shutdown exits the process
  },
});

/** `--output G:P:IF` → an output; the rule's schema checks the parts. */
function parseOutput(text: string): { group: string; port: number; interface: string } {
  const m = /^([^:]*):([^:]*):(.*)$/.exec(text);
  if (m === null) throw new StoaError("usage", `--output ${text}: expected GROUP:PORT:INTERFACE, e.g. 239.2.2.2:6000:eth1`);
  return { group: m[1]!, port: /^\d{1,5}$/.test(m[2]!) ? Number(m[2]) : Number.NaN, interface: m[3]! };
}

const addRule = defineCommand({
  name: "add-rule",
  summary: "relay input-group:port on an interface to one or more outputs; prints the rule id",
  description:
    "Packets to --input-group:--input-port arriving on --input-interface are copied to every\n" +
    `--output GROUP:PORT:INTERFACE (1-${MAX_OUTPUTS_PER_RULE}; unicast addresses work too). The supervisor checks the\n` +
    "rule (ports 1-65535, interfaces that exist, no output on the input interface, no second rule\n" +
    "for the same input) and answers one line per problem (exit 2). An existing --rule-id is replaced.",
  flags: {
    inputInterface: str("the interface packets arrive on", { placeholder: "if", required: { example: "eth0" } }),
    inputGroup: str("their destination address (a multicast group or a unicast address)", { placeholder: "addr", required: { example: "239.1.1.1" } }),
    inputPort: str("their destination port", { placeholder: "port", required: { example: "5000" } }),
    output: list("GROUP:PORT:INTERFACE to send each packet's payload to (repeat for fan-out)", { placeholder: "g:p:if" }),
    ruleId: str("the rule's id (default: made, r1, r2, …)", { placeholder: "id" }),
    ...controlFlags(),
    json: json("{rule_id}"),
  },
  examples: [
    "stoa supervisor add-rule --input-interface eth0 --input-group 239.1.1.1 --input-port 5000 --output 239.2.2.2:6000:eth1",
    "stoa supervisor add-rule --input-interface eth0 --input-group 239.1.1.1 --input-port 5000 --output 10.0.0.2:6000:eth1 --output 10.0.1.2:6000:eth2 --rule-id fan",
  ],
  async run({ flags }) {
    if (flags.output.length === 0) throw new StoaError("usage", "--output is required, e.g. --output 239.2.2.2:6000:eth1 (repeat it for more outputs)");
    const input = {
      ...(flags.ruleId === undefined ? {} : { rule_id: flags.ruleId }),
      input_interface: flags.inputInterface,
      input_group: flags.inputGroup,
      input_port: /^\d{1,5}$/.test(flags.inputPort) ? Number(flags.inputPort) : Number.NaN,
      outputs: flags.output.map(parseOutput),
    };
    const checked = NewRule.safeParse(input);
    if (!checked.success) throw new StoaError("usage", checked.error.issues.map((i) => `${flagOf(i.path)}: ${i.message}`).join("\n"));
    const { rule_id } = await ask(flags, { type: "add_rule", rule: checked.data });
    if (flags.json) print({ rule_id });
    else process.stdout.write(`${rule_id}\n`);
  },
});

/** A rule field's path as the flag that set it, for messages. */
function flagOf(path: readonly PropertyKey[]): string {
  const [field, index, part] = path;
  if (field === "outputs") return index === undefined ? "--output" : `--output ${Number(index) + 1}${part === undefined ? "" : ` (${String(part)})`}`;
  const flag: Record<string, string> = { rule_id: "--rule-id", input_interface: "--input-interface", input_group: "--input-group", input_port: "--input-port" };
  return flag[String(field)] ?? String(field);
}

const removeRule = defineCommand({
  name: "remove-rule",
  summary: "stop relaying a rule (an unknown id is an error)",
  flags: { ...controlFlags(), json: json("{rule_id}") },
  positionals: [{ name: "ID", description: "the rule's id (stoa supervisor list-rules)", required: true }],
  examples: ["stoa supervisor remove-rule r1"],
  async run({ flags, args }) {
    const { rule_id } = await ask(flags, { type: "remove_rule", rule_id: args[0]! });
    if (flags.json) print({ rule_id });
    else process.stdout.write(`removed ${rule_id}\n`);
  },
});

const listRules = defineCommand({
  name: "list-rules",
  summary: "the rules, one per line (--json: a list run --rules reads)",
  flags: { ...controlFlags(), json: json("the list of rules (a file for run --rules)") },
  examples: ["stoa supervisor list-rules", "stoa supervisor list-rules --json > rules.json"],
  async run({ flags }) {
    const { rules } = await ask(flags, { type: "list_rules" });
    if (flags.json) {
      print(rules);
      return;
    }
    const rows = [["ID", "INPUT", "OUTPUTS"], ...rules.map((r: Rule) => [r.rule_id, `${r.input_group}:${r.input_port}:${r.input_interface}`, r.outputs.map(outputText).join(",")])];
    process.stdout.write(table(rows));
  },
});

const stats = defineCommand({
  name: "stats",
  summary: "counters per data-plane worker and per rule",
  description:
    "Per worker: packets received, matched (a rule's), sent (copies), filtered (not IPv4/UDP, or a\n" +
    "fragment), no_match, buffer_exhausted (a copy dropped: no free buffer), errors. Per rule:\n" +
    "packets and payload bytes, with pps and bps since the previous stats call.",
  flags: { ...controlFlags(), json: json("{workers: [...], rules: [...]}") },
  examples: ["stoa supervisor stats", "stoa supervisor stats --json | jq '.rules[] | {rule_id, pps}'"],
  async run({ flags }) {
    const answer = await ask(flags, { type: "get_stats" });
    if (flags.json) {
      print({ workers: answer.workers, rules: answer.rules });
      return;
    }
    const w = answer.workers.map((s) => [String(s.index), String(s.pid), String(s.received), String(s.matched), String(s.sent), String(s.filtered), String(s.no_match), String(s.buffer_exhausted), String(s.errors)]);
    const r = answer.rules.map((s) => [s.rule_id, String(s.packets), String(s.bytes), s.pps.toFixed(0), s.bps.toFixed(0)]);
    process.stdout.write(table([["WORKER", "PID", "RECEIVED", "MATCHED", "SENT", "FILTERED", "NO_MATCH", "BUFFER_EXHAUSTED", "ERRORS"], ...w]));
    process.stdout.write(`\n${table([["RULE", "PACKETS", "BYTES", "PPS", "BPS"], ...r])}`);
  },
});

const workers = defineCommand({
  name: "workers",
  summary: "the worker processes: role, pid, state, restarts",
  flags: { ...controlFlags(), json: json("the list of workers") },
  examples: ["stoa supervisor workers", "stoa supervisor workers --json | jq '.[] | select(.role == \"data\") | .pid'"],
  async run({ flags }) {
    const answer = await ask(flags, { type: "list_workers" });
    if (flags.json) {
      print(answer.workers);
      return;
    }
    const rows = answer.workers.map((w) => [w.role, String(w.index), String(w.pid), w.state, String(w.restarts), `${(w.since_ms / 1000).toFixed(1)}s`]);
    process.stdout.write(table([["ROLE", "INDEX", "PID", "STATE", "RESTARTS", "SINCE"], ...rows]));
  },
});

const ping = defineCommand({
  name: "ping",
  summary: "is the supervisor answering? (exit 0 yes, 1 no, after --wait)",
  flags: { ...controlFlags(), json: json("{pid, uptime_ms}") },
  examples: ["stoa supervisor ping", "stoa supervisor ping --wait 0 || echo 'not running'"],
  async run({ flags }) {
    const answer = await ask(flags, { type: "ping" });
    if (flags.json) print({ pid: answer.pid, uptime_ms: answer.uptime_ms });
    else process.stdout.write(`pong from supervisor pid ${answer.pid}, up ${(answer.uptime_ms / 1000).toFixed(1)} s\n`);
  },
});

const worker = defineCommand({
  name: "worker",
  summary: "(internal) one worker process, as stoa supervisor run starts it",
  description: "Started by stoa supervisor run with its stream on fd 3; refuses to run otherwise.",
  flags: {
    role: str("control or data", { choices: ["control", "data"], default: "data" }),
    index: str("the worker's index", { placeholder: "n", default: "0", schema: z.coerce.number().int().min(0).max(MAX_DATA_WORKERS) }),
    control: str("the control socket's path (for messages)", { placeholder: "path", default: "" }),
    user: str("the account to drop to", { placeholder: "user" }),
    ...logFlags(),
  },
  examples: ["stoa supervisor run   # starts its workers itself"],
  async run({ flags }) {
    const log = createLogger({ level: flags.logLevel, format: flags.logFormat, name: `supervisor.${flags.role}.${flags.index}` });
    if (flags.role === "data") {
      const { runDataWorker } = await import("../supervisor/data-worker.ts");
      return runDataWorker({ index: flags.index, user: flags.user, log });
    }
    const { runControlWorker } = await import("../supervisor/control-worker.ts");
    return runControlWorker({ index: flags.index, user: flags.user, controlPath: flags.control, log });
  },
});

const subcommands: Command[] = [run, addRule, removeRule, listRules, stats, workers, ping, worker];

export default defineGroup({
  name: "supervisor",
  summary: "a UDP/multicast packet relay: supervisor, control plane, one io_uring data plane per core",
  description:
    "Relays UDP packets (multicast or unicast) arriving on an input interface for a group:port to\n" +
    "one or more outputs, each a group:port on an interface. run is the daemon (needs root or\n" +
    "CAP_NET_RAW for its sockets); the other subcommands talk to it over its control socket.",
  subcommands,
  examples: [
    "sudo stoa supervisor run --workers 2 &",
    "sudo stoa supervisor add-rule --input-interface eth0 --input-group 239.1.1.1 --input-port 5000 --output 239.2.2.2:6000:eth1",
    "sudo stoa supervisor stats",
  ],
});
