#!/usr/bin/env bun
/**
 * Where a relayed frame's time goes, hop by hop (issue 17): the CPU each process of stoa's relay
 * path spends per 1 KB frame, one frame in flight, beside the bare 3-hop Bun chain's hops
 * (lib/passthrough.ts, the floor `scripts/bench/hotlink.ts` measures latency against) in the
 * same run. With one frame in flight and every process on one CPU, a frame's latency is the
 * sum of what each process spends on it, so the hop that costs more than its bare counterpart
 * is where stoa's latency goes.
 *
 * The path: this process writes HLNK frames into alice's IPC socket → alice's daemon → the relay
 * server (framed TCP link) → bob's daemon → bob's IPC socket → this process; the chain: this
 * process → unix → hop → TCP → hop → TCP → hop → unix → this process. Both are warmed (3,000
 * frames each, then 1 s idle), then measured in alternating blocks of --block frames, --rounds
 * of each (a first, unmeasured round before them): the machine's speed drifts within a minute
 * here, so each block of one has the other's beside it. Per hop: user and system CPU seconds of
 * the whole process (/proc/PID/stat, 10 ms ticks: a block should run a second or more) and the
 * main thread's run time (/proc/PID/task/PID/schedstat, ns), each divided by the frames.
 *
 * Run it pinned, as the hotlink benchmark's goals are (a cross-CPU wake-up costs tens of µs):
 *
 *   taskset -c 0 bun scripts/bench/hotlink-hops.ts [--block 20000] [--rounds 2] [--json] [--stoa path/to/build]
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { freePort } from "./lib/client.ts";
import { Proc, accounts, daemonArgv, waitForRung } from "./lib/hotlink-rig.ts";
import { LatencyProbe, warmLatencyProbe } from "./lib/latency-probe.ts";
import { passthroughChain } from "./lib/passthrough.ts";

const { values } = parseArgs({
  options: {
    block: { type: "string", default: "20000" },
    rounds: { type: "string", default: "2" },
    json: { type: "boolean", default: false },
    stoa: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("usage: taskset -c 0 bun scripts/bench/hotlink-hops.ts [--block 20000] [--rounds 2] [--json] [--stoa path/to/build]");
  process.exit(0);
}
const whole = (name: string, text: string): number => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name} must be a whole number ≥ 1, not ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return n;
};
const BLOCK = whole("block", values.block);
const ROUNDS = whole("rounds", values.rounds);
const stoa = values.stoa ?? join(import.meta.dir, "..", "..", "dist", "stoa");
const CHANNEL = "alice/bench/ipc";
const SIZE = 1000;
const WARM_UP = 3000;

/** CPU µs so far of process `pid`: user and system (all threads), and its main thread's run time. */
interface Cpu {
  user: number;
  sys: number;
  main: number;
}

function cpuOf(pid: number): Cpu {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const main = Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, "utf8").split(" ")[0]) / 1e3;
  return { user: Number(f[11]) * 1e4, sys: Number(f[12]) * 1e4, main }; // USER_HZ 100: a tick is 10^4 µs
}

interface Hop extends Cpu {
  name: string;
}

interface PathResult {
  frames: number;
  p50: number;
  hops: Hop[];
}

const dir = mkdtempSync("/tmp/hlhops-");
const runDir = join(dir, "run");
const children: Proc[] = [];
const spawn = (name: string, argv: string[]): Proc => {
  const child = new Proc(name, Bun.spawn(argv, { stdout: "pipe", stderr: "pipe", stdin: "ignore" }));
  children.push(child);
  return child;
};
let stopChain = async (): Promise<void> => {};
let result: Record<"stoa" | "chain", PathResult> | undefined;
try {
  const acc = accounts(stoa, dir, ["alice", "bob"], "alice/bench/**");
  const relayPort = freePort();
  const relay = spawn("relay", [stoa, "hotlink", "serve", "--listen", `127.0.0.1:${relayPort}`, "--link-listen", `127.0.0.1:${freePort()}`, "--users", acc.users, "--acl", acc.acl, "--log-level", "warn"]);
  await relay.line(/^hotlink: ws:\/\//);
  const daemons = ["alice", "bob"].map((user) =>
    spawn(`daemon-${user}`, daemonArgv(stoa, { server: `ws://127.0.0.1:${relayPort}`, user, tokenFile: acc.tokens[user] ?? "", runDir, direct: "off", relayLink: "auto", ipc: [[CHANNEL, join(dir, `${user}.sock`)]] })),
  );
  for (const d of daemons) await d.line(/^hotlink: /);
  await warmLatencyProbe(CHANNEL);
  const stoaProbe = new LatencyProbe(CHANNEL);
  const reader = await Bun.connect({ unix: join(dir, "bob.sock"), socket: { data: (_s, chunk) => stoaProbe.receive(chunk) } });
  await stoaProbe.connect(join(dir, "alice.sock"));
  await stoaProbe.one(SIZE); // opens the session
  await waitForRung(runDir, "alice", "bob", "ipc", CHANNEL, "relay");
  const chainProbe = new LatencyProbe(CHANNEL);
  const sink = Bun.listen<undefined>({ unix: join(dir, "out.sock"), socket: { data: (_s, chunk) => chainProbe.receive(chunk) } });
  const chain = await passthroughChain(3, 0, { unixIn: join(dir, "in.sock"), unixOut: join(dir, "out.sock") });
  stopChain = async () => {
    chainProbe.end();
    await chain.stop();
    sink.stop(true);
  };
  await chainProbe.connect(join(dir, "in.sock"));
  const [alice, bob] = daemons as [Proc, Proc];
  // passthroughChain starts its hops last to first.
  const chainPids = [...chain.pids].reverse();
  const paths = [
    { key: "stoa" as const, probe: stoaProbe, hops: [["alice's daemon", alice.pid], ["relay server", relay.pid], ["bob's daemon", bob.pid]] as const },
    { key: "chain" as const, probe: chainProbe, hops: chainPids.map((pid, i) => [`hop ${i + 1}`, pid] as const) },
  ];
  for (let i = 0; i < WARM_UP; i++) {
    await stoaProbe.one(SIZE);
    await chainProbe.one(SIZE);
  }
  await Bun.sleep(1000);
  const acc2 = Object.fromEntries(paths.map((p) => [p.key, { frames: 0, us: [] as number[], hops: p.hops.map(([name]) => ({ name, user: 0, sys: 0, main: 0 })) }]));
  for (let round = 0; round <= ROUNDS; round++) {
    for (const p of paths) {
      for (let i = 0; i < 20; i++) await p.probe.one(SIZE);
      const before = p.hops.map(([, pid]) => cpuOf(pid));
      const us: number[] = [];
      for (let i = 0; i < BLOCK; i++) us.push((await p.probe.one(SIZE)) / 1000);
      const after = p.hops.map(([, pid]) => cpuOf(pid));
      if (round === 0) continue; // the first round is not measured
      const a = acc2[p.key];
      if (a === undefined) continue;
      a.frames += BLOCK;
      a.us.push(...us);
      a.hops.forEach((h, k) => {
        const b = before[k] as Cpu;
        const e = after[k] as Cpu;
        h.user += e.user - b.user;
        h.sys += e.sys - b.sys;
        h.main += e.main - b.main;
      });
    }
  }
  reader.end();
  stoaProbe.end();
  result = Object.fromEntries(
    Object.entries(acc2).map(([key, a]) => {
      const sorted = a.us.sort((x, y) => x - y);
      return [key, { frames: a.frames, p50: sorted[Math.floor((sorted.length - 1) / 2)] ?? Number.NaN, hops: a.hops.map((h) => ({ name: h.name, user: h.user / a.frames, sys: h.sys / a.frames, main: h.main / a.frames })) }];
    }),
  ) as Record<"stoa" | "chain", PathResult>;
} finally {
  await stopChain();
  await Promise.all(children.map((c) => c.stop()));
  rmSync(dir, { recursive: true, force: true });
}

if (values.json) {
  console.log(JSON.stringify(result));
} else if (result !== undefined) {
  const { stoa: s, chain: c } = result;
  console.log(`CPU per 1 KB frame, one in flight, µs (${s.frames} frames of each path in ${ROUNDS} alternating blocks)`);
  console.log(`  P50 one-way: stoa ${s.p50.toFixed(1)}, bare chain ${c.p50.toFixed(1)} (${(s.p50 / c.p50).toFixed(2)}×)`);
  console.log(`  ${"stoa hop".padEnd(16)} ${"user".padStart(6)} ${"sys".padStart(6)} ${"main".padStart(6)}   ${"bare hop".padEnd(8)} ${"user".padStart(6)} ${"sys".padStart(6)} ${"main".padStart(6)}   main +`);
  s.hops.forEach((h, i) => {
    const b = c.hops[i] as Hop;
    const f = (x: number) => x.toFixed(1).padStart(6);
    console.log(`  ${h.name.padEnd(16)} ${f(h.user)} ${f(h.sys)} ${f(h.main)}   ${b.name.padEnd(8)} ${f(b.user)} ${f(b.sys)} ${f(b.main)}   ${f(h.main - b.main)}`);
  });
}
