/**
 * The ladder's handover (sessions.ts `Incoming.accept`, `Outgoing.#adopt`): a receiver whose TLS
 * offer is not answered within ICE_AFTER_TLS_MS offers ICE too, the session goes on ICE, and
 * when the TLS dial connects after all it takes the session over — mid-stream, nothing lost or
 * duplicated. Three namespaces: the relay in s; alice in a and bob in b, each linked to s and to
 * each other. In b, iptables drops TCP SYNs from a's link, so alice's TLS dial to bob waits; the drop
 * is lifted once the session is on ICE and the stream flows, and the dial's SYN retransmission
 * (1 s after the first, within its 1.5 s timeout) connects.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NetProcs, type Proc, requireBinary } from "../fixtures/e2e-helpers.ts";
import { canUseNatLab, findIptables } from "../fixtures/nat-lab.ts";
import { APP_DEADLINE_MS, type AppResult, TUNNEL_APP } from "../fixtures/tunnel-app-spec.ts";
import { eventually } from "../helpers/eventually.ts";
import { type Net, createNet } from "../helpers/netns.ts";
import { STOA } from "../helpers/stoa.ts";

const can = canUseNatLab(); // namespaces and iptables inside them
if (!can.ok) console.warn(`skipping the hotlink handover test: ${can.reason}`);

const CHANNEL = "alice/hand/over";
const RELAY_PORT = 8470;
const APP_PORT = 10001;
const BYTES = 192 * 1024 * 1024;

describe.if(can.ok)("TLS connecting after ICE takes the session over", () => {
  let net: Net;
  let procs: NetProcs;
  let dir: string;
  const daemons: Proc[] = [];
  /** In b, SYNs arriving on the link from a (not loopback: the applications connect there). */
  const dropSyn = (): string[] => ["INPUT", "-i", net.iface("b", "a"), "-p", "tcp", "--syn", "-j", "DROP"];
  const ipt = async (host: string, args: string[]) => {
    const r = await net.exec(host, [findIptables() ?? "iptables", "-w", "5", ...args]);
    if (r.code !== 0) throw new Error(`iptables ${args.join(" ")} in ${host}: ${r.stderr}`);
  };

  beforeAll(async () => {
    requireBinary();
    net = await createNet({ hosts: ["s", "a", "b"], links: [["a", "s"], ["b", "s"], ["a", "b"]], ipv4: true, ipv6: false });
    procs = new NetProcs(net);
    dir = mkdtempSync("/tmp/e2ho-");
    const users = join(dir, "users.json");
    const tokens: Record<string, string> = {};
    for (const user of ["alice", "bob"]) {
      const run = Bun.spawnSync([STOA, "hotlink", "user", "add", user, "--users", users]);
      if (run.exitCode !== 0) throw new Error(run.stderr.toString());
      tokens[user] = join(dir, `${user}.token`);
      writeFileSync(tokens[user], `${run.stdout.toString().trim().split("\n").at(-1)}\n`);
      chmodSync(tokens[user], 0o600);
    }
    const acl = join(dir, "acl.json");
    writeFileSync(acl, JSON.stringify({ rules: [{ pattern: "alice/hand/**", read: ["bob"], write: ["bob"] }] }));
    const server = procs.stoa("s", "relay", ["hotlink", "serve", "--listen", `0.0.0.0:${RELAY_PORT}`, "--users", users, "--acl", acl]);
    await server.waitFor("out", /^hotlink: ws:/m);
    const daemon = (host: "a" | "b", user: string, peer: string, extra: string[]) =>
      procs.stoa(host, user, [
        "hotlink", "connect", "--server", `ws://${net.addr("s", host, 4)}:${RELAY_PORT}`, "--user", user, "--token-file", tokens[user] ?? "",
        "--run-dir", join(dir, "run"), "--telemetry", join(dir, `${user}.json`), "--tunnel", `${CHANNEL}=127.0.0.1:${APP_PORT}@${peer}`, ...extra,
      ]);
    daemons.push(daemon("a", "alice", "bob", []));
    // bob offers only his address on the a–b link, where SYNs are dropped for now.
    daemons.push(daemon("b", "bob", "alice", ["--direct-listen", "0.0.0.0", "--direct-advertise", net.addr("b", "a", 4)]));
    for (const d of daemons) await d.waitFor("out", /^hotlink: /m, 15_000);
    await ipt("b", ["-I", ...dropSyn()]);
  }, 60_000);

  afterAll(async () => {
    await procs?.stop();
    await net?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const rung = (): string | undefined => {
    const r = Bun.spawnSync([STOA, "hotlink", "ls", "--json", "--user", "alice", "--run-dir", join(dir, "run")]);
    return (JSON.parse(r.stdout.toString()) as { status: { tunnels: { out: { rung: string } | null }[] } }).status.tunnels[0]?.out?.rung;
  };
  const telemetry = (user: string) =>
    JSON.parse(readFileSync(join(dir, `${user}.json`), "utf8")) as { ice: { tx: { bytes: number } }; direct: { tx: { bytes: number }; rx: { bytes: number } } };

  test("ICE first, then TLS mid-stream: the stream arrives whole, both paths carried part of it", async () => {
    const go = join(dir, "go");
    const app = async (host: string, name: string, size: number) => {
      const p = procs.spawn(host, name, [process.execPath, TUNNEL_APP, String(APP_PORT), "random", String(size), go]);
      await p.waitFor("out", /^connected$/m, 10_000);
      return p;
    };
    const bobApp = await app("b", "bob-app", 0);
    const aliceApp = await app("a", "alice-app", BYTES);
    const describeAll = () => daemons.map((d) => d.describe()).join("\n");
    await eventually("alice's session on ICE while her TLS dial waits", () => rung() === "ice", { timeoutMs: 10_000, everyMs: 20 }).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${describeAll()}`);
    });
    writeFileSync(go, ""); // the stream starts on ICE
    // Lifted at once: the dial's SYN is retransmitted 1 s after the first, within its 1.5 s timeout.
    await ipt("b", ["-D", ...dropSyn()]);
    await eventually("alice's session moved to TLS", () => rung() === "tls", { timeoutMs: 10_000, everyMs: 20 }).catch((err: unknown) => {
      throw new Error(`${String(err)}\n${describeAll()}`);
    });
    const result = async (p: Proc): Promise<AppResult> => {
      const code = await p.exitWithin(APP_DEADLINE_MS + 5_000);
      const m = p.out.match(/^result (.+)$/m);
      if (code !== 0 || m === null) throw new Error(`${p.name} failed (exit ${code})\n${p.describe()}\n${describeAll()}`);
      return JSON.parse(m[1] ?? "") as AppResult;
    };
    const [sent, got] = await Promise.all([result(aliceApp), result(bobApp)]);
    expect(got.received).toBe(BYTES);
    expect(got.receivedSha).toBe(sent.sentSha);
    const t = await eventually("alice's telemetry after the transfer", () => {
      const v = telemetry("alice");
      return v.ice.tx.bytes + v.direct.tx.bytes >= BYTES ? v : undefined;
    }, { timeoutMs: 5_000, everyMs: 100 });
    expect(t.ice.tx.bytes).toBeGreaterThan(0);
    expect(t.direct.tx.bytes).toBeGreaterThan(0);
    expect(daemons[0]?.err).toContain("the session moved to a better path");
  }, 90_000);
});
