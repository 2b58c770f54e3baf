import { afterEach, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { canUseNetns, createNet, ipSync, type Net, NETNS_PREFIX, sweepStale } from "./netns.ts";

const can = canUseNetns();
if (!can.ok) console.warn(`skipping network-namespace tests: ${can.reason}`);

const root = join(import.meta.dir, "..", "..");
const IP = Bun.which("ip") ?? "/usr/sbin/ip";
const exitFixture = join(root, "test", "fixtures", "netns-exit.ts");
const suiteFixture = join(root, "test", "fixtures", "netns-suite.ts");

const nets: Net[] = [];
afterEach(async () => {
  for (const n of nets.splice(0)) await n.destroy();
});

async function net(...args: Parameters<typeof createNet>): Promise<Net> {
  const n = await createNet(...args);
  nets.push(n);
  return n;
}

function namespaces(): string[] {
  return ipSync(["netns", "list"]).stdout.split("\n").map((l) => l.split(" ")[0] ?? "").filter(Boolean);
}

function rootInterfaces(): string[] {
  return ipSync(["-o", "link", "show"]).stdout.split("\n").map((l) => l.split(": ")[1]?.split("@")[0] ?? "").filter(Boolean);
}

function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** Polls until `pid` has exited (a SIGKILLed orphan is reaped by init shortly after). */
async function gone(pid: number): Promise<boolean> {
  for (let i = 0; i < 500 && running(pid); i++) await Bun.sleep(10);
  return !running(pid);
}

/** A pid that belonged to a process which has exited. */
async function deadPid(): Promise<number> {
  const p = Bun.spawn(["true"]);
  await p.exited;
  return p.pid;
}

describe("createNet arguments", () => {
  test("rejects host names that would make interface names longer than 15 characters", async () => {
    await expect(createNet({ hosts: ["a", "averyveryverylong"] })).rejects.toThrow(/host name/);
  });

  test("rejects links to unknown hosts, self-links and duplicate links", async () => {
    await expect(createNet({ hosts: ["a"], links: [["a", "z"]] })).rejects.toThrow(/bad link/);
    await expect(createNet({ hosts: ["a"], links: [["a", "a"]] })).rejects.toThrow(/bad link/);
    await expect(createNet({ hosts: ["a", "b"], links: [["a", "b"], ["b", "a"]] })).rejects.toThrow(/two links/);
  });
});

describe.if(can.ok)("a two-host link", () => {
  test("gives each end a ULA address in the link's own /64, marked nodad, with lo up", async () => {
    const n = await net({ hosts: ["a", "b"], links: [["a", "b"]] });
    const a = n.addr("a", "b");
    const b = n.addr("b", "a");
    expect(a).toMatch(/^fd[0-9a-f]{2}:[0-9a-f]{1,4}:[0-9a-f]{1,4}:1::1$/);
    expect(b).toBe(a.replace(/::1$/, "::2"));
    expect(n.prefix("a", "b")).toBe(a.replace(/::1$/, "::/64"));
    expect(n.iface("a", "b")).toBe("to-b");
    const shown = await n.exec("a", ["ip", "-6", "-o", "addr", "show", "dev", n.iface("a", "b")]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toContain(`${a}/64`);
    expect(shown.stdout).toMatch(/nodad/);
    const lo = await n.exec("b", ["ip", "-o", "link", "show", "lo"]);
    expect(lo.stdout).toMatch(/[<,]UP[,>]/);
  });

  test("is IPv6-only unless IPv4 is asked for", async () => {
    const n = await net({ hosts: ["a", "b"], links: [["a", "b"]] });
    const v4 = await n.exec("a", ["ip", "-4", "-o", "addr", "show", "dev", n.iface("a", "b")]);
    expect(v4.stdout.trim()).toBe("");
    expect(() => n.addr("a", "b", 4)).toThrow(/ipv4: true/);

    const both = await net({ hosts: ["a", "b"], links: [["a", "b"]], ipv4: true });
    expect(both.addr("b", "a", 4)).toMatch(/^10\.\d+\.1\.2$/);
    const { port } = await both.listenTcp("b", both.addr("b", "a", 4));
    expect(await both.probeTcp("a", both.addr("b", "a", 4), port)).toEqual({ ok: true, line: "hello b" });
  });

  test("each host reaches the other by its link address, at once", async () => {
    const n = await net({ hosts: ["a", "b"], links: [["a", "b"]] });
    const inA = await n.listenTcp("a", n.addr("a", "b"));
    const inB = await n.listenTcp("b", n.addr("b", "a"));
    expect(await n.probeTcp("b", n.addr("a", "b"), inA.port)).toEqual({ ok: true, line: "hello a" });
    expect(await n.probeTcp("a", n.addr("b", "a"), inB.port)).toEqual({ ok: true, line: "hello b" });
  });

  test("a listener in A is not reachable from a host with no link to A", async () => {
    const n = await net({ hosts: ["a", "b", "c"], links: [["a", "b"]] });
    const { port } = await n.listenTcp("a", n.addr("a", "b"));
    const r = await n.probeTcp("c", n.addr("a", "b"), port);
    expect(r.ok).toBe(false);
  });

  test("turns duplicate-address detection off unless dad: true keeps the kernel's default", async () => {
    const read = (n: Net) => n.exec("a", ["cat", `/proc/sys/net/ipv6/conf/${n.iface("a", "b")}/accept_dad`]);
    const quick = await net({ hosts: ["a", "b"], links: [["a", "b"]] });
    expect((await read(quick)).stdout.trim()).toBe("0");
    const kernel = await net({ hosts: ["a", "b"], links: [["a", "b"]], dad: true });
    expect((await read(kernel)).stdout.trim()).toBe("1");
  });

  test("exec reports exit code, stdout and stderr, and feeds stdin", async () => {
    const n = await net({ hosts: ["a"] });
    const r = await n.exec("a", ["sh", "-c", "cat; echo oops >&2; exit 4"], { stdin: "in\n" });
    expect(r).toEqual({ code: 4, signal: null, stdout: "in\n", stderr: "oops\n" });
  });

  test("exec kills a command that outlives its timeout", async () => {
    const n = await net({ hosts: ["a"] });
    const r = await n.exec("a", ["sleep", "30"], { timeoutMs: 100 });
    expect(r.signal).toBe("SIGKILL");
  });

  test("sysctl sets a value inside one namespace only", async () => {
    const n = await net({ hosts: ["a", "b"] });
    await n.sysctl("a", "net.ipv6.conf.all.forwarding", "1");
    const read = (h: string) => n.exec(h, ["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]);
    expect((await read("a")).stdout.trim()).toBe("1");
    expect((await read("b")).stdout.trim()).toBe("0");
  });
});

describe.if(can.ok)("a routed line a–b–c", () => {
  test("a reaches c once b forwards and both ends route via b", async () => {
    const n = await net({ hosts: ["a", "b", "c"], links: [["a", "b"], ["b", "c"]] });
    expect(n.prefix("b", "c")).not.toBe(n.prefix("a", "b"));
    const { port } = await n.listenTcp("c", n.addr("c", "b"));
    const before = await n.probeTcp("a", n.addr("c", "b"), port);
    expect(before.ok).toBe(false);

    await n.sysctl("b", "net.ipv6.conf.all.forwarding", "1");
    await n.route("a", n.prefix("b", "c"), "b");
    await n.route("c", n.prefix("a", "b"), n.addr("b", "c"));
    expect(await n.probeTcp("a", n.addr("c", "b"), port)).toEqual({ ok: true, line: "hello c" });
  });
});

describe.if(can.ok)("cleanup", () => {
  test("destroy kills every process inside, deletes the namespaces, leaves no veth, and can be repeated", async () => {
    const n = await createNet({ hosts: ["a", "b"], links: [["a", "b"]] });
    const names = n.hosts.map((h) => n.ns(h));
    expect(namespaces()).toEqual(expect.arrayContaining(names));
    // The veths never exist in the root namespace, not even while the net is up.
    expect(rootInterfaces()).not.toContain(n.iface("a", "b"));
    const direct = n.spawn("a", ["sleep", "600"]);
    // A grandchild the helper never saw would keep the namespace (and its veth) alive.
    const parent = n.spawn("b", ["sh", "-c", "sleep 600 & echo $!; wait"], { stdout: "pipe" });
    const reader = parent.stdout.getReader();
    const grandchild = Number(new TextDecoder().decode((await reader.read()).value).trim());
    reader.releaseLock();
    expect(running(grandchild)).toBe(true);

    await n.destroy();
    await n.destroy();
    expect(namespaces().filter((x) => names.includes(x))).toEqual([]);
    expect(await gone(direct.pid)).toBe(true);
    expect(await gone(grandchild)).toBe(true);
    const veths = ipSync(["-o", "link", "show", "type", "veth"]).stdout;
    expect(veths).not.toContain(`${n.iface("a", "b")}@`);
    expect(veths).not.toContain(`${n.iface("b", "a")}@`);
  });

  test("await using destroys the net at the end of the scope", async () => {
    let names: string[] = [];
    {
      await using n = await createNet({ hosts: ["a"] });
      names = n.hosts.map((h) => n.ns(h));
      expect(namespaces()).toEqual(expect.arrayContaining(names));
    }
    expect(namespaces().filter((x) => names.includes(x))).toEqual([]);
  });

  test("sweepStale removes a dead pid's namespace with what runs inside, and keeps a live one's", async () => {
    const stale = `${NETNS_PREFIX}${await deadPid()}-abcdef-x`;
    expect(ipSync(["netns", "add", stale]).code).toBe(0);
    const inside = Bun.spawn([IP, "netns", "exec", stale, "sleep", "600"], { stdout: "ignore", stderr: "ignore" });
    const entered = () => ipSync(["netns", "pids", stale]).stdout.split("\n").includes(String(inside.pid));
    for (let i = 0; i < 500 && !entered(); i++) await Bun.sleep(10);
    const mine = await net({ hosts: ["a"] });

    const removed = sweepStale();
    // A parallel run's sweep may have taken `stale` first; what this one removed is never live.
    expect(removed.every((x) => x.startsWith(NETNS_PREFIX) && !x.startsWith(`${NETNS_PREFIX}${process.pid}-`))).toBe(true);
    expect(namespaces()).not.toContain(stale);
    expect(namespaces()).toContain(mine.ns("a"));
    expect(await gone(inside.pid)).toBe(true);
  });

  /** Runs a fixture that builds a net and ends without destroy(); returns what it built. */
  const leaveEarly = async (argv: string[], kill?: NodeJS.Signals) => {
    const proc = Bun.spawn([process.execPath, ...argv], { cwd: root, stdout: "pipe", stderr: "pipe" });
    const reader = proc.stdout.getReader();
    let out = "";
    while (!out.includes('{"namespaces"') || !out.slice(out.indexOf('{"namespaces"')).includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`fixture ended early: ${out}${await new Response(proc.stderr).text()}`);
      out += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const json = out.slice(out.indexOf('{"namespaces"')).split("\n")[0] ?? "";
    const info = JSON.parse(json) as { namespaces: string[]; sleeper: number };
    if (kill) {
      // Still all there while the owner lives (the other endings may have cleaned up already).
      expect(namespaces()).toEqual(expect.arrayContaining(info.namespaces));
      expect(running(info.sleeper)).toBe(true);
      proc.kill(kill);
    }
    await proc.exited;
    return info;
  };

  /** Polls until none of `names` is listed (the reaper works after its owner is gone). */
  async function removed(names: string[]): Promise<string[]> {
    for (let i = 0; i < 500 && namespaces().some((x) => names.includes(x)); i++) await Bun.sleep(20);
    return namespaces().filter((x) => names.includes(x));
  }

  const endings: { how: string; mode: string; signal?: NodeJS.Signals }[] = [
    { how: "process.exit", mode: "exit" },
    { how: "an uncaught error", mode: "throw" },
    { how: "SIGTERM", mode: "wait", signal: "SIGTERM" },
    { how: "SIGINT", mode: "wait", signal: "SIGINT" },
    { how: "SIGKILL", mode: "wait", signal: "SIGKILL" },
  ];
  for (const { how, mode, signal } of endings) {
    test(`a script that ends by ${how} leaves no namespace and no process behind`, async () => {
      const info = await leaveEarly([exitFixture, mode], signal);
      expect(await removed(info.namespaces)).toEqual([]);
      expect(await gone(info.sleeper)).toBe(true);
    });
  }

  test("a bun test run that never calls destroy leaves no namespace and no process behind", async () => {
    const info = await leaveEarly(["test", `./${relative(root, suiteFixture)}`]);
    expect(await removed(info.namespaces)).toEqual([]);
    expect(await gone(info.sleeper)).toBe(true);
  });
});
