/**
 * `stoa addr` through the compiled binary, in network namespaces: A and B joined by a veth pair,
 * each with its address of the link's /64. The problem (a listener bound non-locally to a
 * random address of the /64 is unreachable: A does not answer Neighbor Discovery for it), the
 * fix (`stoa addr add ADDR/128 --nodad`), a routed local prefix, gc after a SIGKILLed owner, and
 * every error a user meets, with its exit code.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { randomAddressIn } from "../../src/addr/ipv6.ts";
import { NEEDS_NET_ADMIN } from "../../src/ffi/netlink.ts";
import { requireBinary } from "../fixtures/e2e-helpers.ts";
import { type Net, canUseNetns, createNet } from "../helpers/netns.ts";
import { STOA } from "../helpers/stoa.ts";

const IP = Bun.which("ip") ?? "/usr/sbin/ip";

const can = canUseNetns();
if (!can.ok) console.warn(`skipping stoa addr namespace tests: ${can.reason}`);

const OWNER = join(import.meta.dir, "..", "fixtures", "addr-owner.ts");
/** A failed Neighbor Discovery ends after 3 solicitations; B sends them 100 ms apart (not 1 s). */
const UNREACHABLE_PROBE_MS = 2_000;

interface Listed {
  addresses: { addr: string; prefixlen: number; dev: string; flags: string[]; owner: { pid: number | null; alive: boolean } | null }[];
  prefixes: { prefix: string; dev: string }[];
}

/** Two hosts a–b; B gives up on Neighbor Discovery quickly; a run dir for stoa's records. */
async function twoHosts(): Promise<{ net: Net; runDir: string; stoa: (host: string, args: string[]) => ReturnType<Net["exec"]> }> {
  const net = await createNet({ hosts: ["a", "b"], links: [["a", "b"]] });
  await net.sysctl("b", `net.ipv6.neigh.${net.iface("b", "a")}.retrans_time_ms`, "100");
  const runDir = mkdtempSync("/tmp/e2a-");
  return { net, runDir, stoa: (host, args) => net.exec(host, [STOA, ...args]) };
}

function randomUla64(): string {
  const h = () => Math.floor(Math.random() * 0x10000).toString(16);
  return `fd${Math.floor(Math.random() * 256).toString(16).padStart(2, "0")}:${h()}:${h()}:${h()}::/64`;
}

describe.if(can.ok)("a /128 with nodad makes a non-locally bound listener reachable", () => {
  let env: Awaited<ReturnType<typeof twoHosts>>;
  let addr = "";
  let port = 0;

  beforeAll(async () => {
    requireBinary();
    env = await twoHosts();
    await env.net.sysctl("a", "net.ipv6.ip_nonlocal_bind", "1");
    addr = randomAddressIn(env.net.prefix("a", "b"));
    ({ port } = await env.net.listenTcp("a", addr));
  }, 30_000);

  afterAll(async () => {
    await env?.net.destroy();
    if (env) rmSync(env.runDir, { recursive: true, force: true });
  });

  test("without it, B cannot reach the listener: A does not answer Neighbor Discovery for the address", async () => {
    const probe = await env.net.probeTcp("b", addr, port, UNREACHABLE_PROBE_MS);
    expect(probe.ok).toBe(false);
  }, 15_000);

  test("stoa addr add ADDR/128 --nodad on A's interface: B connects at once", async () => {
    const dev = env.net.iface("a", "b");
    const r = await env.stoa("a", ["addr", "add", `${addr}/128`, "--dev", dev, "--nodad", "--run-dir", env.runDir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`added ${addr}/128 on ${dev} (nodad)\n`);
    expect(await env.net.probeTcp("b", addr, port)).toEqual({ ok: true, line: "hello a" });
  }, 15_000);

  test("ls --json lists it as stoa's, with nodad; --dev filters; --owned keeps only stoa's", async () => {
    const dev = env.net.iface("a", "b");
    const all = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--run-dir", env.runDir])).stdout) as Listed;
    const mine = all.addresses.find((a) => a.addr === addr);
    expect(mine).toMatchObject({ prefixlen: 128, dev, owner: { pid: null, alive: true } });
    expect(mine?.flags).toContain("nodad");
    expect(all.addresses.some((a) => a.dev === "lo")).toBe(true);
    const onDev = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--dev", dev, "--run-dir", env.runDir])).stdout) as Listed;
    expect(onDev.addresses.every((a) => a.dev === dev)).toBe(true);
    expect(onDev.addresses.map((a) => a.addr)).toContain(addr);
    const onLo = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--dev", "lo", "--run-dir", env.runDir])).stdout) as Listed;
    expect(onLo.addresses.map((a) => a.addr)).not.toContain(addr);
    const owned = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--owned", "--run-dir", env.runDir])).stdout) as Listed;
    expect(owned.addresses.map((a) => a.addr)).toEqual([addr]);
    const text = await env.stoa("a", ["addr", "ls", "--run-dir", env.runDir]);
    expect(text.stdout).toMatch(new RegExp(`^${addr}/128\\s+${dev}\\s+global\\s+\\S*nodad\\S*\\s+stoa$`, "m"));
  }, 15_000);

  test("stoa addr del takes it away: B cannot reach the listener again", async () => {
    const dev = env.net.iface("a", "b");
    const r = await env.stoa("a", ["addr", "del", `${addr}/128`, "--dev", dev, "--run-dir", env.runDir]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const probe = await env.net.probeTcp("b", addr, port, UNREACHABLE_PROBE_MS);
    expect(probe.ok).toBe(false);
    const listed = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--run-dir", env.runDir])).stdout) as Listed;
    expect(listed.addresses.map((a) => a.addr)).not.toContain(addr);
  }, 15_000);
});

describe.if(can.ok)("a routed local prefix makes every address in it A's own", () => {
  let env: Awaited<ReturnType<typeof twoHosts>>;
  const prefix = randomUla64();

  beforeAll(async () => {
    requireBinary();
    env = await twoHosts();
    await env.net.route("b", prefix, "a");
  }, 30_000);

  afterAll(async () => {
    await env?.net.destroy();
    if (env) rmSync(env.runDir, { recursive: true, force: true });
  });

  test("prefix add: a wildcard listener in A answers on any address of the prefix, from B", async () => {
    const { port } = await env.net.listenTcp("a", "::", 0, "any");
    const addr = randomAddressIn(prefix);
    expect((await env.net.probeTcp("b", addr, port, UNREACHABLE_PROBE_MS)).ok).toBe(false);
    const r = await env.stoa("a", ["addr", "prefix", "add", prefix]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`added local prefix ${prefix} on lo\n`);
    for (const other of [addr, randomAddressIn(prefix), randomAddressIn(prefix)]) {
      expect(await env.net.probeTcp("b", other, port)).toEqual({ ok: true, line: "hello any" });
    }
  }, 20_000);

  test("a listener on one address of the prefix needs ip_nonlocal_bind (IPv6 bind checks addresses, not local routes)", async () => {
    const addr = randomAddressIn(prefix);
    await expect(env.net.listenTcp("a", addr)).rejects.toThrow(/EADDRNOTAVAIL|did not start/);
    await env.net.sysctl("a", "net.ipv6.ip_nonlocal_bind", "1");
    const { port } = await env.net.listenTcp("a", addr, 0, "one");
    expect(await env.net.probeTcp("b", addr, port)).toEqual({ ok: true, line: "hello one" });
  }, 20_000);

  test("ls shows the prefix as stoa's, with a second add refused", async () => {
    const listed = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--run-dir", env.runDir])).stdout) as Listed;
    expect(listed.prefixes).toEqual([{ prefix, dev: "lo" }]);
    const again = await env.stoa("a", ["addr", "prefix", "add", prefix]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`stoa addr prefix add: cannot add local route ${prefix} on lo: it already exists\n`);
  }, 15_000);

  test("prefix del removes it: unreachable again, gone from ls, a second del is an error", async () => {
    const { port } = await env.net.listenTcp("a", "::", 0, "any2");
    const r = await env.stoa("a", ["addr", "prefix", "del", prefix]);
    expect(r.code).toBe(0);
    expect((await env.net.probeTcp("b", randomAddressIn(prefix), port, UNREACHABLE_PROBE_MS)).ok).toBe(false);
    const listed = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--run-dir", env.runDir])).stdout) as Listed;
    expect(listed.prefixes).toEqual([]);
    const again = await env.stoa("a", ["addr", "prefix", "del", prefix]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`stoa addr prefix del: no local route for ${prefix} that stoa added (see 'stoa addr ls')\n`);
  }, 15_000);

  test("prefix del never touches a local route stoa did not add", async () => {
    const other = randomUla64();
    const ip = await env.net.exec("a", [IP, "-6", "route", "add", "local", other, "dev", "lo"]);
    expect(ip.code).toBe(0);
    const r = await env.stoa("a", ["addr", "prefix", "del", other]);
    expect(r.code).toBe(1);
    const routes = await env.net.exec("a", [IP, "-6", "route", "show", "table", "local", other]);
    expect(routes.stdout).toContain(other.replace("/64", ""));
  }, 15_000);
});

describe.if(can.ok)("gc deletes the addresses of dead owners", () => {
  let env: Awaited<ReturnType<typeof twoHosts>>;
  let dev = "";

  beforeAll(async () => {
    requireBinary();
    env = await twoHosts();
    dev = env.net.iface("a", "b");
  }, 30_000);

  afterAll(async () => {
    await env?.net.destroy();
    if (env) rmSync(env.runDir, { recursive: true, force: true });
  });

  async function owner(): Promise<{ proc: ReturnType<Net["spawn"]>; addr: string }> {
    const proc = env.net.spawn("a", [process.execPath, OWNER, env.net.prefix("a", "b"), dev, env.runDir], { stdout: "pipe", stderr: "pipe" });
    const reader = proc.stdout.getReader();
    let seen = "";
    while (!seen.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`owner did not start: ${await new Response(proc.stderr).text()}`);
      seen += new TextDecoder().decode(value);
    }
    reader.releaseLock();
    const addr = /^ready (\S+)/.exec(seen)?.[1];
    if (!addr) throw new Error(`owner said ${seen}`);
    return { proc, addr };
  }

  const listed = async () => JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--owned", "--run-dir", env.runDir])).stdout) as Listed;

  test("after a SIGKILL, gc removes the address and reports it; a live owner's address stays", async () => {
    const dead = await owner();
    const live = await owner();
    const before = await listed();
    expect(before.addresses.find((a) => a.addr === dead.addr)?.owner).toEqual(expect.objectContaining({ pid: dead.proc.pid, alive: true }));
    // The owner's address answers from B while it lives.
    const { port } = await env.net.listenTcp("a", "::", 0, "gc");
    expect(await env.net.probeTcp("b", dead.addr, port)).toEqual({ ok: true, line: "hello gc" });

    dead.proc.kill("SIGKILL");
    await dead.proc.exited;
    expect((await listed()).addresses.find((a) => a.addr === dead.addr)?.owner?.alive).toBe(false);

    const gc = await env.stoa("a", ["addr", "gc", "--run-dir", env.runDir]);
    expect(gc.code).toBe(0);
    expect(gc.stdout).toBe(`removed ${dead.addr}/128 from ${dev} (owner pid ${dead.proc.pid} is gone)\ngc: 1 removed, 0 forgotten, 1 kept\n`);
    const after = await listed();
    expect(after.addresses.map((a) => a.addr)).toEqual([live.addr]);
    const json = await env.stoa("a", ["addr", "gc", "--json", "--run-dir", env.runDir]);
    expect(JSON.parse(json.stdout)).toEqual({ removed: [], dropped: [], kept: 1 });

    // SIGTERM: the owner removes its own address.
    live.proc.kill("SIGTERM");
    expect(await live.proc.exited).toBe(0);
    expect((await listed()).addresses).toEqual([]);
  }, 30_000);

  test("gc forgets a record whose address someone else deleted, and keeps addresses added without an owner", async () => {
    const gone = await owner();
    const manual = randomAddressIn(env.net.prefix("a", "b"));
    expect((await env.stoa("a", ["addr", "add", `${manual}/128`, "--dev", dev, "--nodad", "--run-dir", env.runDir])).code).toBe(0);
    expect((await env.net.exec("a", [IP, "-6", "addr", "del", `${gone.addr}/128`, "dev", dev])).code).toBe(0);
    gone.proc.kill("SIGKILL");
    await gone.proc.exited;
    const gc = JSON.parse((await env.stoa("a", ["addr", "gc", "--json", "--run-dir", env.runDir])).stdout) as unknown;
    expect(gc).toEqual({ removed: [], dropped: [{ addr: gone.addr, dev, reason: "address already gone" }], kept: 1 });
    expect((await listed()).addresses.map((a) => a.addr)).toEqual([manual]);
  }, 30_000);

  test("an address added with --owner PID of a live process is kept", async () => {
    const manual = randomAddressIn(env.net.prefix("a", "b"));
    const add = await env.stoa("a", ["addr", "add", `${manual}/128`, "--dev", dev, "--nodad", "--owner", String(process.pid), "--run-dir", env.runDir]);
    expect(add.code).toBe(0);
    const gc = JSON.parse((await env.stoa("a", ["addr", "gc", "--json", "--run-dir", env.runDir])).stdout) as { kept: number };
    expect(gc.kept).toBe(2);
    expect((await env.stoa("a", ["addr", "del", `${manual}/128`, "--dev", dev, "--run-dir", env.runDir])).code).toBe(0);
  }, 15_000);
});

describe.if(can.ok)("errors: one clear line, exit 1 for the kernel's, 2 for usage", () => {
  let env: Awaited<ReturnType<typeof twoHosts>>;
  let dev = "";
  const setpriv = Bun.which("setpriv") ?? "/usr/bin/setpriv";

  beforeAll(async () => {
    requireBinary();
    env = await twoHosts();
    dev = env.net.iface("a", "b");
    chmodSync(env.runDir, 0o777);
  }, 30_000);

  afterAll(async () => {
    await env?.net.destroy();
    if (env) rmSync(env.runDir, { recursive: true, force: true });
  });

  /** Commands that record (not `prefix`) get this describe's run dir. */
  const run = (args: string[]) => env.stoa("a", args[1] === "prefix" ? args : [...args, "--run-dir", env.runDir]);
  const asNobody = (args: string[]) =>
    env.net.exec("a", [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", STOA, ...args], { env: { PATH: process.env.PATH ?? "/usr/bin:/bin" } });

  test("without CAP_NET_ADMIN (as nobody): add, del and prefix add say how to get it", async () => {
    const addr = randomAddressIn(env.net.prefix("a", "b"));
    for (const args of [
      ["addr", "add", `${addr}/128`, "--dev", dev, "--nodad", "--run-dir", env.runDir],
      ["addr", "del", `${env.net.addr("a", "b")}/128`, "--dev", dev, "--run-dir", env.runDir],
      ["addr", "prefix", "add", randomUla64()],
    ]) {
      const r = await asNobody(args);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(NEEDS_NET_ADMIN);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
    // Listing needs no privilege.
    const ls = await asNobody(["addr", "ls", "--json", "--run-dir", env.runDir]);
    expect(ls.code).toBe(0);
  }, 20_000);

  test("no such interface", async () => {
    const r = await run(["addr", "add", `${randomAddressIn(env.net.prefix("a", "b"))}/128`, "--dev", "nosuch0"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe("stoa addr add: no such interface: nosuch0 (see 'ip link')\n");
    const ls = await run(["addr", "ls", "--dev", "nosuch0"]);
    expect(ls.code).toBe(1);
  }, 15_000);

  test("adding an address twice: it already exists (and the first add's record survives)", async () => {
    const addr = randomAddressIn(env.net.prefix("a", "b"));
    expect((await run(["addr", "add", `${addr}/128`, "--dev", dev, "--nodad"])).code).toBe(0);
    const again = await run(["addr", "add", `${addr}/128`, "--dev", dev, "--nodad"]);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`stoa addr add: cannot add address ${addr}/128 on ${dev}: it already exists\n`);
    const listed = JSON.parse((await run(["addr", "ls", "--json", "--owned"])).stdout) as Listed;
    expect(listed.addresses.map((a) => a.addr)).toContain(addr);
    expect((await run(["addr", "del", `${addr}/128`, "--dev", dev])).code).toBe(0);
  }, 15_000);

  test("deleting an address that is not there", async () => {
    const addr = randomAddressIn(env.net.prefix("a", "b"));
    const r = await run(["addr", "del", `${addr}/128`, "--dev", dev]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`stoa addr del: address ${addr}/128 is not on ${dev} (see 'stoa addr ls')\n`);
  }, 15_000);

  test("usage errors exit 2 with the fix in the message", async () => {
    const cases: [string[], RegExp][] = [
      [["addr", "add", "fd00::1", "--dev", dev], /needs a prefix length, e\.g\. fd00:1:2:3::10\/128/],
      [["addr", "add", "fd00::1/64", "--dev", dev], /write it as fd00::1\/128/],
      [["addr", "add", "fd00::zz/128", "--dev", dev], /is not an IPv6 address/],
      [["addr", "add", "fd00::1/128"], /--dev is required/],
      [["addr", "add", "fd00::1/128", "--dev", "an-interface-name-too-long"], /invalid interface name/],
      [["addr", "del", "10.0.0.1/32", "--dev", dev], /is not an IPv6 address/],
      [["addr", "add", "fd00::1/128", "--dev", dev, "--owner", "abc"], /invalid --owner/],
      [["addr", "prefix", "add", "fd00:99::1/64"], /did you mean fd00:99::\/64\?/],
      [["addr", "prefix", "add", "::/0"], /a \/0 would take every IPv6 address/],
      [["addr", "nope"], /unknown command 'nope'/],
      [["addr", "add"], /missing <ADDR\/128>/],
    ];
    for (const [args, message] of cases) {
      const r = await run(args);
      expect({ args, code: r.code }).toEqual({ args, code: 2 });
      expect(r.stderr).toMatch(message);
      expect(r.stderr.trim().split("\n")).toHaveLength(1);
    }
  }, 30_000);
});

describe.if(can.ok)("many addresses", () => {
  let env: Awaited<ReturnType<typeof twoHosts>>;

  beforeAll(async () => {
    requireBinary();
    env = await twoHosts();
  }, 30_000);

  afterAll(async () => {
    await env?.net.destroy();
    if (env) rmSync(env.runDir, { recursive: true, force: true });
  });

  test("ls reads a dump that spans many datagrams (3,000 addresses)", async () => {
    const dev = env.net.iface("a", "b");
    const base = env.net.prefix("a", "b").replace("::/64", "");
    const batch = Array.from({ length: 3000 }, (_, i) => `addr add ${base}::1:${(i + 1).toString(16)}/128 dev ${dev} nodad`).join("\n");
    const ip = await env.net.exec("a", [IP, "-batch", "-"], { stdin: `${batch}\n`, timeoutMs: 60_000 });
    expect(ip.code).toBe(0);
    const listed = JSON.parse((await env.stoa("a", ["addr", "ls", "--json", "--dev", dev, "--run-dir", env.runDir])).stdout) as Listed;
    const mine = new Set(listed.addresses.filter((a) => a.prefixlen === 128).map((a) => a.addr));
    expect(mine.size).toBe(3000);
    expect(mine.has(`${base}::1:bb8`)).toBe(true);
  }, 60_000);
});
