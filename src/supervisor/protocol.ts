/**
 * stoa supervisor — the messages: the control API (`stoa supervisor add-rule|remove-rule|…` to
 * the supervisor), what the supervisor and its workers say to each other, the rule and its
 * checks, and the counters. Every message is one CBOR value (core/codec.ts) in one frame of
 * core/frame.ts (4-byte big-endian length), at most MAX_CONTROL_FRAME_BYTES.
 *
 * ## Processes and descriptors (who holds each fd, who closes it)
 *
 *   supervisor (root)                                  `stoa supervisor run` (supervisor.ts)
 *    ├─ control socket  unix:PATH (listening)          bound by the supervisor (a root-owned run dir);
 *    │                                                 a copy goes to the control-plane worker with
 *    │                                                 `listen` (SCM_RIGHTS) after each of its starts;
 *    │                                                 the supervisor keeps its own, so the socket and
 *    │                                                 its backlog outlive a worker's restart, and
 *    │                                                 closes it and unlinks the file at exit
 *    ├─ per worker: one end of a SOCK_SEQPACKET        made by socketpair() in the supervisor; the
 *    │  socketpair ("the worker's stream", stream.ts)  supervisor keeps end A, end B is the
 *    │                                                 child's fd 3 (Bun.spawn stdio) and the
 *    │                                                 supervisor closes its copy of B right
 *    │                                                 after the spawn: then the stream has exactly
 *    │                                                 one holder on each side, and EOF on it means
 *    │                                                 the other side is gone (no filesystem socket,
 *    │                                                 no socket nobody listens on — the seed's bug)
 *    ├─ per data-plane worker: a copy of its eventfd    sent by the worker with its `hello`; the
 *    │                                                 supervisor writes it after each message it
 *    │                                                 sends (the worker's ring has a READ on it) and
 *    │                                                 closes it when the worker's stream ends
 *    └─ per data-plane worker: the AF_PACKET socket    opened by the supervisor (needs CAP_NET_RAW),
 *       of each input interface (PACKET_FANOUT group)  sent with SCM_RIGHTS in `add_rule` (and `fds`
 *       and one UDP socket per output                  before it when a rule has more than
 *                                                      MAX_FDS_PER_MESSAGE), closed by the supervisor
 *                                                      once sent: then the worker's copy is the only
 *                                                      one (closed once, by the worker, when the rule
 *                                                      goes or the worker ends — the seed closed
 *                                                      them twice)
 *   control-plane worker (dropped to --user)            control-worker.ts: accepts on the control
 *                                                      socket, reads and checks every frame, passes
 *                                                      each request on as `request` and writes the
 *                                                      `answer` back: the parser of untrusted bytes
 *                                                      runs unprivileged, and the supervisor only
 *                                                      ever reads its own children's messages
 *   data-plane worker × N (dropped to --user)           data-worker.ts: its ring (io_uring), its
 *                                                      eventfd, its buffer pool: created and closed
 *                                                      by the worker itself
 *
 * Workers drop privileges (libc setgroups, setresgid, setresuid — never the raw syscall, which
 * changes one thread only) as they start, before their `hello`: they use what they are given and
 * cannot open a new AF_PACKET socket. Rules added later get their sockets the same way: the
 * supervisor, still privileged, opens them and passes them on.
 *
 * ## The control API (unix:PATH, one request → one answer, in order)
 *
 *   {type: "add_rule", rule}          → {type: "add_rule", rule_id}     rule_id given or made
 *   {type: "remove_rule", rule_id}    → {type: "remove_rule", rule_id}  unknown id → error not_found
 *   {type: "list_rules"}              → {type: "list_rules", rules}
 *   {type: "get_stats"}               → {type: "get_stats", workers: [WorkerStats], rules: [RuleStats]}
 *   {type: "list_workers"}            → {type: "list_workers", workers: [{index, role, pid, state, restarts, since_ms}]}
 *   {type: "ping"}                    → {type: "ping", pid, uptime_ms}
 *   {type: "shutdown"}                → {type: "shutdown"}              then the supervisor stops
 *   any failure                       → {type: "error", error: {code, message}}  (a StoaError code)
 *
 * ## Supervisor ↔ worker (the worker's stream; one message per SEQPACKET message, stream.ts)
 *
 *   supervisor → data     {type: "add_rule", rule, fds} + fds  one rule's sockets attached, in the
 *                                                      order of `fds`: ["input"?, "output 0", …];
 *                                                      "input" only when no rule of the worker reads
 *                                                      that interface yet (a second AF_PACKET socket
 *                                                      in the fanout group would take packets away)
 *                         {type: "fds", rule_id, fds} + fds    the first MAX_FDS_PER_MESSAGE of a rule
 *                                                      with more; its `add_rule` follows
 *                         {type: "remove_rule", rule_id}
 *                         {type: "sync", seq}               → {type: "sync", seq} once everything sent
 *                                                      before it is applied: add-rule and remove-rule
 *                                                      answer after every data worker's sync, so a
 *                                                      script's next packet meets the new rules
 *                         {type: "stats"}                   → {type: "stats", worker: WorkerStats, rules: [RuleStats]}
 *   supervisor → control  {type: "listen"} + the control socket
 *                         {type: "answer", id, answer}      the answer to `request` `id`
 *   supervisor → both     {type: "health", seq}             → {type: "health", seq}  every HEALTH_EVERY_MS
 *                         {type: "shutdown"}                → the worker stops within SHUTDOWN_GRACE_MS
 *   worker → supervisor   {type: "hello", role, index, pid} first, once (a data worker's with its eventfd)
 *                         {type: "request", id, request}    control: a client's request, checked
 *                         the answers above
 */
import { z } from "zod";
import { createCodec } from "../core/codec.ts";
import { MAX_FDS_PER_MESSAGE } from "../ffi/fdpass.ts";

/** A control or worker message is at most this many bytes (its frame). */
export const MAX_CONTROL_FRAME_BYTES = 1024 * 1024;
/** Rules one supervisor holds. */
export const MAX_RULES = 4096;
/** Outputs of one rule. */
export const MAX_OUTPUTS_PER_RULE = 64;
/** Input interfaces the rules of one supervisor read (each data-plane worker reads all of them). */
export const MAX_INPUT_INTERFACES = 4;
/** A Linux interface name: IFNAMSIZ (16) with the NUL. */
export const MAX_INTERFACE_NAME = 15;
/** How often the supervisor checks each worker, and how long a worker may take to answer. */
export const HEALTH_EVERY_MS = 250;
/** A dead worker is restarted after this, doubling up to RESTART_MAX_MS; reset after a clean run of RESTART_RESET_MS. */
export const RESTART_FIRST_MS = 250;
export const RESTART_MAX_MS = 16_000;
export const RESTART_RESET_MS = 30_000;
/** How long workers get to stop on Shutdown before they are killed. */
export const SHUTDOWN_GRACE_MS = 3_000;

const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const octet = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4 = new RegExp(`^${octet}(\\.${octet}){3}$`);
const RULE_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export const InterfaceName = z.string().regex(IFNAME, `an interface name: 1-${MAX_INTERFACE_NAME} of letters, digits, _ . -`);
export const Ipv4 = z.string().regex(IPV4, "an IPv4 address, e.g. 239.1.1.1");
export const Port = z.number().int().min(1, "a port is 1-65535 (0 is no port)").max(65535, "a port is 1-65535");
export const RuleId = z.string().regex(RULE_ID, "a rule id: letters, digits, _ . - (up to 64), starting with a letter or digit");

export const Output = z.object({ group: Ipv4, port: Port, interface: InterfaceName });

export const Rule = z
  .object({
    rule_id: RuleId,
    input_interface: InterfaceName,
    input_group: Ipv4,
    input_port: Port,
    outputs: z.array(Output).min(1, "a rule needs at least one output").max(MAX_OUTPUTS_PER_RULE),
  })
  .superRefine((rule, ctx) => {
    rule.outputs.forEach((o, i) => {
      if (o.interface === rule.input_interface) {
        ctx.addIssue({ code: "custom", path: ["outputs", i, "interface"], message: `output ${i} is on the input interface ${o.interface}: it would relay its own packets back` });
      }
    });
    const seen = new Set<string>();
    rule.outputs.forEach((o, i) => {
      const key = `${o.group}:${o.port}:${o.interface}`;
      if (seen.has(key)) ctx.addIssue({ code: "custom", path: ["outputs", i], message: `output ${key} is listed twice` });
      seen.add(key);
    });
  });
export type Rule = z.infer<typeof Rule>;
export type Output = z.infer<typeof Output>;

/** A rule as add-rule sends it: the id may be left for the supervisor to make. */
export const NewRule = z.object({
  rule_id: RuleId.optional(),
  input_interface: InterfaceName,
  input_group: Ipv4,
  input_port: Port,
  outputs: z.array(Output).min(1, "a rule needs at least one output").max(MAX_OUTPUTS_PER_RULE),
});
export type NewRule = z.infer<typeof NewRule>;

/**
 * Checks of a rule against this host, one line per problem (empty: fine): interfaces that do not
 * exist, and — across rules — an input (interface, group, port) another rule already takes, or
 * an input interface beyond MAX_INPUT_INTERFACES.
 */
export function ruleProblems(rule: Rule, o: { interfaceExists: (name: string) => boolean; rules: readonly Rule[] }): string[] {
  const problems: string[] = [];
  const names = new Set([rule.input_interface, ...rule.outputs.map((x) => x.interface)]);
  for (const name of names) if (!o.interfaceExists(name)) problems.push(`interface ${name} does not exist on this host`);
  for (const other of o.rules) {
    if (other.rule_id === rule.rule_id) continue;
    if (other.input_interface === rule.input_interface && other.input_group === rule.input_group && other.input_port === rule.input_port) {
      problems.push(`rule ${other.rule_id} already relays ${rule.input_group}:${rule.input_port} on ${rule.input_interface}`);
    }
  }
  const inputs = new Set(o.rules.filter((other) => other.rule_id !== rule.rule_id).map((other) => other.input_interface));
  if (!inputs.has(rule.input_interface) && inputs.size >= MAX_INPUT_INTERFACES) {
    problems.push(`the rules read ${MAX_INPUT_INTERFACES} input interfaces already (${[...inputs].join(", ")}), the most a data-plane worker reads: put this rule on one of them, or remove the rules of one`);
  }
  return problems;
}

/** The counters of one data-plane worker (spec: per worker). */
export const WorkerCounters = z.object({
  received: z.number().int().nonnegative(),
  matched: z.number().int().nonnegative(),
  sent: z.number().int().nonnegative(),
  filtered: z.number().int().nonnegative(),
  no_match: z.number().int().nonnegative(),
  buffer_exhausted: z.number().int().nonnegative(),
  errors: z.number().int().nonnegative(),
});
export const WorkerStats = WorkerCounters.extend({ index: z.number().int().nonnegative(), pid: z.number().int().positive() });
export const RuleStats = z.object({
  rule_id: RuleId,
  packets: z.number().int().nonnegative(),
  bytes: z.number().int().nonnegative(),
  pps: z.number().nonnegative(),
  bps: z.number().nonnegative(),
});
export type WorkerCounters = z.infer<typeof WorkerCounters>;
export type WorkerStats = z.infer<typeof WorkerStats>;
export type RuleStats = z.infer<typeof RuleStats>;

export const WorkerRole = z.enum(["control", "data"]);
export const WorkerInfo = z.object({
  index: z.number().int().nonnegative(),
  role: WorkerRole,
  pid: z.number().int().nonnegative(),
  state: z.enum(["starting", "running", "restarting", "stopping", "stopped"]),
  restarts: z.number().int().nonnegative(),
  since_ms: z.number().nonnegative(),
});
export type WorkerInfo = z.infer<typeof WorkerInfo>;

// ---- the control API ----

export const ControlRequest = z.discriminatedUnion("type", [
  z.object({ type: z.literal("add_rule"), rule: NewRule }),
  z.object({ type: z.literal("remove_rule"), rule_id: RuleId }),
  z.object({ type: z.literal("list_rules") }),
  z.object({ type: z.literal("get_stats") }),
  z.object({ type: z.literal("list_workers") }),
  z.object({ type: z.literal("ping") }),
  z.object({ type: z.literal("shutdown") }),
]);
export type ControlRequest = z.infer<typeof ControlRequest>;

const ErrorAnswer = z.object({ type: z.literal("error"), error: z.object({ code: z.string().max(32), message: z.string().max(4096) }) });

export const ControlAnswer = z.discriminatedUnion("type", [
  z.object({ type: z.literal("add_rule"), rule_id: RuleId }),
  z.object({ type: z.literal("remove_rule"), rule_id: RuleId }),
  z.object({ type: z.literal("list_rules"), rules: z.array(Rule).max(MAX_RULES) }),
  z.object({ type: z.literal("get_stats"), workers: z.array(WorkerStats), rules: z.array(RuleStats).max(MAX_RULES) }),
  z.object({ type: z.literal("list_workers"), workers: z.array(WorkerInfo) }),
  z.object({ type: z.literal("ping"), pid: z.number().int().positive(), uptime_ms: z.number().nonnegative() }),
  z.object({ type: z.literal("shutdown") }),
  ErrorAnswer,
]);
export type ControlAnswer = z.infer<typeof ControlAnswer>;

// ---- supervisor ↔ worker ----

/** A control request the control-plane worker passes on, and its answer, carry this number. */
const RequestId = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);

/** Names of the sockets attached to an `add_rule` (or an `fds` before it), in the order of its fds. */
export const SocketRole = z.union([z.literal("input"), z.string().regex(/^output \d{1,2}$/)]);

export const ToWorker = z.discriminatedUnion("type", [
  z.object({ type: z.literal("add_rule"), rule: Rule, fds: z.array(SocketRole).max(MAX_FDS_PER_MESSAGE) }),
  z.object({ type: z.literal("fds"), rule_id: RuleId, fds: z.array(SocketRole).min(1).max(MAX_FDS_PER_MESSAGE) }),
  z.object({ type: z.literal("remove_rule"), rule_id: RuleId }),
  z.object({ type: z.literal("listen") }),
  z.object({ type: z.literal("answer"), id: RequestId, answer: ControlAnswer }),
  z.object({ type: z.literal("stats") }),
  z.object({ type: z.literal("health"), seq: z.number().int().nonnegative() }),
  z.object({ type: z.literal("sync"), seq: z.number().int().nonnegative() }),
  z.object({ type: z.literal("shutdown") }),
]);
export type ToWorker = z.infer<typeof ToWorker>;

export const FromWorker = z.discriminatedUnion("type", [
  z.object({ type: z.literal("hello"), role: WorkerRole, index: z.number().int().nonnegative(), pid: z.number().int().positive() }),
  z.object({ type: z.literal("request"), id: RequestId, request: ControlRequest }),
  z.object({ type: z.literal("stats"), worker: WorkerStats, rules: z.array(RuleStats).max(MAX_RULES) }),
  z.object({ type: z.literal("health"), seq: z.number().int().nonnegative() }),
  z.object({ type: z.literal("sync"), seq: z.number().int().nonnegative() }),
  ErrorAnswer,
]);
export type FromWorker = z.infer<typeof FromWorker>;

/** The four codecs, each bound to the frame limit. */
export const codecs = {
  request: createCodec(ControlRequest, { maxBytes: MAX_CONTROL_FRAME_BYTES }),
  answer: createCodec(ControlAnswer, { maxBytes: MAX_CONTROL_FRAME_BYTES }),
  toWorker: createCodec(ToWorker, { maxBytes: MAX_CONTROL_FRAME_BYTES }),
  fromWorker: createCodec(FromWorker, { maxBytes: MAX_CONTROL_FRAME_BYTES }),
} as const;
