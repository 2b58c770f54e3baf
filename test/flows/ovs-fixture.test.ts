/**
 * The private Open vSwitch fixture (test/fixtures/ovs.ts) itself: it programs a real switch,
 * carries a veth as a port of a userspace-datapath bridge, runs beside another one, and leaves
 * nothing behind.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { eventually } from "../helpers/eventually.ts";
import { ipSync } from "../helpers/netns.ts";
import { type Ovs, ovsMissing, startOvs } from "../fixtures/ovs.ts";

const missing = ovsMissing();
if (missing !== null) console.warn(`skipping the OVS fixture tests: ${missing}`);

/** Start-up of two daemons plus a bridge takes ~1.5 s here, several times that on a loaded machine. */
const OVS_TEST_TIMEOUT_MS = 60_000;

function pidOf(ovs: Ovs, daemon: string): number {
  return Number(readFileSync(`${ovs.dir}/${daemon}.pid`, "utf8").trim());
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

function namespaces(): string[] {
  return ipSync(["netns", "list"]).stdout.split("\n").map((line) => line.split(" ")[0] ?? "");
}

describe.if(missing === null)("the private OVS fixture", () => {
  test(
    "installs and dumps a flow on a netdev bridge, then stop() leaves no process, namespace or dir",
    async () => {
      const ovs = await startOvs();
      const pids = [pidOf(ovs, "ovsdb-server"), pidOf(ovs, "ovs-vswitchd")];
      expect(pids.every(alive)).toBe(true);
      expect(ovs.db).toBe(`unix:${ovs.dir}/db.sock`);
      expect(ovs.env.OVS_RUNDIR).toBe(ovs.dir);

      await ovs.addBridge("br0");
      expect((await ovs.vsctl("list-br")).trim()).toBe("br0");
      expect((await ovs.vsctl("get", "Bridge", "br0", "datapath_type")).trim()).toBe("netdev");
      await ovs.ofctl("add-flow", "br0", "cookie=0x5,priority=123,ip,nw_dst=10.9.0.2,actions=drop");
      const flows = await ovs.ofctl("dump-flows", "br0");
      expect(flows).toContain("cookie=0x5");
      expect(flows).toContain("priority=123,ip,nw_dst=10.9.0.2 actions=drop");

      await ovs.stop();
      await ovs.stop(); // idempotent
      expect(pids.filter(alive)).toEqual([]);
      expect(existsSync(ovs.dir)).toBe(false);
      expect(namespaces()).not.toContain(ovs.netns);
    },
    OVS_TEST_TIMEOUT_MS,
  );

  test(
    "a veth end in the fixture's namespace becomes a port of the netdev bridge with an ofport",
    async () => {
      await using ovs = await startOvs();
      await ovs.addBridge("br0");
      await ovs.ip("link", "add", "vA", "type", "veth", "peer", "name", "vB");
      await ovs.ip("link", "set", "vA", "up");
      await ovs.ip("link", "set", "vB", "up");
      // Without --no-wait, ovs-vsctl returns once ovs-vswitchd has opened the port.
      await ovs.vsctl("add-port", "br0", "vA");
      expect((await ovs.vsctl("list-ports", "br0")).trim()).toBe("vA");
      expect(Number((await ovs.vsctl("get", "Interface", "vA", "ofport")).trim())).toBeGreaterThan(0);
      expect((await ovs.vsctl("get", "Interface", "vA", "error")).trim()).toBe("[]");
      expect(await ovs.ofctl("show", "br0")).toMatch(/\d+\(vA\): addr:/);
      // Nothing of it in the root namespace.
      expect(ipSync(["link", "show", "vA"]).code).not.toBe(0);

      // An end made in the root namespace and moved in works the same.
      expect(ipSync(["link", "add", "stoaMvA", "type", "veth", "peer", "name", "stoaMvB"]).code).toBe(0);
      try {
        expect(ipSync(["link", "set", "stoaMvA", "netns", ovs.netns]).code).toBe(0);
        await ovs.ip("link", "set", "stoaMvA", "up");
        await ovs.vsctl("add-port", "br0", "stoaMvA");
        expect(Number((await ovs.vsctl("get", "Interface", "stoaMvA", "ofport")).trim())).toBeGreaterThan(0);
      } finally {
        ipSync(["link", "del", "stoaMvB"]); // takes its peer with it
      }
    },
    OVS_TEST_TIMEOUT_MS,
  );

  test(
    "two fixtures run at once, each with its own br0",
    async () => {
      const [one, two] = await Promise.all([startOvs(), startOvs()]);
      try {
        await Promise.all([one.addBridge("br0"), two.addBridge("br0")]);
        await one.ofctl("add-flow", "br0", "priority=7,actions=drop");
        await two.ofctl("add-flow", "br0", "priority=8,actions=drop");
        const [flowsOne, flowsTwo] = await Promise.all([one.ofctl("dump-flows", "br0"), two.ofctl("dump-flows", "br0")]);
        expect(flowsOne).toContain("priority=7");
        expect(flowsOne).not.toContain("priority=8");
        expect(flowsTwo).toContain("priority=8");
        expect(flowsTwo).not.toContain("priority=7");
      } finally {
        await Promise.all([one.stop(), two.stop()]);
      }
      expect(existsSync(one.dir) || existsSync(two.dir)).toBe(false);
    },
    OVS_TEST_TIMEOUT_MS,
  );

  test(
    "a test process killed with its OVS running leaves nothing: the reaper removes daemons, namespace and dir",
    async () => {
      const script = `
        import { startOvs } from ${JSON.stringify(`${import.meta.dir}/../fixtures/ovs.ts`)};
        const ovs = await startOvs();
        await ovs.addBridge("br0");
        const pids = ["ovsdb-server", "ovs-vswitchd"].map((d) => require("node:fs").readFileSync(ovs.dir + "/" + d + ".pid", "utf8").trim());
        console.log(JSON.stringify({ dir: ovs.dir, netns: ovs.netns, pids: pids.map(Number) }));
        process.kill(process.pid, "SIGKILL");
      `;
      const proc = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
      const [stdout, stderr] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
      expect(proc.signalCode).toBe("SIGKILL");
      const left = JSON.parse(stdout.trim() || JSON.stringify({ error: stderr })) as { dir: string; netns: string; pids: number[] };
      expect(left.pids).toHaveLength(2);
      await eventually("the killed run's OVS gone", () => left.pids.every((pid) => !alive(pid)) && !existsSync(left.dir) && !namespaces().includes(left.netns), {
        timeoutMs: 20_000,
      });
    },
    OVS_TEST_TIMEOUT_MS,
  );

  test(
    "ovsdb-server restarts on the same database and ovs-vswitchd follows",
    async () => {
      await using ovs = await startOvs();
      await ovs.addBridge("br0");
      await ovs.stopDb();
      await expect(ovs.vsctl("--no-wait", "list-br")).rejects.toThrow(/db\.sock/);
      await ovs.startDb();
      expect((await ovs.vsctl("list-br")).trim()).toBe("br0");
      await ovs.addBridge("br1"); // waits for ovs-vswitchd: it reconnected
      expect((await ovs.vsctl("list-br")).trim().split("\n")).toEqual(["br0", "br1"]);
    },
    OVS_TEST_TIMEOUT_MS,
  );
});
