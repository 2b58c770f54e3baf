#!/usr/bin/env bun
/**
 * stoa addr benchmark (issue 4, spec addr.md): add+del of a /128 (nodad) through stoa's netlink
 * binding vs `ip -6 addr add/del` on the same interface in one run (goal: ≥ 50× faster), then
 * the cost of one add with 0, 1,000 and 10,000 addresses already on the interface.
 *
 * The floor (issue 17): lib/addr-baseline.c sends the same two requests from C on one netlink
 * socket, built with the system compiler (`cc`, else `gcc`) into a temp dir — the figure is
 * omitted, with the reason, when there is none. It runs on the same interface, the same number
 * of pairs, in rounds alternating with stoa's (other load on the machine, and every namespace's
 * rtnl_lock users, then weigh on both alike); goal: stoa's add+del p50 ≤ 1.5× the C program's.
 *
 * Safe by default: it creates its own network namespace with a dummy interface (a veth pair
 * where the kernel has no dummy driver), re-runs itself inside with `ip netns exec`, and deletes
 * the namespace at the end — the host's interfaces are never touched. `--dev IF` measures on an
 * existing interface of the current namespace instead (random ULA /128s come and go on it).
 * Every address it adds is removed before it exits, on errors and Ctrl-C too.
 *
 *   sudo bun scripts/bench/addr.ts [--json] [--count 2000] [--ip-count 200] [--sizes 0,1000,10000]
 *   sudo bun scripts/bench/addr.ts --dev eth0
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { contains, parseIPv6, parsePrefix, randomAddressIn } from "../../src/addr/ipv6.ts";
import { addAddress, closeNetlink, deleteAddress, interfaceIndex, listAddresses } from "../../src/ffi/netlink.ts";
import { type Built, buildC } from "./lib/cbuild.ts";
import { percentile } from "./lib/client.ts";

const { values } = parseArgs({
  options: {
    dev: { type: "string" },
    json: { type: "boolean", default: false },
    count: { type: "string", default: "2000" },
    "ip-count": { type: "string", default: "200" },
    sizes: { type: "string", default: "0,1000,10000" },
    /** Adds timed at each size. */
    samples: { type: "string", default: "200" },
    inner: { type: "boolean", default: false },
  },
});
const ip = Bun.which("ip") ?? "/usr/sbin/ip";
/** Untimed add+del pairs first: the first FFI calls compile trampolines and warm the kernel's caches. */
const WARMUP = 100;
/** Pause before each "N present" sample: the kernel's MLD state of deleted addresses expires in ~2 s. */
const SETTLE_MS = 4_000;
/** Yield to the event loop this often, so Ctrl-C is noticed and cleanup runs. */
const YIELD_EVERY = 250;
/** stoa's and the C program's pairs are taken in this many alternating rounds. */
const ROUNDS = 5;
/** The goal of issue 17: stoa's add+del p50 at most this many times the C program's. */
const C_GOAL = 1.5;

let aborted = false;
const stop = () => {
  aborted = true;
};

class Aborted extends Error {}

async function checkpoint(i: number): Promise<void> {
  if (i % YIELD_EVERY === 0) await Bun.sleep(0);
  if (aborted) throw new Aborted("interrupted");
}

interface Stats {
  p50: number;
  p99: number;
}

function stats(us: number[]): Stats {
  const sorted = [...us].sort((a, b) => a - b);
  return { p50: round(percentile(sorted, 0.5)), p99: round(percentile(sorted, 0.99)) };
}

const round = (n: number) => Math.round(n * 10) / 10;
const micros = (fromNs: number) => (Bun.nanoseconds() - fromNs) / 1000;

async function measure(dev: string) {
  const ifindex = interfaceIndex(dev);
  const space = runPrefix();
  // The C program's addresses come from a /64 of their own, so a sweep of it finds only theirs.
  const cSpace = space.replace(":b::/64", ":c::/64");
  const present: Uint8Array[] = [];
  const subject = { object: "benchmark address", dev };
  const fresh = (): Uint8Array => parseIPv6(randomAddressIn(space)) ?? new Uint8Array(16);
  const add = (address: Uint8Array) => addAddress({ address, prefixlen: 128, ifindex, nodad: true }, subject);
  const del = (address: Uint8Array) => deleteAddress({ address, prefixlen: 128, ifindex }, subject);
  const count = Number(values.count);
  const ipCount = Number(values["ip-count"]);
  const samples = Number(values.samples);
  const sizes = String(values.sizes).split(",").map(Number);
  const log = (line: string) => {
    if (!values.json) process.stderr.write(`${line}\n`);
  };

  const c = buildBaseline();
  try {
    for (let i = 0; i < WARMUP; i++) {
      const a = fresh();
      add(a);
      del(a);
    }
    log(`stoa: ${count} add+del of a /128 nodad on ${dev}${"bin" in c ? ", in rounds with the C program's" : ""}…`);
    if ("reason" in c) log(`  C baseline omitted: ${c.reason}`);
    const pair: number[] = [];
    const adds: number[] = [];
    const dels: number[] = [];
    const cRuns: { add: number; del: number }[] = [];
    const perRound = Math.ceil(count / ROUNDS);
    for (let i = 0; i < count; i++) {
      if ("bin" in c && i % perRound === 0) cRuns.push(...(await baseline(c.bin, ifindex, cSpace, Math.min(perRound, count - i))));
      await checkpoint(i);
      const a = fresh();
      const t0 = Bun.nanoseconds();
      add(a);
      const t1 = Bun.nanoseconds();
      del(a);
      const t2 = Bun.nanoseconds();
      pair.push((t2 - t0) / 1000);
      adds.push((t1 - t0) / 1000);
      dels.push((t2 - t1) / 1000);
    }

    log(`ip: ${ipCount} 'ip -6 addr add' + 'ip -6 addr del'…`);
    const ipPair: number[] = [];
    for (let i = 0; i < ipCount; i++) {
      await checkpoint(i);
      const a = randomAddressIn(space);
      const t0 = Bun.nanoseconds();
      const added = Bun.spawnSync([ip, "-6", "addr", "add", `${a}/128`, "dev", dev, "nodad"], { stdout: "ignore", stderr: "pipe" });
      const removed = Bun.spawnSync([ip, "-6", "addr", "del", `${a}/128`, "dev", dev], { stdout: "ignore", stderr: "pipe" });
      ipPair.push(micros(t0));
      if (added.exitCode !== 0 || removed.exitCode !== 0) throw new Error(`ip failed: ${added.stderr.toString()}${removed.stderr.toString()}`);
    }

    const scaling: Record<string, Stats & { fill_s: number }> = {};
    for (const size of sizes) {
      log(`with ${size} addresses present: filling…`);
      const t0 = Bun.nanoseconds();
      for (let i = present.length; i < size; i++) {
        await checkpoint(i);
        const a = fresh();
        add(a);
        present.push(a);
      }
      const fill = micros(t0) / 1e6;
      // Recently deleted addresses leave MLD state (tombstones of their solicited-node groups)
      // that slows adds for a few seconds; let it expire so only N is measured.
      await Bun.sleep(SETTLE_MS);
      // Adds only: the sampled addresses stay (N grows by `samples` during the sample).
      const times: number[] = [];
      for (let i = 0; i < samples; i++) {
        await checkpoint(i);
        const a = fresh();
        const t = Bun.nanoseconds();
        add(a);
        times.push(micros(t));
        present.push(a);
      }
      scaling[String(size)] = { ...stats(times), fill_s: round(fill) };
      log(`  one add with ${size} present: p50 ${scaling[String(size)]?.p50} µs`);
    }

    const stoa = stats(pair);
    const ipStats = stats(ipPair);
    const cStats = cRuns.length > 0 ? stats(cRuns.map((r) => r.add + r.del)) : undefined;
    const cleanup = removeAll();
    return {
      dev,
      kernel: (await Bun.file("/proc/sys/kernel/osrelease").text()).trim(),
      stoa_iterations: count,
      ip_iterations: ipCount,
      stoa_add_del_p50_us: stoa.p50,
      stoa_add_del_p99_us: stoa.p99,
      stoa_add_p50_us: stats(adds).p50,
      stoa_del_p50_us: stats(dels).p50,
      c_iterations: cRuns.length,
      c_add_del_p50_us: cStats?.p50 ?? null,
      c_add_del_p99_us: cStats?.p99 ?? null,
      c_add_p50_us: cStats ? stats(cRuns.map((r) => r.add)).p50 : null,
      c_del_p50_us: cStats ? stats(cRuns.map((r) => r.del)).p50 : null,
      /** stoa's add+del p50 over the C program's; the goal is ≤ c_goal. */
      c_ratio: cStats ? Math.round((stoa.p50 / cStats.p50) * 100) / 100 : null,
      c_goal: C_GOAL,
      c_omitted: "reason" in c ? c.reason : null,
      ip_add_del_p50_us: ipStats.p50,
      ip_add_del_p99_us: ipStats.p99,
      speedup: round(ipStats.p50 / stoa.p50),
      add_with_present: scaling,
      cleanup,
    };
  } finally {
    // Always: every address this run added goes, even after an error or Ctrl-C.
    removeAll();
    sweep(cSpace);
    closeNetlink();
  }

  /** Deletes whatever a killed C program may have left in its /64 (it removes its own otherwise). */
  function sweep(prefix: string): void {
    const p = parsePrefix(prefix);
    for (const entry of listAddresses()) {
      if (entry.index !== ifindex || !contains(p, entry.address)) continue;
      try {
        del(entry.address);
      } catch {
        // already gone
      }
    }
  }

  function removeAll(): { addresses: number; del_avg_us: number } {
    const n = present.length;
    if (n === 0) return { addresses: 0, del_avg_us: 0 };
    log(`cleaning up ${n} addresses…`);
    const t0 = Bun.nanoseconds();
    for (const a of present.splice(0)) {
      try {
        del(a);
      } catch {
        // already gone
      }
    }
    const us = micros(t0);
    log(`  removed in ${round(us / 1e6)} s`);
    return { addresses: n, del_avg_us: round(us / n) };
  }
}

/** lib/addr-baseline.c built (lib/cbuild.ts), or why the C figure is left out. */
function buildBaseline(): Built {
  return buildC("addr-baseline");
}

/** `count` timed add+del pairs of the C program (after its own warm-up), in µs. */
async function baseline(bin: string, ifindex: number, prefix: string, count: number): Promise<{ add: number; del: number }[]> {
  const net = formatPrefixAddress(prefix);
  const child = Bun.spawn([bin, String(ifindex), net, String(count), String(WARMUP)], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const [out, err, code] = await Promise.all([child.stdout.text(), child.stderr.text(), child.exited]);
  if (aborted) throw new Aborted("interrupted");
  if (code !== 0) throw new Error(`addr-baseline exited ${code}: ${err.trim()}`);
  return out
    .trim()
    .split("\n")
    .map((line) => {
      const [add, del] = line.split(" ").map((ns) => Number(ns) / 1000);
      return { add: add ?? Number.NaN, del: del ?? Number.NaN };
    });
}

/** "fd12:3456:789a:c::/64" → "fd12:3456:789a:c::", the form inet_pton takes. */
const formatPrefixAddress = (prefix: string): string => prefix.slice(0, prefix.indexOf("/"));

/** A random ULA /64 for this run's addresses, so parallel runs never collide. */
function runPrefix(): string {
  const hex = Buffer.from(crypto.getRandomValues(new Uint8Array(5))).toString("hex");
  return `fd${hex.slice(0, 2)}:${hex.slice(2, 6)}:${hex.slice(6, 10)}:b::/64`;
}

/** Runs this script again inside a fresh namespace with a dummy (or veth) interface. */
async function inNamespace(): Promise<number> {
  if (process.getuid?.() !== 0) throw new Error("needs root to create its network namespace (or give --dev IF to use an existing interface with CAP_NET_ADMIN)");
  const ns = `stoa-bench-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const run = (args: string[]) => {
    const r = Bun.spawnSync([ip, ...args], { stdout: "ignore", stderr: "pipe" });
    if (r.exitCode !== 0) throw new Error(`ip ${args.join(" ")}: ${r.stderr.toString().trim()}`);
  };
  run(["netns", "add", ns]);
  let child: ReturnType<typeof Bun.spawn> | undefined;
  const forward = () => child?.kill("SIGINT");
  process.on("SIGINT", forward);
  process.on("SIGTERM", forward);
  try {
    try {
      run(["-n", ns, "link", "add", "d0", "type", "dummy"]);
    } catch {
      run(["-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
      run(["-n", ns, "link", "set", "d1", "up"]);
    }
    run(["-n", ns, "link", "set", "d0", "up"]);
    run(["-n", ns, "link", "set", "lo", "up"]);
    const argv = [process.execPath, import.meta.path, "--inner", "--dev", "d0", "--count", String(values.count), "--ip-count", String(values["ip-count"]), "--sizes", String(values.sizes), "--samples", String(values.samples)];
    if (values.json) argv.push("--json");
    child = Bun.spawn([ip, "netns", "exec", ns, ...argv], { stdout: "inherit", stderr: "inherit", stdin: "ignore" });
    return await child.exited;
  } finally {
    Bun.spawnSync([ip, "netns", "del", ns]);
  }
}

if (values.dev === undefined && !values.inner) {
  process.exit(await inNamespace());
}

process.on("SIGINT", stop);
process.on("SIGTERM", stop);
try {
  const result = await measure(String(values.dev));
  if (values.json) {
    console.log(JSON.stringify(result));
  } else {
    console.log(`add+del of a /128 nodad on ${result.dev} (kernel ${result.kernel}):`);
    console.log(`  stoa (netlink via bun:ffi)  p50 ${result.stoa_add_del_p50_us} µs  p99 ${result.stoa_add_del_p99_us} µs  (add ${result.stoa_add_p50_us}, del ${result.stoa_del_p50_us}; ${result.stoa_iterations} runs)`);
    if (result.c_omitted === null) {
      console.log(`  C program, same requests    p50 ${result.c_add_del_p50_us} µs  p99 ${result.c_add_del_p99_us} µs  (add ${result.c_add_p50_us}, del ${result.c_del_p50_us}; ${result.c_iterations} runs)`);
    } else {
      console.log(`  C baseline omitted: ${result.c_omitted}`);
    }
    console.log(`  ip -6 addr add/del          p50 ${result.ip_add_del_p50_us} µs  p99 ${result.ip_add_del_p99_us} µs  (${result.ip_iterations} runs)`);
    if (result.c_ratio !== null) console.log(`  stoa / C p50 ${result.c_ratio}× (goal ≤ ${C_GOAL}×)`);
    console.log(`  speedup ${result.speedup}× (goal ≥ 50×)`);
    console.log("one add with N addresses already present:");
    for (const [size, s] of Object.entries(result.add_with_present)) console.log(`  N=${size.padEnd(6)} p50 ${s.p50} µs  p99 ${s.p99} µs  (filled in ${s.fill_s} s)`);
    console.log(`cleanup: ${result.cleanup.addresses} deletes, ${result.cleanup.del_avg_us} µs each on average`);
  }
} catch (err) {
  console.error(err instanceof Aborted ? "interrupted: addresses removed" : `bench failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
