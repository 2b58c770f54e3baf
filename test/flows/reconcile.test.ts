/**
 * The reconcile engine of `stoa flows serve` (reconcile.ts `Reconciler`) on a real private OVS
 * (test/fixtures/ovs.ts): it plans against its memory of each bridge — a no-op sends nothing and
 * dumps nothing, one service's change sends its two mods — kept true by a flow monitor per bridge:
 * a flow of stoa's deleted or modified by hand is put back by the next reconcile without a dump,
 * a foreign flow added at one of its places (now or to come) fails the next reconcile as a
 * conflict and stays. It dumps on the first reconcile, after `forget()` (the server's periodic
 * verify), after a failed reconcile, after its monitor died (started again) and after OVSDB
 * reconnects; closing it ends its monitors. Each test waits for the monitor's report of a change
 * (`engine.updates`), never for a time. The ports come from its OVSDB monitor. */
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { dumpFlows } from "../../src/flows/ofctl.ts";
import { cookieKind, parseState, type State } from "../../src/flows/model.ts";
import { OvsdbClient } from "../../src/flows/ovsdb.ts";
import { Reconciler } from "../../src/flows/reconcile.ts";
import { eventually } from "../helpers/eventually.ts";
import { type Ovs, ovsMissing, startOvs } from "../fixtures/ovs.ts";

const missing = ovsMissing();
if (missing !== null) console.warn(`skipping the reconcile engine tests: ${missing}`);

/** Starting the private OVS takes ~0.3 s here, several times that on a loaded machine. */
const OVS_TEST_TIMEOUT_MS = 60_000;

function makeState(port: number): State {
  return parseState(
    {
      node: "n1",
      bridges: [{ name: "br0", datapath_type: "netdev" }],
      containers: [
        { container_id: "c1", veth: "p1", bridge: "br0", ipv4_address: "10.0.0.1/24", services: [{ name: "web", protocol: "tcp", port }] },
        { container_id: "c2", veth: "p2", bridge: "br0", ipv4_address: "10.0.0.2/24", services: [{ name: "dns", protocol: "udp", port: 53 }] },
      ],
    },
    "test",
  );
}

describe.if(missing === null)("the reconcile engine", () => {
  let ovs: Ovs;
  let ovsdb: OvsdbClient;
  let engine: Reconciler;
  const reconnects: boolean[] = [];
  const stoaFlows = async () => (await dumpFlows("br0", { cookie: 0n, mask: 0n, env: ovs.env })).filter((f) => cookieKind(f.cookie) !== null);

  beforeAll(async () => {
    ovs = await startOvs();
    await ovs.addBridge("br0");
    await ovs.vsctl("add-port", "br0", "p1", "--", "set", "Interface", "p1", "type=patch", "options:peer=p2", "--", "add-port", "br0", "p2", "--", "set", "Interface", "p2", "type=patch", "options:peer=p1");
    ovsdb = await OvsdbClient.connect(ovs.db);
    engine = await Reconciler.start({ ovsdb, env: ovs.env, onPorts: (_, reconnected) => reconnects.push(reconnected) });
    await eventually("p1 and p2 numbered in the engine's ports", () => ((engine.ports.get("p1")?.ofport ?? 0) > 0 && (engine.ports.get("p2")?.ofport ?? 0) > 0) || undefined);
  }, OVS_TEST_TIMEOUT_MS);

  afterAll(async () => {
    await engine?.close();
    ovsdb?.close();
    await ovs?.stop();
  });

  test("first reconcile dumps and adds; the same state again sends and dumps nothing; one change sends two mods; a verify finds what it remembers", async () => {
    const first = await engine.apply(makeState(80));
    expect(first.changes).toBe(5); // 2 per container, the table-1 default
    const dumps = engine.dumps;
    expect(dumps).toBeGreaterThan(0);
    expect((await stoaFlows()).length).toBe(5);

    expect((await engine.apply(makeState(80))).changes).toBe(0);
    const change = await engine.apply(makeState(8080));
    expect([change.changes, change.bridges[0]!.deletes, change.bridges[0]!.adds]).toEqual([2, 1, 1]);
    expect(engine.dumps).toBe(dumps);
    expect((await stoaFlows()).some((f) => f.match === "tcp,nw_dst=10.0.0.1,tp_dst=8080")).toBe(true);

    engine.forget();
    expect((await engine.apply(makeState(8080))).changes).toBe(0);
    expect(engine.dumps).toBe(dumps + 1);
  }, OVS_TEST_TIMEOUT_MS);

  /** Resolves once the engine's flow monitor has reported `n` more messages than when called: wait on that, never on a time. */
  const updatesAfter = (n = 1) => {
    const before = engine.updates;
    return () => eventually(`${n} flow update(s) from the monitor`, () => engine.updates >= before + n || undefined);
  };

  test("a flow of stoa's deleted or modified by hand is put back by the next reconcile, without a dump", async () => {
    await engine.apply(makeState(80));
    const p1 = engine.ports.get("p1")!.ofport;
    const dumps = engine.dumps;
    let seen = updatesAfter();
    await ovs.ofctl("--strict", "del-flows", "br0", `table=0,priority=90,in_port=${p1}`);
    await seen();
    const readded = await engine.apply(makeState(80));
    expect([readded.changes, readded.bridges[0]!.adds]).toEqual([1, 1]);
    expect(readded.bridges[0]!.mods[0]).toContain(`in_port=${p1}`);

    // With its cookie as a match (/-1): a modify without one would give the flow cookie 0 (OpenFlow 1.0), a foreign flow.
    const cookie = (await stoaFlows()).find((f) => f.match === `in_port=${p1}`)!.cookie;
    seen = updatesAfter();
    await ovs.ofctl("--strict", "mod-flows", "br0", `cookie=0x${cookie.toString(16)}/-1,table=0,priority=90,in_port=${p1},actions=drop`);
    await seen();
    const restored = await engine.apply(makeState(80));
    expect([restored.changes, restored.bridges[0]!.modifies]).toEqual([1, 1]);
    expect((await stoaFlows()).find((f) => f.match === `in_port=${p1}`)?.actions).toBe("resubmit(,1)");
    expect((await engine.apply(makeState(80))).changes).toBe(0);
    expect(engine.dumps).toBe(dumps); // the memory followed the monitor: no verify, no dump
  }, OVS_TEST_TIMEOUT_MS);

  test("a foreign flow added where a later reconcile would add one fails that reconcile at once, and stays", async () => {
    await engine.apply(makeState(80));
    const dumps = engine.dumps;
    const seen = updatesAfter();
    // The place of c1's service flow once its port becomes 8080.
    await ovs.ofctl("add-flow", "br0", "cookie=0x98,table=0,priority=100,tcp,nw_dst=10.0.0.1,tp_dst=8080,actions=drop");
    await seen();
    await expect(engine.apply(makeState(8080))).rejects.toThrow(/would replace a flow stoa does not own \(cookie 0x98/);
    expect(engine.dumps).toBe(dumps + 1); // the event made it dump that bridge: no forget(), no verify
    const foreign = await dumpFlows("br0", { cookie: 0x98n, mask: 0xffff_ffff_ffff_ffffn, env: ovs.env });
    expect(foreign.map((f) => [f.priority, f.match, f.actions])).toEqual([[100, "tcp,nw_dst=10.0.0.1,tp_dst=8080", "drop"]]);

    await ovs.ofctl("--strict", "del-flows", "br0", "cookie=0x98/-1,table=0,priority=100,tcp,nw_dst=10.0.0.1,tp_dst=8080");
    expect((await engine.apply(makeState(8080))).changes).toBe(2);
    expect((await engine.apply(makeState(80))).changes).toBe(2);
  }, OVS_TEST_TIMEOUT_MS);

  test("a foreign flow written over one of stoa's fails every reconcile until removed", async () => {
    await engine.apply(makeState(80));
    const p1 = engine.ports.get("p1")!.ofport;
    const seen = updatesAfter();
    // OVS identifies a flow by its place: this replaces stoa's.
    await ovs.ofctl("add-flow", "br0", `cookie=0x99,table=0,priority=90,in_port=${p1},actions=drop`);
    await seen();
    await expect(engine.apply(makeState(80))).rejects.toThrow(/would replace a flow stoa does not own \(cookie 0x99/);
    const dumps = engine.dumps;
    await expect(engine.apply(makeState(80))).rejects.toThrow(/would replace a flow stoa does not own/); // a failure forgot: it dumps again
    expect(engine.dumps).toBe(dumps + 1);
    expect((await dumpFlows("br0", { cookie: 0x99n, mask: 0xffff_ffff_ffff_ffffn, env: ovs.env })).length).toBe(1); // still there

    await ovs.ofctl("--strict", "del-flows", "br0", `cookie=0x99/-1,table=0,priority=90,in_port=${p1}`);
    expect((await engine.apply(makeState(80))).changes).toBe(1);
    expect((await engine.apply(makeState(80))).changes).toBe(0);
  }, OVS_TEST_TIMEOUT_MS);

  test("a flow monitor that dies is started again and its bridge dumped", async () => {
    await engine.apply(makeState(80));
    const pid = engine.monitorPids.get("br0")!;
    const starts = engine.monitorStarts;
    const dumps = engine.dumps;
    process.kill(pid, "SIGKILL");
    await eventually("the engine saw its monitor die", () => !engine.monitorPids.has("br0") || undefined);
    expect((await engine.apply(makeState(80))).changes).toBe(0);
    expect(engine.dumps).toBe(dumps + 1);
    expect(engine.monitorStarts).toBe(starts + 1);
    const again = engine.monitorPids.get("br0")!;
    expect(again).not.toBe(pid);
    expect(existsSync(`/proc/${again}`)).toBe(true);
    // Watched again: a hand deletion is followed without a dump.
    const seen = updatesAfter();
    await ovs.ofctl("--strict", "del-flows", "br0", "table=1,priority=0");
    await seen();
    expect((await engine.apply(makeState(80))).changes).toBe(1);
    expect(engine.dumps).toBe(dumps + 1);
  }, OVS_TEST_TIMEOUT_MS);

  test("closing the engine ends its flow monitors", async () => {
    const other = await Reconciler.start({ ovsdb, env: ovs.env });
    await other.apply(makeState(80));
    const pid = other.monitorPids.get("br0")!;
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    await other.close();
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(other.monitorPids.size).toBe(0);
  }, OVS_TEST_TIMEOUT_MS);

  test("ports follow the monitor; after ovsdb-server restarts the engine has forgotten and dumps", async () => {
    await engine.apply(makeState(80));
    await ovs.vsctl("add-port", "br0", "p3", "--", "set", "Interface", "p3", "type=patch", "options:peer=p1");
    const p3 = await eventually("p3 in the engine's ports", () => engine.ports.get("p3"));
    expect(p3.bridge).toBe("br0");
    await ovs.vsctl("del-port", "br0", "p3");
    await eventually("p3 gone from the engine's ports", () => (engine.ports.has("p3") ? undefined : true));

    const dumps = engine.dumps;
    expect((await engine.apply(makeState(80))).changes).toBe(0);
    expect(engine.dumps).toBe(dumps);
    await ovs.stopDb();
    await ovs.startDb();
    await eventually("the monitor back after the reconnect", () => (reconnects.includes(true) ? true : undefined), { timeoutMs: 15_000 });
    expect((await engine.apply(makeState(80))).changes).toBe(0);
    expect(engine.dumps).toBe(dumps + 1);
  }, OVS_TEST_TIMEOUT_MS);
});
