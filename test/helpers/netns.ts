/**
 * Network namespaces as stand-in hosts for cross-host tests (gateway/meta, addr, hotlink).
 *
 * Contract:
 * - `canUseNetns()` says whether this machine can run such tests (root, iproute2, a working
 *   namespace + veth probe) and why not; tests print the reason and skip with `describe.if`.
 * - `createNet()` builds hosts (one namespace each, `lo` up) joined by veth pairs. Every link gets
 *   its own /64 from a per-run random ULA prefix (`fdXX:XXXX:XXXX:<link>::/64`, `::1` on the
 *   first host named in the link, `::2` on the second), added `nodad` so it is usable at once;
 *   IPv4 (`10.<rand>.<link>.1|2/24`) only when asked. Nothing is configured in the root
 *   namespace: veths are created directly inside their namespaces, so none ever appears there.
 * - Namespaces are named `stoa-t-<pid>-<rand>-<host>`, so parallel runs never collide and a
 *   later run can tell whose namespaces are left over: `sweepStale()` removes those of dead pids
 *   (it also runs once by itself on the first `createNet()` of a process).
 * - `net.destroy()` kills every process inside the namespaces (not only the ones spawned here:
 *   grandchildren would keep a namespace, and its veths, alive after `ip netns del`), then deletes
 *   the namespaces. It is idempotent. If the process ends without it — a plain script's exit, a
 *   `bun test` run that ends (which emits no "exit" event), a signal, even SIGKILL — a detached
 *   reaper started on the first `createNet()` sweeps the dead process's namespaces.
 *
 * Running programs inside: `ip netns exec <ns> <argv>` works for any program — `bun <script>`
 * (use `process.execPath`), the compiled `dist/stoa`, `sh`. It only switches the network namespace
 * (and remounts /sys): the filesystem is shared, so pathname Unix sockets are reachable from every
 * "host" — give each host its own run dir. The test process itself stays in the root namespace
 * and cannot reach the namespaces' addresses: clients must run inside (`probeTcp`, `exec`).
 *
 * @example
 * const can = canUseNetns();
 * if (!can.ok) console.warn(`skipping cross-host tests: ${can.reason}`);
 * describe.if(can.ok)("cross host", () => {
 *   test("b reaches a", async () => {
 *     await using net = await createNet({ hosts: ["a", "b"], links: [["a", "b"]] });
 *     const { port } = await net.listenTcp("a", net.addr("a", "b"));
 *     expect(await net.probeTcp("b", net.addr("a", "b"), port)).toEqual({ ok: true, line: "hello a" });
 *   });
 * });
 */
import type { Spawn, Subprocess } from "bun";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

/** Every namespace this helper creates starts with this, followed by `<pid>-<rand>-<host>`. */
export const NETNS_PREFIX = "stoa-t-";

/** Linux IFNAMSIZ (16) minus the NUL: the longest interface name the kernel accepts. */
const IFNAME_MAX = 15;
/** Interfaces are `to-<peer>`: host names fit IFNAME_MAX with that prefix. */
const IFACE_PREFIX = "to-";
const HOST_RE = new RegExp(`^[a-z][a-z0-9]{0,${IFNAME_MAX - IFACE_PREFIX.length - 1}}$`);
/** One /64 per link is numbered in 16 bits, one /24 per link in the third IPv4 octet. */
const MAX_LINKS = 255;
const MAX_HOSTS = 32;
/** How long destroy() waits for killed processes to leave a namespace before deleting it. */
const DRAIN_MS = 5_000;
/** Default limit on `exec`: a hung command must fail its test, not hang the run. */
const EXEC_TIMEOUT_MS = 30_000;
/** Bun's start-up inside a namespace is well under this; it bounds `listenTcp`'s wait. */
const READY_TIMEOUT_MS = 10_000;

const STALE_RE = new RegExp(`^${NETNS_PREFIX}(\\d+)-`);
const TCP_FIXTURE = join(import.meta.dir, "..", "fixtures", "netns-tcp.ts");
const REAPER_FIXTURE = join(import.meta.dir, "..", "fixtures", "netns-reaper.ts");

/** What a finished command printed and how it ended (`signal` set when it was killed). */
export interface ExecResult {
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  env?: Record<string, string | undefined>;
  cwd?: string;
  stdin?: string | Uint8Array;
  timeoutMs?: number;
}

export interface NetOptions {
  /** Host names: `[a-z][a-z0-9]{0,11}`, unique. */
  hosts: string[];
  /** Pairs of hosts joined by a veth pair; at most one link per pair. */
  links?: [string, string][];
  /** Default true. */
  ipv6?: boolean;
  /** Default false: links are IPv6-only unless asked. */
  ipv4?: boolean;
  /**
   * Default false: duplicate-address detection is off in every namespace (`accept_dad=0`), so
   * link-local addresses work at once too. A router forwards nothing on a link until its
   * link-local address is out of DAD (the kernel sends no neighbour solicitation for a forwarded
   * packet without one), which costs routed tests ~2 s. Pass true for the kernel's default.
   */
  dad?: boolean;
}

interface Link {
  a: string;
  b: string;
  v6: string | undefined; // "fdXX:XXXX:XXXX:<n>" — the /64 without "::/64"
  v4: string | undefined; // "10.<r>.<n>" — the /24 without ".0/24"
}

let ipBin: string | undefined;
/** iproute2's `ip`, which lives in /usr/sbin, often not on a non-root PATH. */
function findIp(): string | undefined {
  ipBin ??= Bun.which("ip") ?? ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].find((p) => existsSync(p));
  return ipBin;
}

function requireIp(): string {
  const ip = findIp();
  if (!ip) throw new Error("iproute2's `ip` not found: install it (apt-get install iproute2)");
  return ip;
}

/** Runs `ip ARGS` in the root namespace, synchronously — for tests that inspect the host. */
export function ipSync(args: string[]): ExecResult {
  const p = Bun.spawnSync([requireIp(), ...args], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const signal = p.signalCode == null ? null : String(p.signalCode);
  return { code: p.exitCode ?? -1, signal, stdout: p.stdout.toString(), stderr: p.stderr.toString() };
}

function mustSync(args: string[]): string {
  const r = ipSync(args);
  if (r.code !== 0) throw new Error(`ip ${args.join(" ")} failed: ${r.stderr.trim() || `exit ${r.code}`}`);
  return r.stdout;
}

function randomHex(bytes: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("hex");
}

let probed: { ok: true } | { ok: false; reason: string } | undefined;

/**
 * Whether namespace tests can run here: root, iproute2, and a probe that creates a namespace
 * with a veth pair inside and runs a command in it. Cached per process.
 */
export function canUseNetns(): { ok: true } | { ok: false; reason: string } {
  probed ??= probe();
  return probed;
}

function probe(): { ok: true } | { ok: false; reason: string } {
  const uid = process.getuid?.() ?? -1;
  if (uid !== 0) return { ok: false, reason: `needs root for network namespaces (uid is ${uid}); CI runs these as root` };
  const ip = findIp();
  if (!ip) return { ok: false, reason: "iproute2's `ip` not found (apt-get install iproute2)" };
  const ns = `${NETNS_PREFIX}${process.pid}-${randomHex(3)}-probe`;
  try {
    mustSync(["netns", "add", ns]);
    mustSync(["link", "add", "p0", "netns", ns, "type", "veth", "peer", "name", "p1", "netns", ns]);
    mustSync(["netns", "exec", ns, ip, "link", "set", "lo", "up"]);
    return { ok: true };
  } catch (err) {
    return { ok: false, reason: `cannot set up a network namespace: ${err instanceof Error ? err.message : String(err)}` };
  } finally {
    ipSync(["netns", "del", ns]);
  }
}

/** Is `pid` a running process (a zombie counts as dead: it holds no namespace)? */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function namespacePids(ns: string): number[] {
  const r = ipSync(["netns", "pids", ns]);
  return r.stdout.split("\n").map(Number).filter((pid) => Number.isInteger(pid) && pid > 0 && pid !== process.pid);
}

function killAll(pids: Iterable<number>): void {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Kills whatever runs in `ns` and deletes it, without waiting: the kernel frees it on the last exit. */
function removeNamespaceSync(ns: string): void {
  killAll(namespacePids(ns));
  ipSync(["netns", "del", ns]);
}

/**
 * Removes namespaces left by earlier runs whose process is gone (killed before it could clean
 * up), with any process still inside them. Namespaces of live processes are never touched.
 * Returns the names removed.
 */
export function sweepStale(): string[] {
  if (!findIp()) return [];
  const removed: string[] = [];
  for (const line of ipSync(["netns", "list"]).stdout.split("\n")) {
    const name = line.split(" ")[0] ?? "";
    const pid = Number(STALE_RE.exec(name)?.[1] ?? NaN);
    if (!Number.isInteger(pid) || pid === process.pid || alive(pid)) continue;
    removeNamespaceSync(name);
    removed.push(name);
  }
  return removed;
}

const live = new Set<Net>();
let guarded = false;
/** Held for the life of the process: its stdin pipe is the reaper's signal. */
let reaper: Subprocess<"pipe", "ignore", "ignore"> | undefined;

function cleanupAllSync(): void {
  for (const net of live) net.destroySync();
}

/**
 * Once per process: sweep what dead runs left, and make sure this process's namespaces go with
 * it however it ends. `process.on("exit")` covers plain scripts, but `bun test` does not emit
 * "exit", and nothing runs in-process after SIGKILL or an unhandled signal. So a detached reaper
 * holds the read end of a pipe whose write end dies with this process; on EOF it waits for this
 * process to be gone and sweeps its namespaces.
 */
function guard(): void {
  if (guarded) return;
  guarded = true;
  sweepStale();
  process.on("exit", cleanupAllSync);
  try {
    reaper = Bun.spawn([process.execPath, REAPER_FIXTURE, String(process.pid)], {
      stdin: "pipe",
      // Inheriting stdout/stderr would keep a `bun test | tee` pipeline open until the reaper ends.
      stdout: "ignore",
      stderr: "ignore",
      // Its own session: a Ctrl-C to the test's process group must not kill it before it sweeps.
      detached: true,
    });
    reaper.unref();
  } catch (err) {
    const why = err instanceof Error ? err.message : String(err);
    console.warn(`netns: no reaper (${why}); a killed run leaves its namespaces to the next sweep`);
  }
}
/**
 * Builds a topology of namespaces joined by veth pairs. Always `await net.destroy()` (or
 * `await using net = …`); a failure half-way removes what was built.
 *
 * @example
 * // a line a–b–c, b routes between the two links
 * const net = await createNet({ hosts: ["a", "b", "c"], links: [["a", "b"], ["b", "c"]] });
 * await net.sysctl("b", "net.ipv6.conf.all.forwarding", "1");
 * await net.route("a", net.prefix("b", "c"), "b");
 * await net.route("c", net.prefix("a", "b"), "b");
 */
export async function createNet(opts: NetOptions): Promise<Net> {
  const hosts = opts.hosts;
  const links = opts.links ?? [];
  const v6 = opts.ipv6 ?? true;
  const v4 = opts.ipv4 ?? false;
  if (hosts.length === 0 || hosts.length > MAX_HOSTS) throw new Error(`createNet: give 1 to ${MAX_HOSTS} hosts`);
  if (links.length > MAX_LINKS) throw new Error(`createNet: at most ${MAX_LINKS} links`);
  if (links.length > 0 && !v6 && !v4) throw new Error("createNet: enable ipv6 or ipv4 for the links");
  for (const h of hosts) {
    if (!HOST_RE.test(h)) throw new Error(`createNet: host name ${JSON.stringify(h)} must match ${HOST_RE}`);
  }
  if (new Set(hosts).size !== hosts.length) throw new Error("createNet: host names must be unique");
  const seen = new Set<string>();
  for (const [a, b] of links) {
    if (!hosts.includes(a) || !hosts.includes(b) || a === b) throw new Error(`createNet: bad link ${a}–${b}`);
    const key = [a, b].sort().join(" ");
    if (seen.has(key)) throw new Error(`createNet: two links between ${a} and ${b}`);
    seen.add(key);
  }
  const ip = requireIp();
  guard();

  const rand = randomHex(6);
  // Written the way the kernel prints it (no leading zeros), so tests can compare with `ip` output.
  const group = (hex: string) => Number.parseInt(hex, 16).toString(16);
  const g = `fd${rand.slice(0, 2)}:${group(rand.slice(2, 6))}:${group(rand.slice(6, 10))}`;
  const octet = Number.parseInt(rand.slice(10, 12), 16);
  const built = links.map(([a, b], i): Link => ({
    a,
    b,
    v6: v6 ? `${g}:${(i + 1).toString(16)}` : undefined,
    v4: v4 ? `10.${octet}.${i + 1}` : undefined,
  }));
  const net = new Net(ip, `${NETNS_PREFIX}${process.pid}-${rand.slice(0, 6)}-`, hosts, built, opts.dad ?? false);
  live.add(net);
  try {
    await net.build();
  } catch (err) {
    await net.destroy();
    throw err;
  }
  return net;
}

/** A built topology; see `createNet`. */
class Net {
  private readonly procs = new Set<Subprocess>();
  private destroying: Promise<void> | undefined;

  constructor(
    private readonly ip: string,
    private readonly nsPrefix: string,
    /** The host names, as given. */
    readonly hosts: readonly string[],
    private readonly links: readonly Link[],
    private readonly dad: boolean,
  ) {}

  /** The namespace name of `host`, for commands this helper does not wrap. */
  ns(host: string): string {
    if (!this.hosts.includes(host)) {
      throw new Error(`no host ${JSON.stringify(host)} in this net (${this.hosts.join(", ")})`);
    }
    return this.nsPrefix + host;
  }

  /** `host`'s interface name on its link to `peer`. */
  iface(host: string, peer: string): string {
    this.link(host, peer);
    return IFACE_PREFIX + peer;
  }

  /** `host`'s address on its link to `peer`, without prefix length, ready for connect/bind. */
  addr(host: string, peer: string, family: 4 | 6 = 6): string {
    const l = this.link(host, peer);
    const n = host === l.a ? 1 : 2;
    if (family === 6) return `${this.need(l.v6, 6)}::${n}`;
    return `${this.need(l.v4, 4)}.${n}`;
  }

  /** The subnet of the link between `host` and `peer`, e.g. `fd12:3456:789a:2::/64`. */
  prefix(host: string, peer: string, family: 4 | 6 = 6): string {
    const l = this.link(host, peer);
    return family === 6 ? `${this.need(l.v6, 6)}::/64` : `${this.need(l.v4, 4)}.0/24`;
  }

  /**
   * Adds a route in `host` to `prefix` (or "default") via `via`: an address, or the name of a
   * neighbouring host (its address on the shared link).
   */
  async route(host: string, prefix: string, via: string): Promise<void> {
    const family: 4 | 6 = prefix.includes(":") || (prefix === "default" && !via.includes(".")) ? 6 : 4;
    const gw = HOST_RE.test(via) ? this.addr(via, host, family) : via;
    await this.ipIn(host, [`-${family}`, "route", "add", prefix, "via", gw]);
  }

  /** Sets a sysctl inside `host`'s namespace (`net.ipv6.conf.all.forwarding`, …). */
  async sysctl(host: string, key: string, value: string): Promise<void> {
    if (!/^[A-Za-z0-9_.\-/]+$/.test(key) || key.includes("..")) throw new Error(`bad sysctl key ${JSON.stringify(key)}`);
    const path = key.includes("/") ? key : key.replaceAll(".", "/");
    // /proc/sys/net shows the namespace of the process that opens it, so the write runs inside.
    const r = await this.exec(host, ["sh", "-c", 'printf "%s\\n" "$1" > "/proc/sys/$2"', "sh", value, path]);
    if (r.code !== 0) throw new Error(`sysctl ${key}=${value} in ${host} failed: ${r.stderr.trim()}`);
  }

  /** Runs `argv` inside `host` to completion (killed after `timeoutMs`, default 30 s). */
  async exec(host: string, argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const input = typeof opts.stdin === "string" ? new TextEncoder().encode(opts.stdin) : opts.stdin;
    const proc = Bun.spawn([this.ip, "netns", "exec", this.ns(host), ...argv], {
      stdin: input ?? "ignore",
      stdout: "pipe",
      stderr: "pipe",
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      timeout: opts.timeoutMs ?? EXEC_TIMEOUT_MS,
      killSignal: "SIGKILL",
    });
    this.track(proc);
    const [stdout, stderr] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    const signal = proc.signalCode == null ? null : String(proc.signalCode);
    return { code: proc.exitCode ?? -1, signal, stdout, stderr };
  }

  /** Starts a long-running `argv` inside `host` (Bun.spawn options); it is killed by destroy(). */
  spawn<
    const In extends Spawn.Writable = "ignore",
    const Out extends Spawn.Readable = "pipe",
    const Err extends Spawn.Readable = "inherit",
  >(host: string, argv: string[], opts?: Spawn.SpawnOptions<In, Out, Err>): Subprocess<In, Out, Err> {
    const proc = Bun.spawn([this.ip, "netns", "exec", this.ns(host), ...argv], opts);
    this.track(proc);
    return proc;
  }

  /**
   * Starts `argv` inside `host` and resolves once it printed a line "ready"; `done` then resolves
   * with everything it printed after that line once it exits 0 (rejects, with its stderr, when it
   * ends before "ready" or exits otherwise).
   */
  async startReady(host: string, argv: string[]): Promise<{ proc: Subprocess<"ignore", "pipe", "pipe">; done: Promise<string> }> {
    const proc = this.spawn(host, argv, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
    const reader = proc.stdout.getReader();
    const decoder = new TextDecoder();
    let out = "";
    while (!out.includes("ready\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`${argv.join(" ")} ended before it was ready: ${await new Response(proc.stderr).text()}`);
      out += decoder.decode(value);
    }
    const done = (async () => {
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        out += decoder.decode(value);
      }
      const code = await proc.exited;
      if (code !== 0) throw new Error(`${argv.join(" ")} exited ${code}: ${await new Response(proc.stderr).text()}`);
      return out.slice(out.indexOf("ready\n") + "ready\n".length);
    })();
    return { proc, done };
  }

  /**
   * Starts a TCP listener inside `host` on `address` (port 0 = any free port) that greets each
   * connection with "hello <label>\n" and echoes; resolves once it is bound.
   */
  async listenTcp(host: string, address: string, port = 0, label = host): Promise<{ proc: Subprocess; port: number }> {
    const proc = this.spawn(host, [process.execPath, TCP_FIXTURE, "listen", address, String(port), label], {
      stdout: "pipe",
      stderr: "pipe",
    });
    const reader = proc.stdout.getReader();
    const timer = setTimeout(() => proc.kill("SIGKILL"), READY_TIMEOUT_MS);
    let seen = "";
    try {
      while (!seen.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) {
          const why = (await new Response(proc.stderr).text()).trim();
          throw new Error(`listener in ${host} on [${address}]:${port} did not start: ${why || "no output"}`);
        }
        seen += new TextDecoder().decode(value);
      }
    } finally {
      clearTimeout(timer);
      reader.releaseLock();
    }
    const bound = Number(/^ready (\d+)/.exec(seen)?.[1]);
    if (!Number.isInteger(bound)) throw new Error(`listener in ${host} said ${JSON.stringify(seen)}`);
    return { proc, port: bound };
  }

  /** Connects from inside `from` to `address`:`port` and reads the first line the server sends. */
  async probeTcp(
    from: string,
    address: string,
    port: number,
    timeoutMs = 5_000,
  ): Promise<{ ok: true; line: string } | { ok: false; error: string }> {
    const r = await this.exec(from, [process.execPath, TCP_FIXTURE, "connect", address, String(port), String(timeoutMs)], {
      timeoutMs: timeoutMs + READY_TIMEOUT_MS,
    });
    if (r.code === 0) return { ok: true, line: r.stdout.trim() };
    return { ok: false, error: r.stderr.trim() || `exit ${r.code}${r.signal ? ` (${r.signal})` : ""}` };
  }

  /** Kills every process in the namespaces and deletes them. Safe to call more than once. */
  destroy(): Promise<void> {
    this.destroying ??= this.teardown();
    return this.destroying;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }

  /** The exit-hook path: no awaiting, so it can run inside process.on("exit"). */
  destroySync(): void {
    live.delete(this);
    killAll([...this.procs].map((p) => p.pid));
    for (const h of this.hosts) removeNamespaceSync(this.nsPrefix + h);
  }

  /** Called by createNet only. */
  async build(): Promise<void> {
    for (const h of this.hosts) {
      await this.run(["netns", "add", this.ns(h)]);
      // Before the veths exist: a new interface takes its settings from "default".
      if (!this.dad) {
        for (const scope of ["default", "all"]) await this.sysctl(h, `net.ipv6.conf.${scope}.accept_dad`, "0");
      }
    }
    for (const l of this.links) {
      // Each end is born in its namespace: no veth ever exists in the root namespace.
      const [ifA, ifB] = [this.iface(l.a, l.b), this.iface(l.b, l.a)];
      const [nsA, nsB] = [this.ns(l.a), this.ns(l.b)];
      await this.run(["link", "add", ifA, "netns", nsA, "type", "veth", "peer", "name", ifB, "netns", nsB]);
    }
    for (const h of this.hosts) {
      const batch = ["link set lo up"];
      for (const l of this.links) {
        const peer = l.a === h ? l.b : l.b === h ? l.a : undefined;
        if (peer === undefined) continue;
        const dev = this.iface(h, peer);
        batch.push(`link set ${dev} up`);
        if (l.v6) batch.push(`addr add ${this.addr(h, peer, 6)}/64 dev ${dev} nodad`);
        if (l.v4) batch.push(`addr add ${this.addr(h, peer, 4)}/24 dev ${dev}`);
      }
      await this.run(["-n", this.ns(h), "-batch", "-"], batch.join("\n") + "\n");
    }
  }

  private async teardown(): Promise<void> {
    live.delete(this);
    const names = this.hosts.map((h) => this.nsPrefix + h);
    const existing = new Set(ipSync(["netns", "list"]).stdout.split("\n").map((l) => l.split(" ")[0]));
    const present = names.filter((n) => existing.has(n));
    killAll([...this.procs].map((p) => p.pid));
    const deadline = Date.now() + DRAIN_MS;
    for (;;) {
      const pids = present.flatMap(namespacePids);
      if (pids.length === 0 || Date.now() > deadline) break;
      killAll(pids);
      await Bun.sleep(10);
    }
    await Promise.all([...this.procs].map((p) => p.exited));
    for (const n of present) await this.run(["netns", "del", n]);
  }

  private track(proc: Subprocess): void {
    this.procs.add(proc);
    void proc.exited.then(() => this.procs.delete(proc));
  }

  private link(host: string, peer: string): Link {
    this.ns(host);
    this.ns(peer);
    const l = this.links.find((x) => (x.a === host && x.b === peer) || (x.a === peer && x.b === host));
    if (!l) throw new Error(`no link between ${host} and ${peer}`);
    return l;
  }

  private need(part: string | undefined, family: 4 | 6): string {
    if (part === undefined) throw new Error(`this net has no IPv${family}: pass ipv${family}: true to createNet`);
    return part;
  }

  private ipIn(host: string, args: string[]): Promise<void> {
    return this.run(["-n", this.ns(host), ...args]);
  }

  private async run(args: string[], input?: string): Promise<void> {
    const proc = Bun.spawn([this.ip, ...args], {
      stdin: input === undefined ? "ignore" : new TextEncoder().encode(input),
      stdout: "ignore",
      stderr: "pipe",
      timeout: EXEC_TIMEOUT_MS,
      killSignal: "SIGKILL",
    });
    const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
    if (code !== 0) throw new Error(`ip ${args.join(" ")} failed: ${stderr.trim() || `exit ${code}`}`);
  }
}

export type { Net };
