/**
 * The OVSDB client (src/flows/ovsdb.ts): against a fake server on a Unix socket for the wire's
 * corners (echo, replies split into single bytes, timeouts, garbage), and against a real private
 * ovsdb-server + ovs-vswitchd (test/fixtures/ovs.ts) for bridges, ports, ofports, the Interface
 * monitor, and ovsdb-server restarting under a live client.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket, UnixSocketListener } from "bun";
import { createLogger } from "../../src/core/log.ts";
import { OvsdbClient, OvsdbError, ovsdbTarget } from "../../src/flows/ovsdb.ts";
import { JsonSplitter } from "../../src/flows/ovsdb-wire.ts";
import { eventually } from "../helpers/eventually.ts";
import { type Ovs, ovsMissing, startOvs } from "../fixtures/ovs.ts";

const missing = ovsMissing();
if (missing !== null) console.warn(`skipping the OVSDB client tests on a real ovsdb-server: ${missing}`);

/** Starting the private OVS takes ~0.3 s here, several times that on a loaded machine. */
const OVS_TEST_TIMEOUT_MS = 60_000;

/** A logger whose lines a test can read. */
function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger({ level: "debug", stream: { write: (line: string) => lines.push(line) } }), lines };
}

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof Error) return err;
    throw new Error(`rejected with a non-Error: ${String(err)}`);
  }
  throw new Error("resolved, but a rejection was expected");
}

/**
 * A stand-in ovsdb-server on a Unix socket: hands each parsed request to `onRequest` with the
 * connection, and records what it was sent.
 */
class FakeServer {
  readonly dir = mkdtempSync(join(tmpdir(), "stoa-ovsdb-fake-"));
  readonly path = join(this.dir, "db.sock");
  readonly received: unknown[] = [];
  readonly connections: Socket<{ splitter: JsonSplitter }>[] = [];
  #listener: UnixSocketListener<{ splitter: JsonSplitter }>;

  constructor(
    onRequest: (sock: Socket<{ splitter: JsonSplitter }>, message: Record<string, unknown>) => void,
    onOpen: (sock: Socket<{ splitter: JsonSplitter }>) => void = () => {},
  ) {
    this.#listener = Bun.listen<{ splitter: JsonSplitter }>({
      unix: this.path,
      socket: {
        open: (sock) => {
          sock.data = { splitter: new JsonSplitter() };
          this.connections.push(sock);
          onOpen(sock);
        },
        data: (sock, chunk) => {
          sock.data.splitter.push(chunk, (message) => {
            this.received.push(message);
            onRequest(sock, message as Record<string, unknown>);
          });
        },
      },
    });
  }

  get target(): string {
    return `unix:${this.path}`;
  }

  /** Stops listening and drops every connection. */
  stop(): void {
    this.#listener.stop(true);
    for (const sock of this.connections) sock.terminate();
  }

  close(): void {
    this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

describe("ovsdbTarget", () => {
  test("defaults to db.sock in OVS_RUNDIR, else in /var/run/openvswitch", () => {
    expect(ovsdbTarget(undefined, { OVS_RUNDIR: "/tmp/ovs" })).toBe("unix:/tmp/ovs/db.sock");
    expect(ovsdbTarget(undefined, {})).toBe("unix:/var/run/openvswitch/db.sock");
    expect(ovsdbTarget("unix:/run/x/db.sock", { OVS_RUNDIR: "/tmp/ovs" })).toBe("unix:/run/x/db.sock");
  });

  test("refuses anything but unix:/absolute/path, saying what to give", () => {
    expect(() => ovsdbTarget("tcp:127.0.0.1:6640")).toThrow(/give ovsdb-server's socket as unix:PATH/);
    expect(() => ovsdbTarget("/var/run/openvswitch/db.sock")).toThrow(/unix:PATH/);
    expect(() => ovsdbTarget("unix:db.sock")).toThrow(/must be absolute/);
    const err = (() => {
      try {
        ovsdbTarget("ssl:x:1");
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(OvsdbError);
    expect((err as OvsdbError).code).toBe("usage");
  });
});

describe("OvsdbClient on the wire (a fake server)", () => {
  test("connecting to a socket nobody serves says ovsdb-server is not running there and what to do", async () => {
    const dir = mkdtempSync(join(tmpdir(), "stoa-ovsdb-none-"));
    try {
      const err = await rejection(OvsdbClient.connect(`unix:${dir}/db.sock`));
      expect(err).toBeInstanceOf(OvsdbError);
      expect(err.message).toContain(`ovsdb-server is not running at ${dir}/db.sock`);
      expect(err.message).toContain("install and start Open vSwitch (apt-get install openvswitch-switch");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("answers the server's echo with the same params and id", async () => {
    const server = new FakeServer(() => {});
    const client = await OvsdbClient.connect(server.target);
    try {
      const sock = await eventually("the client's connection", () => server.connections[0]);
      sock.write(JSON.stringify({ method: "echo", params: ["probe", 1], id: "echo" }));
      const answer = await eventually("the echo reply", () => server.received[0]);
      expect(answer).toEqual({ id: "echo", result: ["probe", 1], error: null });
    } finally {
      client.close();
      server.close();
    }
  });

  test("answers an echo sent the moment the connection opens", async () => {
    const server = new FakeServer(
      () => {},
      (sock) => sock.write(JSON.stringify({ method: "echo", params: [], id: "echo" })),
    );
    const client = await OvsdbClient.connect(server.target);
    try {
      expect(await eventually("the echo reply", () => server.received[0])).toEqual({ id: "echo", result: [], error: null });
    } finally {
      client.close();
      server.close();
    }
  });

  test("a request while ovsdb-server is gone waits for it, then fails at its deadline saying why", async () => {
    const server = new FakeServer(() => {});
    const { log, lines } = capturingLogger();
    const client = await OvsdbClient.connect(server.target, { timeoutMs: 500, log });
    try {
      server.stop();
      await eventually("the client noticing", () => lines.some((l) => l.includes("ovsdb connection lost")));
      const err = await rejection(client.request("list_dbs", []));
      expect(err.message).toMatch(new RegExp(`^could not send list_dbs within 500 ms: ovsdb-server is not running at ${server.path} \\((ENOENT|ECONNREFUSED)\\): install and start Open vSwitch`));
      expect((err as OvsdbError).code).toBe("timeout");
    } finally {
      client.close();
      server.close();
    }
  });

  test("takes a reply written one byte at a time, UTF-8 split across reads included", async () => {
    const server = new FakeServer((sock, message) => {
      const reply = JSON.stringify({ id: message.id, result: ["Open_vSwitch", "vé日🙂"], error: null });
      const data = new TextEncoder().encode(reply);
      void (async () => {
        for (let i = 0; i < data.length; i++) {
          sock.write(data.subarray(i, i + 1));
          await Bun.sleep(0); // a separate read for each byte, as far as the kernel lets it
        }
      })();
    });
    const client = await OvsdbClient.connect(server.target);
    try {
      expect(await client.request("list_dbs", [])).toEqual(["Open_vSwitch", "vé日🙂"]);
    } finally {
      client.close();
      server.close();
    }
  });

  test("a request the server never answers fails at its timeout, naming the method", async () => {
    const server = new FakeServer(() => {});
    const client = await OvsdbClient.connect(server.target, { timeoutMs: 200 });
    try {
      const err = await rejection(client.request("list_dbs", []));
      expect(err).toBeInstanceOf(OvsdbError);
      expect(err.message).toBe(`ovsdb-server at ${server.path} did not answer list_dbs within 200 ms`);
      expect((err as OvsdbError).code).toBe("timeout");
    } finally {
      client.close();
      server.close();
    }
  });

  test("an op's error in a transact reply rejects, naming the op, its table and the error", async () => {
    const server = new FakeServer((sock, message) => {
      sock.write(JSON.stringify({ id: message.id, result: [{ rows: [] }, { error: "constraint violation", details: "no bridge named x" }], error: null }));
    });
    const client = await OvsdbClient.connect(server.target);
    try {
      const err = await rejection(client.transact([{ op: "select", table: "Bridge", where: [] }, { op: "insert", table: "Port", row: {} }]));
      expect(err).toBeInstanceOf(OvsdbError);
      expect(err.message).toContain('op 1 (insert on Port) failed with "constraint violation": no bridge named x');
      expect(server.received[0]).toMatchObject({ method: "transact", params: ["Open_vSwitch", { op: "select" }, { op: "insert" }] });
    } finally {
      client.close();
      server.close();
    }
  });

  test("garbage from the server fails what is pending with the splitter's reason, and the client reconnects", async () => {
    let first = true;
    const server = new FakeServer((sock, message) => {
      if (first) {
        first = false;
        sock.write("HTTP/1.1 400 Bad Request\r\n\r\n");
      } else {
        sock.write(JSON.stringify({ id: message.id, result: ["Open_vSwitch"], error: null }));
      }
    });
    const { log, lines } = capturingLogger();
    const client = await OvsdbClient.connect(server.target, { log });
    try {
      const err = await rejection(client.request("list_dbs", []));
      expect(err.message).toContain(`lost the connection to ovsdb-server at ${server.path}: OVSDB stream: expected a JSON object or array, got 'H'`);
      expect(err.message).toContain("before it answered list_dbs");
      await eventually("a second connection", () => server.connections.length === 2);
      expect(await client.request("list_dbs", [])).toEqual(["Open_vSwitch"]);
      expect(lines.some((l) => l.includes("ovsdb reconnected"))).toBe(true);
    } finally {
      client.close();
      server.close();
    }
  });

  test("close() fails what is pending and later requests", async () => {
    const server = new FakeServer(() => {});
    const client = await OvsdbClient.connect(server.target);
    const pending = rejection(client.request("list_dbs", []));
    client.close();
    client.close();
    expect((await pending).message).toContain("was closed");
    expect((await rejection(client.request("list_dbs", []))).message).toContain("is closed");
    server.close();
  });
});

describe.if(missing === null)("OvsdbClient on a real ovsdb-server", () => {
  let ovs: Ovs;
  let client: OvsdbClient;

  beforeAll(async () => {
    ovs = await startOvs();
    client = await OvsdbClient.connect(ovs.db);
  }, OVS_TEST_TIMEOUT_MS);

  afterAll(async () => {
    client?.close();
    await ovs?.stop();
  }, OVS_TEST_TIMEOUT_MS);

  test("ensureBridge twice makes one bridge, with its internal port, that ovs-vswitchd runs", async () => {
    await client.ensureBridge("bra", { datapathType: "netdev" });
    await client.ensureBridge("bra", { datapathType: "netdev" });
    expect((await ovs.vsctl("list-br")).trim().split("\n")).toContain("bra");
    expect((await ovs.vsctl("list-br")).trim().split("\n").filter((b) => b === "bra")).toHaveLength(1);
    expect((await ovs.vsctl("get", "Bridge", "bra", "datapath_type")).trim()).toBe("netdev");
    expect((await ovs.vsctl("get", "Interface", "bra", "type")).trim()).toBe("internal");
    expect(await client.bridges()).toContain("bra");
    // ensureBridge returned after ovs-vswitchd applied it (next_cfg/cur_cfg): its OpenFlow socket is there already.
    expect(existsSync(join(ovs.dir, "bra.mgmt"))).toBe(true);
    expect(await ovs.ofctl("dump-flows", "bra")).toContain("actions=NORMAL");
  });

  test("a bridge ensureBridge made is served by ovs-vswitchd the moment it returns (ovs-ofctl works at once), five times over", async () => {
    for (let i = 0; i < 5; i++) {
      await client.ensureBridge(`brnow${i}`, { datapathType: "netdev" });
      expect(await ovs.ofctl("dump-flows", `brnow${i}`)).toContain("actions=NORMAL");
    }
  });

  test("two ensureBridge racing make one bridge", async () => {
    await Promise.all([client.ensureBridge("brrace"), client.ensureBridge("brrace"), client.ensureBridge("brrace")]);
    expect((await client.bridges()).filter((b) => b === "brrace")).toHaveLength(1);
  });

  test("ensurePort of a veth: ovs-vsctl lists it, ofports() gets its ofport; removePort takes it away; both idempotent", async () => {
    await client.ensureBridge("brp", { datapathType: "netdev" });
    await ovs.ip("link", "add", "vpA", "type", "veth", "peer", "name", "vpB");
    try {
      await ovs.ip("link", "set", "vpA", "up");
      await client.ensurePort("brp", "vpA");
      await client.ensurePort("brp", "vpA");
      expect((await ovs.vsctl("list-ports", "brp")).trim()).toBe("vpA");
      const ofport = await eventually("vpA's ofport", async () => (await client.ofports()).get("vpA"));
      expect(ofport).toBeGreaterThan(0);
      expect(Number((await ovs.vsctl("get", "Interface", "vpA", "ofport")).trim())).toBe(ofport);
      expect((await client.ofports()).get("brp")).toBe(65534); // the bridge's internal port, OFPP_LOCAL

      await client.removePort("brp", "vpA");
      await client.removePort("brp", "vpA");
      await client.removePort("no-such-bridge", "vpA");
      expect((await ovs.vsctl("list-ports", "brp")).trim()).toBe("");
      expect((await client.ofports()).has("vpA")).toBe(false);
    } finally {
      await ovs.ip("link", "del", "vpA");
    }
  });

  test("three ensurePort racing make one port", async () => {
    await client.ensureBridge("brpr");
    await Promise.all([client.ensurePort("brpr", "vrace"), client.ensurePort("brpr", "vrace"), client.ensurePort("brpr", "vrace")]);
    expect((await ovs.vsctl("list-ports", "brpr")).trim()).toBe("vrace");
    expect((await ovs.vsctl("--columns=name", "find", "Port", "name=vrace")).trim().split("\n")).toHaveLength(1);
  });

  test("ensurePort says what is wrong: no such bridge, or the port on another bridge", async () => {
    const noBridge = await rejection(client.ensurePort("brnone", "vx"));
    expect(noBridge.message).toContain("there is no bridge brnone");
    expect((noBridge as OvsdbError).code).toBe("not_found");
    await client.ensureBridge("bro1");
    await client.ensureBridge("bro2");
    await client.ensurePort("bro1", "vo");
    const taken = await rejection(client.ensurePort("bro2", "vo"));
    expect(taken.message).toBe(`cannot add port vo to bridge bro2: a port named vo is already on bridge bro1; remove it there first`);
    expect((await ovs.vsctl("list-ports", "bro1")).trim()).toBe("vo");
    expect((await ovs.vsctl("list-ports", "bro2")).trim()).toBe("");
  });

  test("a refused op names itself", async () => {
    const err = await rejection(client.transact([{ op: "insert", table: "Bridge", row: { no_such_column: 1 } }]));
    expect(err).toBeInstanceOf(OvsdbError);
    expect(err.message).toMatch(/op 0 \(insert on Bridge\) failed with "unknown column"/);
  });

  test("watchInterfaces gets the full map at start, then sees a veth's port appear with its ofport and disappear", async () => {
    await client.ensureBridge("brw", { datapathType: "netdev" });
    const seen: Map<string, number>[] = [];
    const unwatch = await client.watchInterfaces((ofports) => seen.push(ofports));
    try {
      expect(seen).toHaveLength(1);
      // Wait-free: ovs-vswitchd may not have given brw its port number yet.
      await eventually("the watch seeing brw's internal port", () => seen.at(-1)?.get("brw") === 65534);
      await ovs.ip("link", "add", "vwA", "type", "veth", "peer", "name", "vwB");
      await ovs.ip("link", "set", "vwA", "up");
      await client.ensurePort("brw", "vwA");
      const ofport = await eventually("the watch seeing vwA's ofport", () => seen.at(-1)?.get("vwA"));
      expect(ofport).toBe((await client.ofports()).get("vwA") ?? -1);
      await client.removePort("brw", "vwA");
      await eventually("the watch seeing vwA go", () => seen.at(-1)?.has("vwA") === false);
      expect(seen.at(-1)?.get("brw")).toBe(65534);
      // Every call is a change: no two in a row are the same map.
      for (let i = 1; i < seen.length; i++) expect([...(seen[i] ?? [])]).not.toEqual([...(seen[i - 1] ?? [])]);
    } finally {
      unwatch();
      await ovs.ip("link", "del", "vwA").catch(() => undefined);
    }
    const calls = seen.length;
    await client.ensureBridge("brw2", { datapathType: "netdev" }); // a change the cancelled monitor must not report
    await eventually("brw2 in the database", async () => (await client.ofports()).has("brw2"));
    expect(seen).toHaveLength(calls);
  }, OVS_TEST_TIMEOUT_MS);

  test("answers ovsdb-server's inactivity probe (echo) and keeps the connection", async () => {
    const sock = join(ovs.dir, "probe.sock");
    await ovs.vsctl("--no-wait", "set-manager", `punix:${sock}`);
    await ovs.vsctl("--no-wait", "set", "Manager", ".", "inactivity_probe=1000");
    await eventually("the manager's socket", () => existsSync(sock));
    const { log, lines } = capturingLogger();
    const probed = await OvsdbClient.connect(`unix:${sock}`, { log });
    try {
      // ovsdb-server probes after 1 s idle and drops a connection that has not answered 1 s later:
      // a second probe means the first answer counted.
      await eventually("two echoes answered", () => lines.filter((l) => l.includes("ovsdb echo answered")).length >= 2, { timeoutMs: 10_000 });
      expect(lines.filter((l) => l.includes("connection lost"))).toEqual([]);
      expect(await probed.request("list_dbs", [])).toContain("Open_vSwitch");
    } finally {
      probed.close();
      await ovs.vsctl("--no-wait", "del-manager");
    }
  }, 20_000);

  test("ovsdb-server restarting under a live client: a pending request fails clearly, the client reconnects, the watch gets the state again", async () => {
    const { log, lines } = capturingLogger();
    const live = await OvsdbClient.connect(ovs.db, { log });
    try {
      await live.ensureBridge("brr", { datapathType: "netdev" });
      const seen: Map<string, number>[] = [];
      await live.watchInterfaces((ofports) => seen.push(ofports));
      await eventually("brr's ofport in the watch", () => seen.at(-1)?.get("brr") === 65534);
      const before = seen.length;
      // A transaction ovsdb-server holds until a bridge that never comes exists (RFC 7047 §5.2.6 "wait").
      const held = rejection(
        live.request("transact", ["Open_vSwitch", { op: "wait", table: "Bridge", where: [["name", "==", "never"]], columns: ["name"], until: "!=", rows: [], timeout: 60_000 }]),
      );
      await ovs.stopDb();
      const err = await held;
      expect(err).toBeInstanceOf(OvsdbError);
      expect(err.message).toMatch(new RegExp(`^lost the connection to ovsdb-server at ${ovs.dir}/db.sock: .*, before it answered transact; it may or may not have been applied`));
      // A request made while ovsdb-server is down waits for the reconnect.
      const whileDown = live.bridges();
      await ovs.startDb();
      expect(await whileDown).toContain("brr");
      await eventually("the watch called again with the full state", () => seen.length > before && seen.at(-1)?.get("brr") === 65534);
      expect(lines.some((l) => l.includes("ovsdb connection lost; reconnecting"))).toBe(true);
      expect(lines.some((l) => l.includes("ovsdb reconnected"))).toBe(true);
      // And the monitor is live again: a new port shows up.
      await ovs.ip("link", "add", "vr", "type", "veth", "peer", "name", "vr2");
      await ovs.ip("link", "set", "vr", "up");
      await live.ensurePort("brr", "vr");
      await eventually("the re-established watch seeing vr", () => (seen.at(-1)?.get("vr") ?? 0) > 0, { timeoutMs: 10_000 });
    } finally {
      live.close();
      await ovs.ip("link", "del", "vr").catch(() => undefined);
    }
  }, OVS_TEST_TIMEOUT_MS);
});
