/**
 * The test bed of scripts/bench/supervisor.ts (issue 14): three network namespaces joined by
 * veth pairs, and what the bench reads from /proc about the processes in them.
 *
 *   gen ─gr══rg─ relay ─rs══sr─ sink        gen–relay 10.201.1.1|2/24, relay–sink 10.201.2.1|2/24
 *    └──────────gs══sg──────────┘            gen–sink (the direct path) 10.201.3.1|2/24
 *
 * Namespaces are `stoa-b-<pid>-<rand>-gen|relay|sink`; the veths are created inside them, so
 * their names never meet the host's. `destroy()` kills every process left in the namespaces and
 * deletes them; it is idempotent and synchronous, so it can run from an "exit" handler or a
 * signal handler. `sweepStale()` removes the namespaces of earlier runs whose pid is gone.
 *
 * `steerReceive(ns, dev, mask)` moves a veth's receive work to other CPUs (RPS).
 *
 * `treeCpuTicks(pid)` is utime+stime (/proc/<pid>/stat, in clock ticks: `CLK_TCK`) of a process
 * and all its descendants — a relay's whole process tree; `treeCpuByProcess(pid)` the same per
 * process of the tree; `treeAffinity(pid)` the CPUs the tree's processes may run on.
 */
import { existsSync, readFileSync, readdirSync } from "node:fs";

export const NS_PREFIX = "stoa-b-";
const ip = Bun.which("ip") ?? "/usr/sbin/ip";
/** How long destroy() waits for killed processes to leave before deleting a namespace. */
const DRAIN_MS = 3_000;

export interface Topology {
  gen: string;
  relay: string;
  sink: string;
  /** Interface names and addresses per namespace. */
  addr: {
    genToRelay: string; // on gr
    relayIn: string; // on rg
    relayOut: string; // on rs
    sinkFromRelay: string; // on sr
    genToSink: string; // on gs
    sinkDirect: string; // on sg
  };
  ifindex: { gr: number; gs: number };
  destroy(): void;
}

function run(args: string[]): string {
  const r = Bun.spawnSync([ip, ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr.toString().trim()}`);
  return r.stdout.toString();
}

function pidsIn(ns: string): number[] {
  const r = Bun.spawnSync([ip, "netns", "pids", ns], { stdin: "ignore", stdout: "pipe", stderr: "ignore" });
  return r.stdout.toString().split(/\s+/).filter(Boolean).map(Number);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function deleteNamespaces(names: string[]): void {
  for (const ns of names) for (const pid of pidsIn(ns)) process.kill(pid, "SIGKILL");
  const until = Date.now() + DRAIN_MS;
  while (Date.now() < until && names.some((ns) => pidsIn(ns).length > 0)) Bun.sleepSync(20);
  for (const ns of names) Bun.spawnSync([ip, "netns", "del", ns], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
}

/** Deletes the namespaces of earlier runs of this bench whose process is gone. */
export function sweepStale(): string[] {
  const re = new RegExp(`^${NS_PREFIX}(\\d+)-`);
  const stale = run(["netns", "list"])
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((ns) => {
      const m = re.exec(ns);
      return m !== null && !alive(Number(m[1]));
    });
  deleteNamespaces(stale);
  return stale;
}

export function createTopology(): Topology {
  const base = `${NS_PREFIX}${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  const gen = `${base}-gen`;
  const relay = `${base}-relay`;
  const sink = `${base}-sink`;
  const created: string[] = [];
  let destroyed = false;
  const destroy = () => {
    if (destroyed) return;
    destroyed = true;
    deleteNamespaces(created);
  };
  try {
    for (const ns of [gen, relay, sink]) {
      run(["netns", "add", ns]);
      created.push(ns);
      run(["-n", ns, "link", "set", "lo", "up"]);
    }
    const pair = (a: string, ifa: string, addrA: string, b: string, ifb: string, addrB: string) => {
      run(["-n", a, "link", "add", ifa, "type", "veth", "peer", "name", ifb, "netns", b]);
      run(["-n", a, "addr", "add", `${addrA}/24`, "dev", ifa]);
      run(["-n", b, "addr", "add", `${addrB}/24`, "dev", ifb]);
      run(["-n", a, "link", "set", ifa, "up"]);
      run(["-n", b, "link", "set", ifb, "up"]);
    };
    const addr = {
      genToRelay: "10.201.1.1",
      relayIn: "10.201.1.2",
      relayOut: "10.201.2.1",
      sinkFromRelay: "10.201.2.2",
      genToSink: "10.201.3.1",
      sinkDirect: "10.201.3.2",
    };
    pair(gen, "gr", addr.genToRelay, relay, "rg", addr.relayIn);
    pair(relay, "rs", addr.relayOut, sink, "sr", addr.sinkFromRelay);
    pair(gen, "gs", addr.genToSink, sink, "sg", addr.sinkDirect);
    // The relay's first datagrams must not wait for ARP: resolve the sink once now.
    run(["-n", relay, "neigh", "replace", addr.sinkFromRelay, "lladdr", macOf(sink, "sr"), "dev", "rs", "nud", "permanent"]);
    return { gen, relay, sink, addr, ifindex: { gr: ifindexOf(gen, "gr"), gs: ifindexOf(gen, "gs") }, destroy };
  } catch (err) {
    destroy();
    throw err;
  }
}

function linkInfo(ns: string, dev: string): { ifindex: number; address: string } {
  const [info] = JSON.parse(run(["-n", ns, "-j", "link", "show", dev])) as { ifindex: number; address: string }[];
  if (info === undefined) throw new Error(`no interface ${dev} in ${ns}`);
  return info;
}
const ifindexOf = (ns: string, dev: string) => linkInfo(ns, dev).ifindex;
const macOf = (ns: string, dev: string) => linkInfo(ns, dev).address;

/** utime+stime, state and ppid of one process (fields 14, 15, 3, 4 of /proc/<pid>/stat). */
function stat(pid: number): { ticks: number; ppid: number } | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
    return { ticks: Number(rest[11]) + Number(rest[12]), ppid: Number(rest[1]) };
  } catch {
    return undefined; // gone
  }
}

/** The pids of a process's children (every thread's /proc/…/task/<tid>/children). */
function children(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const path = `/proc/${pid}/task/${tid}/children`;
      if (existsSync(path)) out.push(...readFileSync(path, "utf8").split(/\s+/).filter(Boolean).map(Number));
    }
  } catch {
    // gone
  }
  return out;
}

/** The pids of a process tree: the root and all its descendants. */
export function processTree(root: number): number[] {
  const seen: number[] = [];
  const todo = [root];
  while (todo.length > 0) {
    const pid = todo.pop() as number;
    if (seen.includes(pid)) continue;
    seen.push(pid);
    todo.push(...children(pid));
  }
  return seen;
}

/** The distinct CPU lists the processes of a tree may run on (Cpus_allowed_list of /proc/<pid>/status: "0", "0-1"). */
export function treeAffinity(root: number): string[] {
  const lists = new Set<string>();
  for (const pid of processTree(root)) {
    try {
      const line = readFileSync(`/proc/${pid}/status`, "utf8").split("\n").find((l) => l.startsWith("Cpus_allowed_list:"));
      if (line !== undefined) lists.add(line.split(/\s+/)[1] ?? "");
    } catch {
      // gone
    }
  }
  return [...lists];
}

/** utime+stime of a process tree, in clock ticks. */
export function treeCpuTicks(root: number): number {
  return processTree(root).reduce((sum, pid) => sum + (stat(pid)?.ticks ?? 0), 0);
}

/**
 * utime+stime of each process of a tree, in clock ticks, by a label: "<role> <index>" for a
 * process started with `--role R --index I` (stoa's workers), "main" for the root, the pid else.
 */
export function treeCpuByProcess(root: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const pid of processTree(root)) {
    const ticks = stat(pid)?.ticks;
    if (ticks === undefined) continue;
    let label = pid === root ? "main" : String(pid);
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      const at = (flag: string) => argv[argv.indexOf(flag) + 1];
      if (argv.includes("--role")) label = `${at("--role")} ${at("--index") ?? ""}`.trim();
    } catch {
      // gone: keep the pid
    }
    out.set(label, (out.get(label) ?? 0) + ticks);
  }
  return out;
}

/** The kernel's clock tick (USER_HZ) that /proc/<pid>/stat counts in. */
export function clockTicksPerSecond(): number {
  const r = Bun.spawnSync(["getconf", "CLK_TCK"], { stdout: "pipe", stderr: "ignore" });
  return Number(r.stdout.toString().trim()) || 100;
}

/** Datagrams dropped for a full receive buffer in the namespace of `pid` (Udp RcvbufErrors). */
export function udpRcvbufErrors(pid: number): number {
  try {
    const lines = readFileSync(`/proc/${pid}/net/snmp`, "utf8").split("\n").filter((l) => l.startsWith("Udp:"));
    const names = (lines[0] ?? "").split(/\s+/);
    const values = (lines[1] ?? "").split(/\s+/);
    return Number(values[names.indexOf("RcvbufErrors")] ?? 0);
  } catch {
    return 0;
  }
}

/** Packets the kernel dropped for a full per-CPU backlog (every veth receive goes through it), all CPUs. */
export function backlogDrops(): number {
  return readFileSync("/proc/net/softnet_stat", "utf8")
    .split("\n")
    .filter(Boolean)
    .reduce((sum, line) => sum + Number.parseInt(line.split(" ")[1] ?? "0", 16), 0);
}

/**
 * Of one CPU, so far (its /proc/net/softnet_stat line: the one whose CPU id, column 13, is `cpu`;
 * the cpu-th line on kernels without that column): `received`, packets whose receive processing
 * (IP/UDP receive, socket delivery) ran on it, column 1; `rpsIpis`, the interrupts other CPUs
 * sent it to process packets they steered to it (RPS), column 10.
 */
export function softnet(cpu: number): { received: number; rpsIpis: number } {
  const lines = readFileSync("/proc/net/softnet_stat", "utf8").split("\n").filter(Boolean).map((l) => l.split(" "));
  const withIds = (lines[0]?.length ?? 0) > 12;
  const line = withIds ? lines.find((f) => Number.parseInt(f[12] ?? "", 16) === cpu) : lines[cpu];
  if (line === undefined) throw new Error(`/proc/net/softnet_stat has no line for CPU ${cpu}: is it online?`);
  return { received: Number.parseInt(line[0] ?? "0", 16), rpsIpis: Number.parseInt(line[9] ?? "0", 16) };
}

/**
 * CPU time so far, in ticks (/proc/stat): busy (everything but idle and iowait), of that in
 * softirq, and in all — of the whole machine, or of one CPU when `cpu` is given.
 */
export function machineCpu(cpu?: number): { busy: number; softirq: number; total: number } {
  const name = cpu === undefined ? "cpu" : `cpu${cpu}`;
  const line = readFileSync("/proc/stat", "utf8").split("\n").find((l) => l.split(" ")[0] === name);
  if (line === undefined) throw new Error(`/proc/stat has no ${name} line: is there a CPU ${cpu}?`);
  const fields = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = fields.reduce((a, b) => a + b, 0);
  return { busy: total - (fields[3] ?? 0) - (fields[4] ?? 0), softirq: fields[6] ?? 0, total };
}

/**
 * Steers the receive work of `dev` in namespace `ns` to the CPUs of `mask` (RPS: writes
 * /sys/class/net/<dev>/queues/rx-0/rps_cpus in the namespace's own sysfs, which `ip netns exec`
 * mounts) and reads it back: the mask read back, or why it could not be set.
 */
export function steerReceive(ns: string, dev: string, mask: number): { ok: true; readBack: number } | { ok: false; why: string } {
  const path = `/sys/class/net/${dev}/queues/rx-0/rps_cpus`;
  const sh = (script: string) => Bun.spawnSync([ip, "netns", "exec", ns, "sh", "-c", script, "sh", path, mask.toString(16)], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const set = sh('echo "$2" > "$1"');
  if (set.exitCode !== 0) return { ok: false, why: `writing ${path} in ${ns} failed: ${set.stderr.toString().trim() || `exit ${set.exitCode}`}` };
  const got = sh('cat "$1"');
  const readBack = Number.parseInt(got.stdout.toString().trim().replaceAll(",", ""), 16);
  if (got.exitCode !== 0 || readBack !== mask) return { ok: false, why: `${path} in ${ns} reads back "${got.stdout.toString().trim() || got.stderr.toString().trim()}", not ${mask.toString(16)}` };
  return { ok: true, readBack };
}
