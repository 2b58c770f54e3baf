#!/usr/bin/env bun
/**
 * supervisor benchmark (issue 14, spec supervisor.md "Performance"): an offered-load ramp of
 * --size (1,024 B) UDP datagrams through each relay, side by side in one run, on a test bed of
 * three network namespaces (lib/relay-net.ts):
 *
 *   gen ══ relay ══ sink      the relays: the generator sends to 239.1.1.1:5000 out of gen's veth
 *    ╚════════════════╝       the direct kernel path: gen → sink over one veth, no relay at all
 *
 * The generator is lib/udp-gen.c, compiled with `cc -O2` into a temp dir: paced sendmmsg bursts
 * (every 200 µs; --steps' "max" = unpaced), a 4-byte sequence number at the start of each
 * payload, --flows (8) source ports taking the bursts in turn so a relay spreading flows by hash
 * has something to spread. The sink is lib/udp-sink.c: recvmmsg, counts unique datagrams and
 * duplicates by sequence number, prints its counts when told to stop. Every relay sends to the
 * sink's unicast address 10.201.2.2:5000. The relays:
 *   direct    the kernel alone: the generator sends to the group out of its veth to the sink's
 *             namespace, where the sink joined it — the baseline for loss;
 *   C relay   lib/udp-relay.c (`cc -O2` like the generator) in the relay namespace: stoa's data
 *             plane in plain batched syscalls, no io_uring — the AF_PACKET socket opened as
 *             stoa's (ETH_P_IP, bound to rg, PACKET_IGNORE_OUTGOING, SO_RCVBUFFORCE 4 MiB, a
 *             fanout group of one), recvmmsg of up to 64 frames, the same Ethernet/IPv4/UDP
 *             checks, sendmmsg of the payloads on a UDP socket bound to rs and connected to the
 *             sink — the floor of this design on this machine, what stoa's CPU is compared to;
 *   stoa ×N   `stoa supervisor run --workers N` (1 and 2) in the relay namespace, one rule
 *             `add-rule --input-interface rg --input-group 239.1.1.1 --input-port 5000 --output
 *             10.201.2.2:5000:rs` (its data plane reads the frames with AF_PACKET, no membership);
 *   socat     `socat -u UDP4-RECV:5000,ip-add-membership=239.1.1.1:<rg> UDP4-SENDTO:10.201.2.2:5000`;
 *   bun       lib/bun-udp-relay.ts, a plain `Bun.udpSocket` relay that joins the group.
 * After an untimed warm-up (WARMUP) of each relay, at each step a fresh sink starts, the
 * generator runs --seconds, the bed drains for DRAIN_MS, then: offered pps = what the generator sent ÷ its time, relayed pps = unique datagrams the
 * sink counted ÷ the same time, loss = 1 − unique ÷ sent, and the relay's CPU per relayed
 * packet = utime+stime of its whole process tree (/proc/<pid>/stat; the supervisor, its control
 * worker and data workers for stoa, each also shown on its own; in clock ticks) over the step, ÷
 * packets relayed. This kernel charges softirq work to the task it interrupts, and a veth send
 * runs the receiving namespace's softirq in the sender's context: a relay's CPU includes the
 * delivery of its datagrams into the sink's socket, and the generator's includes the relay's
 * receive side. So the generator's own CPU per datagram is printed too (getrusage): on the
 * direct path it is what one datagram sent through veth into a socket costs this kernel, the
 * floor under any relay's send half. Where the loss happened is printed beside it: receive-buffer
 * drops of UDP sockets in the relay's and the sink's namespace (Udp RcvbufErrors: socat's and
 * Bun's input socket, the sink's) and the kernel's per-CPU backlog drops (softnet_stat); for stoa
 * its data-plane counters over the step and the per-worker split of `sent`, from `stoa
 * supervisor stats --json` before and after (received < sent: lost in front of its AF_PACKET
 * socket); and how busy the whole machine was (/proc/stat: on 2 CPUs the generator, the relay
 * and the sink compete; sampled for a second before the ramp too, when nothing of the bench runs,
 * to show other work on the machine). A relay that cannot run here (stoa without a supervisor
 * command, socat not installed) gets one line saying why, and the others still run.
 *
 * Layouts (--layout; default both: the whole ramp in each, shared first, each printed under its
 * own heading): shared — the scheduler places the generator, the relay and the sink on any CPU,
 * as described above; pinned — the relay's whole process tree (stoa's supervisor and every
 * worker, the C relay, socat, Bun) on CPU 0 alone (`taskset -c 0` on the `ip netns exec`
 * process before it starts, inherited by its children, checked at each step's end by their
 * Cpus_allowed_list), the generator and the sink on CPU 1, and the receive work of the sink
 * namespace's veths (sr, sg) steered to CPU 1 by RPS (rps_cpus written in that namespace's own
 * sysfs and read back; when it cannot be set the output says why, and that the pinned CPU
 * figures include the sink's work). Pinned, the relay's receive side still runs in the
 * generator's context (as in the shared layout) and the sink's delivery on CPU 1, so a relay's
 * CPU is its own work: reading, checking, sending, down to handing each datagram to CPU 1 (the
 * RPS enqueue and, per burst, an interrupt to CPU 1). Its CPU % is its share of CPU 0 — CPU 0's
 * busy % is printed beside it (softirq share in brackets), 100 − that is the headroom — and
 * "relay capacity" = 1e6 ÷ CPU µs per packet, the pps one core would relay at that cost (printed
 * in both layouts). That the sink's delivery left CPU 0 is checked at every step from
 * softnet_stat (receive processing run on CPU 0 per packet relayed: at most 1 in 100), with the
 * RPS interrupts CPU 1 got, and the C relay's CPU per packet in both layouts printed beside it.
 * On 2 CPUs the pinned layout's CPU 1 carries the generator, the relays' receive side, the sink's
 * delivery and the sink, so the generator offers less there at the higher steps.
 *
 * The direct path's generator does the sink's receive work in its own context too, so its
 * maximum is lower than the relayed paths' and it loses nothing by construction; from the step
 * where the generator falls short of the target (pointed out under the step) the paths are
 * offered different loads.
 *
 * Goals, per step, from this run's figures, for each layout: stoa's loss within 0.5 points of
 * that layout's direct path's and below its socat's (or no more than the direct path's, when
 * nothing is left to beat). Relay CPU ≤ 3.3 µs per relayed packet per worker (= 300k pps per
 * core), judged on the whole tree's CPU ÷ packets relayed (each packet passes one worker) in the
 * pinned layout — the relay's own work — with the shared layout's figure beside it (on the shared
 * layout when only it ran). Beside that absolute goal, stoa's CPU per packet is shown as a
 * multiple of the C relay's at the same step, in each layout (information, not a goal: the C
 * relay's CPU includes what stoa's does — in the shared layout the sink's delivery too — so it
 * is the floor here).
 * The C relay's counters (received, filtered, no_match, matched, sent, errors, and its AF_PACKET
 * socket's drops, over its whole run, warm-up included) are printed after the tables. Needs root. Namespaces are `stoa-b-<pid>-…`; they and every process in them are removed at
 * exit, on errors and Ctrl-C too (and those of earlier runs that died are swept at start).
 *
 *   sudo bun scripts/bench/supervisor.ts [--json] [--seconds 3] [--steps 25000,50000,100000,200000,max]
 *        [--size 1024] [--flows 8] [--only direct,c,stoa,socat,bun] [--layout shared|pinned|both] [--stoa dist/stoa]
 */
import type { Subprocess } from "bun";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildC } from "./lib/cbuild.ts";
import { type Topology, backlogDrops, clockTicksPerSecond, createTopology, machineCpu, softnet, steerReceive, sweepStale, treeAffinity, treeCpuByProcess, udpRcvbufErrors } from "./lib/relay-net.ts";

const { values } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    seconds: { type: "string", default: "3" },
    steps: { type: "string", default: "25000,50000,100000,200000,max" },
    size: { type: "string", default: "1024" },
    flows: { type: "string", default: "8" },
    only: { type: "string", default: "direct,c,stoa,socat,bun" },
    layout: { type: "string", default: "both" },
    stoa: { type: "string" },
  },
});
const root = join(import.meta.dir, "..", "..");
const stoaBin = values.stoa ?? join(root, "dist", "stoa");
const ip = Bun.which("ip") ?? "/usr/sbin/ip";
const taskset = Bun.which("taskset") ?? "/usr/bin/taskset";
const stepSeconds = Number(values.seconds);
const size = Number(values.size);
const flows = Number(values.flows);
const steps = String(values.steps)
  .split(",")
  .map((s) => (s.trim() === "max" ? 0 : Number(s)));
const only = new Set(String(values.only).split(",").map((s) => s.trim()));
const LAYOUTS = ["shared", "pinned"] as const;
type Layout = (typeof LAYOUTS)[number];
const layouts: Layout[] = LAYOUTS.filter((l) => values.layout === l || values.layout === "both");

const GROUP = "239.1.1.1";
const PORT = 5000;
/** UDP over IPv4 carries at most this much payload in one datagram. */
const MAX_UDP_PAYLOAD = 65_507;
/** After the generator stops: what is still in flight reaches the sink before it counts. */
const DRAIN_MS = 300;
/** A relay or sink is up (ready file, "ready" line, bound socket) within this, or the row fails. */
const READY_TIMEOUT_MS = 10_000;
/** The contract: SIGTERM stops `stoa supervisor run` with exit 0 within this. */
const STOP_TIMEOUT_MS = 5_000;
/** A control command (add-rule, stats) answers within this. */
const CONTROL_TIMEOUT_MS = 10_000;
/** Before its ramp, each relay relays this untimed (Bun's JIT, first allocations, ARP, IGMP). */
const WARMUP = { pps: 25_000, seconds: 1 };
/** The generator's own limit on top of --seconds before the bench gives up on it. */
const GEN_GRACE_MS = 5_000;
const GOAL = { lossPoints: 0.5, cpuUsPerPacket: 3.3 };
/** How long the machine's load is sampled before the ramp, and above what it is called noisy. */
const IDLE_SAMPLE_MS = 1_000;
const BUSY_WARN_PCT = 10;
/** An offered rate below this share of the step's target is pointed out under the step. */
const OFFERED_SHORT = 0.95;
const RELAYS = ["direct", "c", "stoa1", "stoa2", "socat", "bun"] as const;
type RelayName = (typeof RELAYS)[number];
const LABEL: Record<RelayName, string> = { direct: "direct (kernel)", c: "C relay (same syscalls)", stoa1: "stoa ×1 worker", stoa2: "stoa ×2 workers", socat: "socat", bun: "Bun.udpSocket" };
/** The --only names: every relay's, but one "stoa" for both worker counts. */
const ONLY_NAMES = ["direct", "c", "stoa", "socat", "bun"];
/** The C relay's counters, printed to its stderr when it stops (lib/udp-relay.c). */
const C_COUNTERS = ["received", "filtered", "no_match", "matched", "sent", "errors", "socket_drops"] as const;
type CCounters = Record<(typeof C_COUNTERS)[number], number>;
/**
 * The pinned layout: the relay's whole tree on relayCpu alone, the generator and the sink on
 * peerCpu, and the sink namespace's veths' receive work steered to peerCpu (RPS).
 */
const PINNED = { relayCpu: 0, peerCpu: 1 } as const;
/** The sink's interfaces whose receive work the pinned layout steers: from the relay, from the generator (direct). */
const SINK_IFS = ["sr", "sg"] as const;
/** Pinned: receive processing of at most this many packets per 100 relayed on the relay's CPU, and the sink's delivery counts as elsewhere. */
const RECEIVED_ON_RELAY_CPU_MAX_PCT = 1;
/** Where a layout runs things: the CPU lists `taskset -c` gets; undefined = wherever the scheduler puts them. */
interface Placement {
  layout: Layout;
  relayCpus?: string;
  peerCpus?: string;
}
const PLACEMENT: Record<Layout, Placement> = {
  shared: { layout: "shared" },
  pinned: { layout: "pinned", relayCpus: String(PINNED.relayCpu), peerCpus: String(PINNED.peerCpu) },
};

if (layouts.length === 0) {
  console.error(`supervisor bench: --layout takes shared, pinned or both (got "${values.layout}")`);
  process.exit(2);
}
if (layouts.includes("pinned") && (navigator.hardwareConcurrency < 2 || !existsSync(taskset))) {
  console.error(`supervisor bench: the pinned layout needs 2 CPUs (${navigator.hardwareConcurrency} here) and taskset (apt-get install util-linux): run --layout shared`);
  process.exit(2);
}
if (!(stepSeconds > 0) || !Number.isInteger(size) || size < 4 || size > MAX_UDP_PAYLOAD || !(flows >= 1 && flows <= 64) || steps.some((r) => !(r >= 0))) {
  console.error(`supervisor bench: --seconds > 0, --size 4..${MAX_UDP_PAYLOAD}, --flows 1..64, --steps a list of pps or "max"`);
  process.exit(2);
}
for (const name of only) {
  if (!ONLY_NAMES.includes(name)) {
    console.error(`supervisor bench: --only takes ${ONLY_NAMES.join(", ")} (got "${name}")`);
    process.exit(2);
  }
}
if (process.getuid?.() !== 0) {
  console.error("supervisor bench: needs root (it creates network namespaces and veths): run it with sudo");
  process.exit(2);
}

const log = (line: string) => {
  if (!values.json) process.stderr.write(`${line}\n`);
};

/** stdout of a child, collected as it arrives, so a "ready" line can be waited for. */
function collect(proc: Subprocess<"ignore", "pipe", "pipe">): { text: () => string; err: () => string; done: Promise<void> } {
  let out = "";
  let err = "";
  const pump = async (stream: ReadableStream<Uint8Array>, add: (s: string) => void) => {
    const dec = new TextDecoder();
    for await (const chunk of stream) add(dec.decode(chunk, { stream: true }));
  };
  const done = Promise.all([pump(proc.stdout, (s) => (out += s)), pump(proc.stderr, (s) => (err += s))]).then(() => undefined);
  return { text: () => out, err: () => err, done };
}

async function waitUntil(ok: () => boolean, what: string, gone?: () => string | undefined): Promise<void> {
  const until = Date.now() + READY_TIMEOUT_MS;
  while (!ok()) {
    const why = gone?.();
    if (why !== undefined) throw new Error(`${what}: ${why}`);
    if (Date.now() > until) throw new Error(`${what}: not ready after ${READY_TIMEOUT_MS} ms`);
    await Bun.sleep(10);
  }
}

/** Starts a command in a namespace; on the CPUs of `cpus` only (taskset -c, inherited by its children) when given. */
function spawnIn(ns: string, argv: string[], cpus?: string) {
  const pin = cpus === undefined ? [] : [taskset, "-c", cpus];
  return Bun.spawn([...pin, ip, "netns", "exec", ns, ...argv], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
}

/** Runs a command in a namespace to its end, bounded; throws with its stderr when it fails. */
async function runIn(ns: string, argv: string[], timeoutMs: number, cpus?: string): Promise<string> {
  const proc = spawnIn(ns, argv, cpus);
  const out = collect(proc);
  const timer = setTimeout(() => proc.kill("SIGKILL"), timeoutMs);
  const code = await proc.exited;
  clearTimeout(timer);
  await out.done;
  if (code !== 0) throw new Error(`${argv.slice(0, 3).join(" ")} exited ${code}: ${(out.err() || out.text()).trim().split("\n")[0] ?? ""}`);
  return out.text();
}

/** Whether a process in the relay namespace has a UDP socket bound to `port` (/proc/<pid>/net/udp). */
function udpBound(pid: number, port: number): boolean {
  try {
    const local = `:${port.toString(16).toUpperCase().padStart(4, "0")}`; // "0100007F:1388"
    return readFileSync(`/proc/${pid}/net/udp`, "utf8")
      .split("\n")
      .some((line) => line.trim().split(/\s+/)[1]?.endsWith(local));
  } catch {
    return false;
  }
}

const COUNTERS = ["received", "matched", "sent", "filtered", "no_match", "buffer_exhausted", "errors"] as const;
type Counters = Record<(typeof COUNTERS)[number], number>;
/** One data-plane worker in `stoa supervisor stats --json`. */
type WorkerStats = Counters & { index: number; pid: number };

/** A relay while it runs: whose CPU counts, where the generator sends, how it stops. */
interface Running {
  /** Root of the relay's process tree, null for the direct path. */
  pid: number | null;
  genIfindex: number;
  sinkArgs: string[];
  workers?: () => Promise<WorkerStats[]>;
  /** Stops it; returns how (for stoa: the exit code and the time SIGTERM took). */
  stop: () => Promise<StopReport | undefined>;
  /** After stop(): the C relay's counters over its run, undefined when it printed none. */
  counters?: () => CCounters | undefined;
}

/** The compiled C programs (compile()). */
interface Bins {
  gen: string;
  sink: string;
  relay: string;
}

interface StopReport {
  exitCode: number | null;
  ms: number;
  withinTimeout: boolean;
}

interface Row {
  layout: Layout;
  relay: RelayName;
  label: string;
  step: string;
  target_pps: number | null;
  offered_pps: number;
  relayed_pps: number;
  loss_pct: number;
  sent: number;
  unique: number;
  duplicates: number;
  wrong_size: number;
  cpu_us_per_packet: number | null;
  /** The same by process of the relay's tree ("main", "control 0", "data 0", …). */
  cpu_us_per_packet_by_process: Record<string, number> | null;
  cpu_pct: number | null;
  /** 1e6 ÷ cpu_us_per_packet: the packets per second one core could relay at this cost. */
  relay_capacity_pps: number | null;
  /**
   * Pinned layout: how busy the relay's CPU was over the step — the relay, softirq work run
   * there, anything else on the machine that ran there — and of that in softirq (tick-sampled);
   * null in the shared layout.
   */
  relay_cpu_busy_pct: number | null;
  relay_cpu_softirq_pct: number | null;
  /** Pinned layout: packets whose receive processing ran on the relay's CPU over the step (softnet_stat); null in the shared layout. */
  relay_cpu_received: number | null;
  /** Pinned layout: the RPS interrupts the generator's and sink's CPU got over the step (from the relay's CPU, for the sink's delivery); null in the shared layout. */
  peer_cpu_rps_ipis: number | null;
  /** Pinned layout: the distinct CPU lists the relay's processes may run on at the step's end (Cpus_allowed_list). */
  relay_affinity: string[] | null;
  relay_rcvbuf_drops: number | null;
  sink_rcvbuf_drops: number;
  backlog_drops: number;
  /** How busy the whole machine was over the step (all CPUs; 100 = every CPU busy all the time). */
  machine_busy_pct: number;
  /** The generator's own CPU (user + system, softirq work in its context included) per datagram sent. */
  gen_cpu_us_per_packet: number;
  worker_sent: number[] | null;
  /** stoa's data-plane counters over the step, summed over the workers. */
  stoa_counters: Counters | null;
}

/** Stops a process by signal within a bound, then by SIGKILL; the exit code and the time it took. */
async function stopProcess(proc: Subprocess, signal: "SIGTERM", timeoutMs: number): Promise<StopReport> {
  const t0 = performance.now();
  proc.kill(signal);
  const timeout = Bun.sleep(timeoutMs).then(() => "timeout" as const);
  const how = await Promise.race([proc.exited, timeout]);
  if (how === "timeout") {
    proc.kill("SIGKILL");
    await proc.exited;
  }
  return { exitCode: how === "timeout" ? null : proc.exitCode, ms: Math.round(performance.now() - t0), withinTimeout: how !== "timeout" };
}

/** Why stoa's rows cannot run with this binary, or undefined when `stoa supervisor` is there. */
function stoaMissing(): string | undefined {
  if (!existsSync(stoaBin)) return `${stoaBin} not found: build it (flock /tmp/stoa-build.lock bun run build) or give --stoa PATH`;
  const r = Bun.spawnSync([stoaBin, "supervisor", "--help"], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) return `\`${stoaBin} supervisor --help\` exited ${r.exitCode}: ${(r.stderr.toString() || r.stdout.toString()).trim().split("\n")[0]}`;
  return undefined;
}

const tempDirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "stoa-b-"));
  chmodSync(dir, 0o755); // workers that dropped to --user reach what the supervisor put there
  tempDirs.push(dir);
  return dir;
}

async function startStoa(net: Topology, workers: number, cpus: string | undefined): Promise<Running> {
  const missing = stoaMissing();
  if (missing !== undefined) throw new Error(missing);
  const dir = tempDir();
  const control = `unix:${join(dir, "sup.sock")}`;
  const readyFile = join(dir, "ready.json");
  const proc = spawnIn(net.relay, [stoaBin, "supervisor", "run", "--workers", String(workers), "--control", control, "--user", "nobody", "--ready-file", readyFile], cpus);
  const out = collect(proc);
  let pid = 0;
  try {
    await waitUntil(
      () => {
        if (!existsSync(readyFile)) return false;
        try {
          pid = Number((JSON.parse(readFileSync(readyFile, "utf8")) as { pid?: unknown }).pid);
        } catch {
          return false; // being written
        }
        return pid > 0;
      },
      "stoa supervisor run",
      () => (proc.exitCode === null && proc.signalCode === null ? undefined : `exited ${proc.exitCode ?? proc.signalCode}: ${out.err().trim().split("\n").slice(-1)[0] ?? ""}`),
    );
    const ruleArgs = ["--control", control, "--input-interface", "rg", "--input-group", GROUP, "--input-port", String(PORT), "--output", `${net.addr.sinkFromRelay}:${PORT}:rs`];
    await runIn(net.relay, [stoaBin, "supervisor", "add-rule", ...ruleArgs], CONTROL_TIMEOUT_MS);
  } catch (err) {
    await stopProcess(proc, "SIGTERM", STOP_TIMEOUT_MS);
    throw err;
  }
  return {
    pid,
    genIfindex: net.ifindex.gr,
    sinkArgs: [],
    workers: async () => {
      const stats = JSON.parse(await runIn(net.relay, [stoaBin, "supervisor", "stats", "--control", control, "--json"], CONTROL_TIMEOUT_MS)) as { workers: WorkerStats[] };
      return stats.workers;
    },
    stop: async () => {
      const report = await stopProcess(proc, "SIGTERM", STOP_TIMEOUT_MS);
      await out.done;
      return report;
    },
  };
}

async function startSocat(net: Topology, cpus: string | undefined): Promise<Running> {
  const socat = Bun.which("socat");
  if (socat === null) throw new Error("socat not installed (apt-get install socat)");
  const proc = spawnIn(net.relay, [socat, "-u", `UDP4-RECV:${PORT},reuseaddr,ip-add-membership=${GROUP}:${net.addr.relayIn}`, `UDP4-SENDTO:${net.addr.sinkFromRelay}:${PORT}`], cpus);
  const out = collect(proc);
  await waitUntil(() => udpBound(proc.pid, PORT), "socat", () => (proc.exitCode === null ? undefined : `exited ${proc.exitCode}: ${out.err().trim()}`));
  return { pid: proc.pid, genIfindex: net.ifindex.gr, sinkArgs: [], stop: async () => void (await stopProcess(proc, "SIGTERM", STOP_TIMEOUT_MS)) };
}

async function startBun(net: Topology, cpus: string | undefined): Promise<Running> {
  const script = join(import.meta.dir, "lib", "bun-udp-relay.ts");
  const proc = spawnIn(net.relay, [process.execPath, script, GROUP, String(PORT), net.addr.relayIn, net.addr.sinkFromRelay, String(PORT)], cpus);
  const out = collect(proc);
  await waitUntil(() => out.text().includes("ready\n"), "bun relay", () => (proc.exitCode === null ? undefined : `exited ${proc.exitCode}: ${out.err().trim()}`));
  return { pid: proc.pid, genIfindex: net.ifindex.gr, sinkArgs: [], stop: async () => void (await stopProcess(proc, "SIGTERM", STOP_TIMEOUT_MS)) };
}

async function startC(net: Topology, bin: string, cpus: string | undefined): Promise<Running> {
  const proc = spawnIn(net.relay, [bin, "rg", GROUP, String(PORT), "rs", net.addr.sinkFromRelay, String(PORT)], cpus);
  const out = collect(proc);
  await waitUntil(() => out.text().includes("ready\n"), "udp-relay", () => (proc.exitCode === null ? undefined : `exited ${proc.exitCode}: ${out.err().trim()}`));
  let counters: CCounters | undefined;
  return {
    pid: proc.pid,
    genIfindex: net.ifindex.gr,
    sinkArgs: [],
    stop: async () => {
      const report = await stopProcess(proc, "SIGTERM", STOP_TIMEOUT_MS);
      await out.done;
      try {
        counters = JSON.parse(out.err().trim().split("\n").slice(-1)[0] ?? "") as CCounters;
      } catch {
        counters = undefined; // killed, or died before its last line: the report says how it stopped
      }
      return report;
    },
    counters: () => counters,
  };
}

function startDirect(net: Topology): Running {
  return { pid: null, genIfindex: net.ifindex.gs, sinkArgs: ["--group", GROUP, "--ifaddr", net.addr.sinkDirect], stop: async () => undefined };
}

const stepName = (rate: number) => (rate === 0 ? "max" : `${rate / 1000}k`);

async function measureStep(net: Topology, bins: Bins, relay: RelayName, run: Running, rate: number, ticksPerS: number, place: Placement, seconds = stepSeconds): Promise<Row> {
  const sink = spawnIn(net.sink, [bins.sink, "--port", String(PORT), "--size", String(size), ...run.sinkArgs], place.peerCpus);
  const pinned = place.layout === "pinned";
  const sinkOut = collect(sink);
  try {
    await waitUntil(() => sinkOut.text().includes("ready\n"), "udp-sink", () => (sink.exitCode === null ? undefined : `exited ${sink.exitCode}: ${sinkOut.err().trim()}`));
    const w0 = await run.workers?.();
    const cpu0 = run.pid === null ? new Map<string, number>() : treeCpuByProcess(run.pid);
    const relayDrops0 = run.pid === null ? 0 : udpRcvbufErrors(run.pid);
    const sinkDrops0 = udpRcvbufErrors(sink.pid);
    const backlog0 = backlogDrops();
    const machine0 = machineCpu();
    const relayCpu0 = pinned ? machineCpu(PINNED.relayCpu) : null;
    const softnet0 = pinned ? { relay: softnet(PINNED.relayCpu), peer: softnet(PINNED.peerCpu) } : null;
    const genArgs = ["--dst", GROUP, "--port", String(PORT), "--ifindex", String(run.genIfindex), "--rate", String(rate), "--seconds", String(seconds), "--size", String(size), "--flows", String(flows)];
    const gen = JSON.parse(await runIn(net.gen, [bins.gen, ...genArgs], seconds * 1000 + GEN_GRACE_MS, place.peerCpus)) as { sent: number; elapsed_s: number; cpu_s: number };
    await Bun.sleep(DRAIN_MS);
    const cpu1 = run.pid === null ? new Map<string, number>() : treeCpuByProcess(run.pid);
    const cpuByProcess = [...cpu1].map(([label, ticks]) => [label, ticks - (cpu0.get(label) ?? 0)] as const);
    const cpuTicks = cpuByProcess.reduce((sum, [, ticks]) => sum + ticks, 0);
    const relayDrops = run.pid === null ? null : udpRcvbufErrors(run.pid) - relayDrops0;
    const sinkDrops = udpRcvbufErrors(sink.pid) - sinkDrops0;
    const backlog = backlogDrops() - backlog0;
    const machine1 = machineCpu();
    const relayCpu1 = pinned ? machineCpu(PINNED.relayCpu) : null;
    const softnet1 = pinned ? { relay: softnet(PINNED.relayCpu), peer: softnet(PINNED.peerCpu) } : null;
    const affinity = pinned && run.pid !== null ? treeAffinity(run.pid) : null;
    sink.kill("SIGUSR1");
    await sink.exited;
    await sinkOut.done;
    const counts = JSON.parse(sinkOut.text().trim().split("\n").slice(-1)[0] ?? "{}") as { unique: number; duplicates: number; wrong_size: number };
    const w1 = await run.workers?.();
    const cpuS = cpuTicks / ticksPerS;
    const cpuUs = run.pid === null || counts.unique === 0 ? null : (cpuS * 1e6) / counts.unique;
    const relayCpuPct = (of: "busy" | "softirq") => (relayCpu0 === null || relayCpu1 === null ? null : ((relayCpu1[of] - relayCpu0[of]) / Math.max(1, relayCpu1.total - relayCpu0.total)) * 100);
    return {
      layout: place.layout,
      relay,
      label: LABEL[relay],
      step: stepName(rate),
      target_pps: rate === 0 ? null : rate,
      offered_pps: Math.round(gen.sent / gen.elapsed_s),
      relayed_pps: Math.round(counts.unique / gen.elapsed_s),
      loss_pct: gen.sent === 0 ? 0 : ((gen.sent - counts.unique) / gen.sent) * 100,
      sent: gen.sent,
      unique: counts.unique,
      duplicates: counts.duplicates,
      wrong_size: counts.wrong_size,
      cpu_us_per_packet: cpuUs,
      cpu_us_per_packet_by_process: run.pid === null || counts.unique === 0 ? null : Object.fromEntries(cpuByProcess.map(([label, ticks]) => [label, (ticks / ticksPerS / counts.unique) * 1e6])),
      cpu_pct: run.pid === null ? null : (cpuS / (gen.elapsed_s + DRAIN_MS / 1000)) * 100,
      relay_capacity_pps: cpuUs === null || cpuUs === 0 ? null : 1e6 / cpuUs,
      relay_cpu_busy_pct: relayCpuPct("busy"),
      relay_cpu_softirq_pct: relayCpuPct("softirq"),
      relay_cpu_received: softnet0 === null || softnet1 === null ? null : softnet1.relay.received - softnet0.relay.received,
      peer_cpu_rps_ipis: softnet0 === null || softnet1 === null ? null : softnet1.peer.rpsIpis - softnet0.peer.rpsIpis,
      relay_affinity: affinity,
      relay_rcvbuf_drops: relayDrops,
      sink_rcvbuf_drops: sinkDrops,
      backlog_drops: backlog,
      machine_busy_pct: ((machine1.busy - machine0.busy) / Math.max(1, machine1.total - machine0.total)) * 100,
      gen_cpu_us_per_packet: gen.sent === 0 ? 0 : (gen.cpu_s * 1e6) / gen.sent,
      worker_sent: w0 && w1 ? w1.map((w) => w.sent - (w0.find((x) => x.index === w.index)?.sent ?? 0)) : null,
      stoa_counters: w0 && w1 ? counterDelta(w0, w1) : null,
    };
  } finally {
    if (sink.exitCode === null) sink.kill("SIGKILL");
  }
}

/** Each counter's growth between two `stats`, summed over the workers (a restarted worker counts from 0). */
function counterDelta(before: WorkerStats[], after: WorkerStats[]): Counters {
  const sum = Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Counters;
  for (const w of after) {
    const was = before.find((x) => x.index === w.index && x.pid === w.pid);
    for (const c of COUNTERS) sum[c] += w[c] - (was?.[c] ?? 0);
  }
  return sum;
}

function compile(): Bins {
  const bin = (name: string) => {
    const built = buildC(`udp-${name}`);
    if ("reason" in built) throw new Error(`${built.reason} (install gcc: apt-get install gcc)`);
    return built.bin;
  };
  return { gen: bin("gen"), sink: bin("sink"), relay: bin("relay") };
}

interface Goal {
  layout: Layout;
  step: string;
  relay: RelayName;
  what: string;
  value: string;
  goal: string;
  /** null: not judged (a row to judge against is missing), or a line of information only. */
  met: boolean | null;
  /** A line of information beside the goals, not a goal (stoa's CPU ÷ the C relay's). */
  info?: true;
  /** stoa's CPU per packet ÷ the C relay's at the same step. */
  ratio?: number;
}

/** One layout's ramp: its rows, and how its relays started and stopped. */
interface LayoutRun {
  layout: Layout;
  rows: Row[];
  unavailable: Partial<Record<RelayName, string>>;
  stops: Partial<Record<RelayName, StopReport>>;
  cRelay: { stop: StopReport; counters: CCounters | null } | null;
  /** Pinned: the sink's interfaces' RPS as read back, or why it could not be set; null in the shared layout. */
  rps: { ok: boolean; lines: string[] } | null;
}

/** Whether a layout's relay CPU is the relay's own work: pinned, with the sink's receive work steered off the relay's CPU. */
const ownWork = (run: LayoutRun) => run.layout === "pinned" && run.rps?.ok === true;

function judge(runs: LayoutRun[]): Goal[] {
  const goals: Goal[] = [];
  const pts = (x: number) => `${x.toFixed(2)} %`;
  const us = (x: number) => `${x.toFixed(2)} µs`;
  // The absolute CPU goal is about the relay's own work: judged on the pinned layout when it ran.
  const cpuRun = runs.find((r) => r.layout === "pinned") ?? runs[0];
  const sharedRows = runs.find((r) => r.layout === "shared")?.rows ?? [];
  for (const run of runs) {
    const rows = run.rows;
    for (const row of rows.filter((r) => r.relay === "stoa1" || r.relay === "stoa2")) {
      const direct = rows.find((r) => r.relay === "direct" && r.step === row.step);
      const socat = rows.find((r) => r.relay === "socat" && r.step === row.step);
      const base = { layout: run.layout, step: row.step, relay: row.relay };
      goals.push(
        direct === undefined
          ? { ...base, what: "loss vs direct", value: pts(row.loss_pct), goal: "no direct row", met: null }
          : { ...base, what: "loss vs direct", value: `${pts(row.loss_pct)} (direct ${pts(direct.loss_pct)})`, goal: `≤ direct + ${GOAL.lossPoints} pt`, met: row.loss_pct - direct.loss_pct <= GOAL.lossPoints },
      );
      goals.push(
        socat === undefined
          ? { ...base, what: "loss vs socat", value: pts(row.loss_pct), goal: "no socat row", met: null }
          : {
              ...base,
              what: "loss vs socat",
              value: `${pts(row.loss_pct)} (socat ${pts(socat.loss_pct)})`,
              goal: "< socat (or ≤ direct)",
              met: row.loss_pct < socat.loss_pct || (direct !== undefined && row.loss_pct <= direct.loss_pct),
            },
      );
      const cpu = row.cpu_us_per_packet;
      if (run === cpuRun) {
        const shared = run.layout === "pinned" ? sharedRows.find((r) => r.relay === row.relay && r.step === row.step)?.cpu_us_per_packet : undefined;
        const beside = shared === undefined || shared === null ? "" : ` (shared ${us(shared)})`;
        const caveat = ownWork(run) ? "" : " incl. sink";
        goals.push({ ...base, what: "relay CPU per packet", value: cpu === null ? "—" : `${us(cpu)}${caveat}${beside}`, goal: `≤ ${GOAL.cpuUsPerPacket} µs`, met: cpu === null ? null : cpu <= GOAL.cpuUsPerPacket });
      }
      const floor = rows.find((r) => r.relay === "c" && r.step === row.step)?.cpu_us_per_packet ?? null;
      goals.push(
        cpu === null || floor === null || floor === 0
          ? { ...base, what: "CPU vs the C relay", value: cpu === null ? "—" : us(cpu), goal: "no C relay row", met: null, info: true }
          : {
              ...base,
              what: "CPU vs the C relay",
              value: `${us(cpu)} = ${(cpu / floor).toFixed(2)}× the C relay's ${us(floor)}`,
              goal: "(the floor here)",
              met: null,
              info: true,
              ratio: cpu / floor,
            },
      );
    }
  }
  return goals;
}

/**
 * Whether the pinned layout's relay CPU excludes the sink's delivery: RPS read back, and the
 * receive processing that ran on the relay's CPU (softnet_stat) per packet relayed, over every
 * relayed row of the pinned layout; beside it the C relay's CPU per packet in both layouts.
 */
interface DeliveryCheck {
  /** The most receive processing on the relay's CPU at any pinned step, per 100 packets relayed. */
  max_received_on_relay_cpu_pct: number | null;
  c_relay: { step: string; shared_us: number | null; pinned_us: number; pinned_received_on_relay_cpu_pct: number | null; pinned_rps_ipis_pct: number | null }[];
  /** true: RPS took and the relay's CPU did (almost) no receive processing; false: not; null: not checked. */
  excluded: boolean | null;
  verdict: string;
}

function deliveryCheck(runs: LayoutRun[]): DeliveryCheck {
  const shared = runs.find((r) => r.layout === "shared");
  const pinned = runs.find((r) => r.layout === "pinned");
  const none = { max_received_on_relay_cpu_pct: null, c_relay: [] };
  if (pinned === undefined) return { ...none, excluded: null, verdict: "not checked: the pinned layout did not run" };
  if (pinned.rps?.ok !== true) return { ...none, excluded: false, verdict: `no: RPS could not be set (${pinned.rps?.lines.join("; ")}), the pinned layout's relay CPU includes the sink's receive work` };
  const per100 = (r: Row, count: number | null) => (count === null || r.unique === 0 ? null : (count / r.unique) * 100);
  const pct = (r: Row) => per100(r, r.relay_cpu_received);
  const c_relay = pinned.rows
    .filter((r) => r.relay === "c" && r.cpu_us_per_packet !== null)
    .map((p) => ({ step: p.step, shared_us: shared?.rows.find((r) => r.relay === "c" && r.step === p.step)?.cpu_us_per_packet ?? null, pinned_us: p.cpu_us_per_packet!, pinned_received_on_relay_cpu_pct: pct(p), pinned_rps_ipis_pct: per100(p, p.peer_cpu_rps_ipis) }));
  const shares = pinned.rows.filter((r) => r.relay !== "direct").map(pct).filter((x) => x !== null);
  if (shares.length === 0) return { ...none, c_relay, excluded: null, verdict: "RPS took; not checked: no relayed row in the pinned layout" };
  const most = Math.max(...shares);
  const excluded = most <= RECEIVED_ON_RELAY_CPU_MAX_PCT;
  const rps = pinned.rps.lines.map((l) => l.split(" (")[0]).join(", ");
  return {
    max_received_on_relay_cpu_pct: most,
    c_relay,
    excluded,
    verdict: excluded
      ? `yes: RPS took (${rps}), and CPU ${PINNED.relayCpu} ran the receive processing of at most ${most.toFixed(2)} packets per 100 relayed at any step (softnet_stat): the sink's delivery ran on CPU ${PINNED.peerCpu}`
      : `NO: RPS took (${rps}), but CPU ${PINNED.relayCpu} ran the receive processing of up to ${most.toFixed(1)} packets per 100 relayed (softnet_stat; above ${RECEIVED_ON_RELAY_CPU_MAX_PCT}): the pinned layout's relay CPU may include the sink's delivery`,
  };
}

/** One layout's ramp through every selected relay, in the namespaces of `net`. */
async function runLayout(net: Topology, bins: Bins, place: Placement, ticksPerS: number): Promise<LayoutRun> {
  const result: LayoutRun = { layout: place.layout, rows: [], unavailable: {}, stops: {}, cRelay: null, rps: null };
  if (place.layout === "pinned") {
    const lines: string[] = [];
    let ok = true;
    for (const dev of SINK_IFS) {
      const r = steerReceive(net.sink, dev, 1 << PINNED.peerCpu);
      ok &&= r.ok;
      lines.push(r.ok ? `${dev}: rps_cpus reads back ${r.readBack.toString(16)} (CPU ${PINNED.peerCpu})` : `${dev}: ${r.why}`);
    }
    result.rps = { ok, lines };
    log(`pinned layout: the sink's receive work ${ok ? "steered" : "NOT steered"} to CPU ${PINNED.peerCpu}: ${lines.join("; ")}`);
  }
  const selected = RELAYS.filter((r) => only.has(r.startsWith("stoa") ? "stoa" : r));
  for (const relay of selected) {
    let run: Running;
    try {
      run =
        relay === "direct"
          ? startDirect(net)
          : relay === "c"
            ? await startC(net, bins.relay, place.relayCpus)
            : relay === "socat"
              ? await startSocat(net, place.relayCpus)
              : relay === "bun"
                ? await startBun(net, place.relayCpus)
                : await startStoa(net, relay === "stoa1" ? 1 : 2, place.relayCpus);
    } catch (err) {
      result.unavailable[relay] = err instanceof Error ? err.message : String(err);
      log(`${place.layout} ${LABEL[relay]}: not available (${result.unavailable[relay]})`);
      continue;
    }
    try {
      await measureStep(net, bins, relay, run, WARMUP.pps, ticksPerS, place, WARMUP.seconds);
      for (const rate of steps) {
        const row = await measureStep(net, bins, relay, run, rate, ticksPerS, place);
        result.rows.push(row);
        log(`${place.layout} ${row.label.padEnd(23)} ${row.step.padStart(5)}: offered ${row.offered_pps} pps, relayed ${row.relayed_pps} pps, loss ${row.loss_pct.toFixed(2)} %${row.cpu_us_per_packet === null ? "" : `, ${row.cpu_us_per_packet.toFixed(2)} µs CPU/pkt`}`);
      }
    } catch (err) {
      result.unavailable[relay] = `failed during the ramp: ${err instanceof Error ? err.message : String(err)}`;
      log(`${place.layout} ${LABEL[relay]}: ${result.unavailable[relay]}`);
    } finally {
      const stopped = await run.stop();
      if (stopped !== undefined && relay.startsWith("stoa")) result.stops[relay] = stopped;
      if (stopped !== undefined && relay === "c") result.cRelay = { stop: stopped, counters: run.counters?.() ?? null };
    }
  }
  return result;
}

async function main() {
  let net: Topology | undefined;
  const cleanup = () => {
    net?.destroy();
    for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  };
  process.on("exit", cleanup);
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(signal, () => {
      process.stderr.write(`\n${signal}: removing the namespaces…\n`);
      cleanup();
      process.exit(130);
    });
  }
  const bins = compile();
  const swept = sweepStale();
  if (swept.length > 0) log(`removed ${swept.length} namespaces left by earlier runs`);
  net = createTopology();
  const ticksPerS = clockTicksPerSecond();
  const idle0 = machineCpu();
  await Bun.sleep(IDLE_SAMPLE_MS);
  const idle1 = machineCpu();
  const busyBefore = ((idle1.busy - idle0.busy) / Math.max(1, idle1.total - idle0.total)) * 100;
  const runs: LayoutRun[] = [];
  try {
    // The shared layout first: the pinned one leaves RPS set on the sink's veths.
    for (const layout of layouts) runs.push(await runLayout(net, bins, PLACEMENT[layout], ticksPerS));
  } finally {
    cleanup();
  }
  return { runs, ticksPerS, busyBefore };
}

const { runs, ticksPerS, busyBefore } = await main().catch((err: unknown) => {
  console.error(`supervisor bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
const goals = judge(runs);
const check = deliveryCheck(runs);
const config = {
  seconds: stepSeconds,
  size,
  flows,
  steps: steps.map(stepName),
  layouts,
  pinned: { relay_cpu: PINNED.relayCpu, generator_and_sink_cpu: PINNED.peerCpu, rps_on: SINK_IFS },
  group: `${GROUP}:${PORT}`,
  kernel: readFileSync("/proc/sys/kernel/osrelease", "utf8").trim(),
  cpus: navigator.hardwareConcurrency,
  clock_ticks_per_s: ticksPerS,
  machine_busy_before_pct: busyBefore,
};
const LAYOUT_TITLE: Record<Layout, string> = {
  shared: "shared layout — the scheduler places everything on any CPU; a relay's CPU includes the sink's delivery of its datagrams",
  pinned: `pinned layout — the relay's whole process tree on CPU ${PINNED.relayCpu} alone, the generator and the sink on CPU ${PINNED.peerCpu}, the sink's receive work steered to CPU ${PINNED.peerCpu}`,
};

if (values.json) {
  const byLayout = Object.fromEntries(runs.map((r) => [r.layout, { rows: r.rows, unavailable: r.unavailable, stoa_stop: r.stops, c_relay: r.cRelay, rps: r.rps }]));
  console.log(JSON.stringify({ config, layouts: byLayout, sink_delivery_check: check, goals }));
} else {
  const n = (x: number) => Math.round(x).toLocaleString("en-US");
  console.log(`supervisor benchmark — ${size.toLocaleString("en-US")} B UDP to ${GROUP}:${PORT}, ${flows} flows, ${stepSeconds} s per step; kernel ${config.kernel}, ${config.cpus} CPUs; layouts: ${layouts.join(", ")}`);
  const busyNote = busyBefore > BUSY_WARN_PCT ? " — other work is running, the figures are noisy" : "";
  console.log(`machine busy before the ramp (nothing of this bench running): ${busyBefore.toFixed(0)} % of all CPUs${busyNote}`);
  console.log("loss = 1 − unique datagrams at the sink ÷ datagrams the generator sent; CPU = utime+stime of the relay's process tree ÷ packets relayed; relay capacity = 1e6 ÷ CPU µs/pkt, pps per core");
  const head = ["relay", "target", "offered pps", "relayed pps", "loss %", "Δ direct", "dup", "CPU µs/pkt", "CPU %", "relay capacity", `CPU${PINNED.relayCpu} busy (si)`, "gen µs/pkt", "machine busy", "drops relay/sink/backlog", "per worker"];
  const widths = [23, 7, 11, 11, 7, 8, 4, 10, 6, 14, 15, 10, 12, 24, 0];
  const fmt = (cells: string[]) => `  ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ")}`;
  for (const run of runs) {
    console.log(`\n══ ${LAYOUT_TITLE[run.layout]}`);
    if (run.layout === "pinned") {
      console.log(`  CPU % is the relay's share of CPU ${PINNED.relayCpu}, CPU${PINNED.relayCpu} busy all of CPU ${PINNED.relayCpu}'s use (softirq sampled by tick in brackets): 100 − it is the relay's headroom`);
      for (const line of run.rps?.lines ?? []) console.log(`  RPS ${line}`);
      if (run.rps?.ok !== true) console.log(`  RPS could NOT be set: the pinned layout's CPU figures INCLUDE the sink's receive work, as the shared layout's`);
      const stray = run.rows.filter((r) => r.relay_affinity !== null && r.relay_affinity.some((a) => a !== PLACEMENT.pinned.relayCpus));
      console.log(
        stray.length === 0
          ? `  every process of each relay's tree was allowed on CPU ${PINNED.relayCpu} only at the end of every step (Cpus_allowed_list)`
          : `  NOT pinned: ${stray.map((r) => `${r.label} ${r.step} allowed on ${r.relay_affinity!.join(" | ")}`).join(", ")}`,
      );
    }
    console.log("  the relays' receive side (delivery of the generator's frames into their sockets) runs in the generator's context in both layouts");
    for (const rate of steps) {
      const step = stepName(rate);
      const rows = run.rows.filter((x) => x.step === step);
      console.log(`\n${run.layout} step ${step}${rate === 0 ? " (unpaced: the generator's maximum on each path)" : " pps"}`);
      console.log(fmt(head));
      const direct = rows.find((r) => r.relay === "direct");
      for (const r of rows) {
        const share = r.worker_sent === null ? "" : r.worker_sent.map((s) => `${Math.round((s / Math.max(1, r.worker_sent!.reduce((a, b) => a + b, 0))) * 100)}%`).join("/");
        console.log(
          fmt([
            r.label,
            r.target_pps === null ? "max" : n(r.target_pps),
            n(r.offered_pps),
            n(r.relayed_pps),
            r.loss_pct.toFixed(2),
            direct === undefined || r.relay === "direct" ? "—" : `${r.loss_pct - direct.loss_pct >= 0 ? "+" : ""}${(r.loss_pct - direct.loss_pct).toFixed(2)}`,
            String(r.duplicates),
            r.cpu_us_per_packet === null ? "—" : r.cpu_us_per_packet.toFixed(2),
            r.cpu_pct === null ? "—" : r.cpu_pct.toFixed(0),
            r.relay_capacity_pps === null ? "—" : n(r.relay_capacity_pps),
            r.relay_cpu_busy_pct === null ? "—" : `${r.relay_cpu_busy_pct.toFixed(0)} % (${(r.relay_cpu_softirq_pct ?? 0).toFixed(0)})`,
            r.gen_cpu_us_per_packet.toFixed(2),
            `${r.machine_busy_pct.toFixed(0)} %`,
            `${r.relay_rcvbuf_drops ?? "—"}/${r.sink_rcvbuf_drops}/${r.backlog_drops}`,
            share,
          ]),
        );
        const by = r.cpu_us_per_packet_by_process;
        if (by !== null && Object.keys(by).length > 1) console.log(`  ${"".padEnd(widths[0]!)}  CPU µs/pkt by process: ${Object.entries(by).map(([p, us]) => `${p} ${us.toFixed(2)}`).join(", ")}`);
        if (r.stoa_counters !== null) console.log(`  ${"".padEnd(widths[0]!)}  stoa counters: ${COUNTERS.map((c) => `${c} ${n(r.stoa_counters![c])}`).join(", ")}`);
      }
      const short = rows.filter((r) => r.target_pps !== null && r.offered_pps < r.target_pps * OFFERED_SHORT);
      if (short.length > 0) console.log(`  the generator did not reach ${n(rate)} pps on: ${short.map((r) => `${r.label} (${Math.round((r.offered_pps / rate) * 100)} %)`).join(", ")}`);
    }
    if (Object.keys(run.unavailable).length > 0) console.log("");
    for (const [relay, why] of Object.entries(run.unavailable)) console.log(`${run.layout} ${LABEL[relay as RelayName]}: not available (${why})`);
    const c = run.cRelay;
    if (c !== null) {
      const counts = c.counters === null ? "printed no counters" : `counters over its run (warm-up included): ${C_COUNTERS.map((k) => `${k} ${n(c.counters![k])}`).join(", ")}`;
      console.log(`${run.layout} ${LABEL.c}: SIGTERM → exit ${c.stop.exitCode ?? "none (killed)"} in ${c.stop.ms} ms; ${counts}`);
    }
    for (const [relay, s] of Object.entries(run.stops)) console.log(`${run.layout} ${LABEL[relay as RelayName]}: SIGTERM → exit ${s.exitCode ?? "none (killed)"} in ${s.ms} ms (${s.withinTimeout ? "within" : "NOT within"} ${STOP_TIMEOUT_MS} ms)`);
  }
  console.log(`\ndoes the pinned layout's relay CPU exclude the sink's delivery? ${check.verdict}`);
  if (check.c_relay.length > 0) console.log("  the C relay's CPU per packet, shared → pinned (pinning also moves the generator off its CPU, and it sleeps and wakes there alone):");
  for (const c of check.c_relay) {
    const delta = c.shared_us === null ? "" : ` (${c.pinned_us - c.shared_us >= 0 ? "+" : "−"}${Math.abs(c.pinned_us - c.shared_us).toFixed(2)})`;
    const recv = c.pinned_received_on_relay_cpu_pct === null ? "" : `; per 100 relayed: receive processing on CPU ${PINNED.relayCpu} ${c.pinned_received_on_relay_cpu_pct.toFixed(2)}, RPS interrupts to CPU ${PINNED.peerCpu} ${c.pinned_rps_ipis_pct?.toFixed(1) ?? "—"}`;
    console.log(`  ${c.step.padStart(5)}: ${c.shared_us === null ? "—" : c.shared_us.toFixed(2)} µs shared → ${c.pinned_us.toFixed(2)} µs pinned${delta}${recv}`);
  }
  if (goals.length === 0) console.log("\ngoals: not judged (no stoa row)");
  for (const run of runs) {
    const mine = goals.filter((g) => g.layout === run.layout);
    if (mine.length === 0) continue;
    const whose = run.layout === "pinned" ? "relay CPU judged here: the relay's own work; loss against this layout's direct path" : "loss against this layout's direct path";
    console.log(`\n  goals — ${run.layout} layout (${whose})`);
    console.log(`  ${"goal".padEnd(44)} ${"measured".padStart(44)}  ${"goal".padEnd(22)}`);
    for (const g of mine) console.log(`  ${`${g.step} ${LABEL[g.relay]}: ${g.what}`.padEnd(44)} ${g.value.padStart(44)}  ${g.goal.padEnd(22)} ${g.info ? "info" : g.met === null ? "n/a" : g.met ? "PASS" : "FAIL"}`);
  }
}
