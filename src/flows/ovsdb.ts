/**
 * An OVSDB client (RFC 7047) for the Open_vSwitch database: ensure bridges and ports, read
 * ofport numbers, and monitor the Interface table and the switch's ports — JSON-RPC 1.0 over
 * ovsdb-server's Unix socket, written for stoa (the wire and its splitter: ovsdb-wire.ts).
 *
 * - One persistent connection, kept by ovsdb-session.ts: request ids and deadlines (`timeoutMs`,
 *   default `OVSDB_REQUEST_TIMEOUT_MS`, waiting for a connection included), `echo` answered; a lost
 *   connection fails the requests already sent (clearly: "lost the connection to ovsdb-server at
 *   PATH … before it answered transact"), then reconnects with backoff, and every watch gets the
 *   full current state again.
 * - A bridge `ensureBridge` creates (or changes) exists in ovs-vswitchd when it returns: it bumps
 *   `next_cfg` and waits for ovs-vswitchd's `cur_cfg` to reach it, as `ovs-vsctl` does (the bridge's
 *   OpenFlow socket is there for ovs-ofctl). Ports are not waited for: ovs-vswitchd assigns a new
 *   port's ofport asynchronously; `watchInterfaces`/`watchPorts` is how to learn it.
 * - `watchPorts` keeps the switch's ports (interface → bridge, ofport) from a monitor of Bridge,
 *   Port and Interface, so a server reads them from memory instead of selecting three tables.
 * - `ensureBridge`/`ensurePort`/`removePort` read, then write in one transaction guarded by a
 *   `wait` op (the row is still absent), so two writers racing cannot create a name twice; a
 *   lost race reads again.
 *
 * @example
 * const ovsdb = await OvsdbClient.connect(ovsdbTarget(flags.ovsdb), { log });
 * await ovsdb.ensureBridge("br0", { datapathType: "netdev" });
 * await ovsdb.ensurePort("br0", "veth102");
 * const unwatch = await ovsdb.watchInterfaces((ofports) => reconcile(ofports.get("veth102")));
 */
import { describeError } from "../core/errors.ts";
import { parseEndpoint } from "../core/endpoint.ts";
import type { Logger } from "../core/log.ts";
import { OvsdbSession } from "./ovsdb-session.ts";
import { CountResult, OpError, OvsdbError, optionalInteger, SelectResult, TableUpdates, uuidsOf } from "./ovsdb-wire.ts";

export { OvsdbError } from "./ovsdb-wire.ts";

/** Where Open vSwitch puts its sockets when OVS_RUNDIR is not set (its build's default on Debian). */
const DEFAULT_OVS_RUNDIR = "/var/run/openvswitch";
/** The database every operation here is on. */
const DATABASE = "Open_vSwitch";
/** Read-then-write rounds of ensurePort before giving up: each lost round means another writer changed the same rows. */
const MAX_ENSURE_ATTEMPTS = 3;
/** How long ensureBridge waits for ovs-vswitchd to create the bridge, and how often it looks. */
const APPLY_TIMEOUT_MS = 10_000;
const APPLY_POLL_MS = 10;

/**
 * The OVSDB target of a `--ovsdb` flag: `unix:PATH`, checked; without a flag, Open vSwitch's own
 * default, `unix:$OVS_RUNDIR/db.sock` (or /var/run/openvswitch/db.sock).
 * @example
 * ovsdbTarget(undefined, { OVS_RUNDIR: "/tmp/ovs" }); // "unix:/tmp/ovs/db.sock"
 */
export function ovsdbTarget(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (flag === undefined || flag === "") return `unix:${env.OVS_RUNDIR || DEFAULT_OVS_RUNDIR}/db.sock`;
  if (!flag.startsWith("unix:")) {
    throw new OvsdbError(`--ovsdb ${JSON.stringify(flag)}: give ovsdb-server's socket as unix:PATH (e.g. unix:/var/run/openvswitch/db.sock); tcp: and ssl: targets are not supported`, { code: "usage" });
  }
  try {
    parseEndpoint(flag);
  } catch (err) {
    throw new OvsdbError(`--ovsdb ${JSON.stringify(flag)}: ${describeError(err).replace(/\. Accepted forms:.*$/s, "")}`, { code: "usage", cause: err });
  }
  return flag;
}

/** A select op on `table` for rows whose `name` is `name` (or all rows without a name). */
function select(table: string, columns: string[], name?: string): object {
  return { op: "select", table, where: name === undefined ? [] : [["name", "==", name]], columns };
}

/** A `wait` op that fails at once unless no row of `table` is named `name`: the guard of an insert. */
function absent(table: string, name: string): object {
  return { op: "wait", table, where: [["name", "==", name]], columns: ["name"], until: "==", rows: [], timeout: 0 };
}

/** The error of a transaction whose guard (`absent`, op 0) failed: someone else created the row first. */
class LostRace extends OvsdbError {}

export class OvsdbClient {
  readonly #session: OvsdbSession;

  private constructor(session: OvsdbSession) {
    this.#session = session;
  }

  /**
   * Connects to ovsdb-server at `target` (`unix:PATH`, see `ovsdbTarget`). Only this first
   * connection's failure is thrown — an OvsdbError saying ovsdb-server is not running there;
   * later losses are retried.
   */
  static async connect(target: string, opts: { timeoutMs?: number; log?: Logger } = {}): Promise<OvsdbClient> {
    return new OvsdbClient(await OvsdbSession.open(ovsdbTarget(target).slice("unix:".length), opts));
  }

  /** Sends one JSON-RPC request and resolves with its result; an error reply rejects with an OvsdbError. */
  request(method: string, params: unknown[]): Promise<unknown> {
    return this.#session.request(method, params);
  }

  /** Runs `ops` as one transaction on the Open_vSwitch database; an op's error rejects, naming it. */
  transact(ops: object[]): Promise<unknown[]> {
    return this.#transact(ops, false);
  }

  /** `transact`; with `guarded`, op 0 is an `absent` guard and its failure is a LostRace. */
  async #transact(ops: object[], guarded: boolean): Promise<unknown[]> {
    const result = await this.#session.request("transact", [DATABASE, ...ops]);
    if (!Array.isArray(result)) throw new OvsdbError(`ovsdb-server at ${this.#session.path} answered transact with ${JSON.stringify(result)}, not an array`, { code: "decode" });
    result.forEach((entry, index) => {
      const failed = OpError.safeParse(entry);
      if (!failed.success) return;
      const op = ops[index] as { op?: unknown; table?: unknown } | undefined;
      const what = op === undefined ? "the commit" : `op ${index} (${String(op.op)}${op.table === undefined ? "" : ` on ${String(op.table)}`})`;
      const details = failed.data.details === undefined ? "" : `: ${failed.data.details}`;
      const message = `ovsdb-server at ${this.#session.path} refused the transaction: ${what} failed with "${failed.data.error}"${details}`;
      if (guarded && index === 0) throw new LostRace(message, { code: "exists" });
      throw new OvsdbError(message);
    });
    return result;
  }

  /** Creates bridge `name` with its internal port, like `ovs-vsctl --may-exist add-br`; an existing bridge gets `datapathType` if given. */
  async ensureBridge(name: string, opts: { datapathType?: string } = {}): Promise<void> {
    const [found] = await this.transact([select("Bridge", ["_uuid", "datapath_type"], name)]);
    const existing = SelectResult.parse(found).rows[0];
    if (existing !== undefined) {
      if (opts.datapathType !== undefined && existing.datapath_type !== opts.datapathType) {
        await this.transact([{ op: "update", table: "Bridge", where: [["name", "==", name]], row: { datapath_type: opts.datapathType } }]);
        await this.#applied(`bridge ${name}'s datapath_type`);
      }
      return;
    }
    const bridge: Record<string, unknown> = { name, ports: ["named-uuid", "port"] };
    if (opts.datapathType !== undefined) bridge.datapath_type = opts.datapathType;
    try {
      const results = await this.#transact(
        [
          absent("Bridge", name),
          { op: "insert", table: "Interface", row: { name, type: "internal" }, "uuid-name": "iface" },
          { op: "insert", table: "Port", row: { name, interfaces: ["named-uuid", "iface"] }, "uuid-name": "port" },
          { op: "insert", table: "Bridge", row: bridge, "uuid-name": "bridge" },
          { op: "mutate", table: "Open_vSwitch", where: [], mutations: [["bridges", "insert", ["named-uuid", "bridge"]]] },
        ],
        true,
      );
      // Bridge is not a root table: with no Open_vSwitch row to hold it, the commit dropped it again.
      if (CountResult.parse(results[4]).count === 0) {
        throw new OvsdbError(`the Open_vSwitch database at ${this.#session.path} has no Open_vSwitch row, so bridge ${name} was not kept: run \`ovs-vsctl --no-wait init\` (the openvswitch-switch service does)`, { code: "not_found" });
      }
    } catch (err) {
      if (!(err instanceof LostRace)) throw err;
    }
    await this.#applied(`bridge ${name}`);
  }

  /**
   * Waits until ovs-vswitchd has acted on the database as it is now: bumps Open_vSwitch.next_cfg
   * and polls cur_cfg, which ovs-vswitchd sets once it reconfigured (`ovs-vsctl`'s handshake).
   */
  async #applied(what: string): Promise<void> {
    const [, bumped] = await this.transact([
      { op: "mutate", table: "Open_vSwitch", where: [], mutations: [["next_cfg", "+=", 1]] },
      { op: "select", table: "Open_vSwitch", where: [], columns: ["next_cfg"] },
    ]);
    const target = Number(SelectResult.parse(bumped).rows[0]?.next_cfg);
    const deadline = Date.now() + APPLY_TIMEOUT_MS;
    for (;;) {
      const [now] = await this.transact([{ op: "select", table: "Open_vSwitch", where: [], columns: ["cur_cfg"] }]);
      if (Number(SelectResult.parse(now).rows[0]?.cur_cfg) >= target) return;
      if (Date.now() >= deadline) {
        throw new OvsdbError(`ovs-vswitchd has not applied ${what} within ${APPLY_TIMEOUT_MS / 1000} s: is ovs-vswitchd running (systemctl status openvswitch-switch)?`, { code: "timeout" });
      }
      await Bun.sleep(APPLY_POLL_MS);
    }
  }

  /** Adds interface `iface` to `bridge` as a port, like `ovs-vsctl --may-exist add-port`. */
  async ensurePort(bridge: string, iface: string): Promise<void> {
    for (let attempt = 0; attempt < MAX_ENSURE_ATTEMPTS; attempt++) {
      const [bridges, ports] = await this.transact([select("Bridge", ["_uuid", "ports"], bridge), select("Port", ["_uuid"], iface)]);
      const br = SelectResult.parse(bridges).rows[0];
      if (br === undefined) throw new OvsdbError(`there is no bridge ${bridge} in ovsdb-server at ${this.#session.path}: create it first`, { code: "not_found" });
      const [brUuid] = uuidsOf(br._uuid);
      const port = SelectResult.parse(ports).rows[0];
      if (port !== undefined) {
        const [portUuid] = uuidsOf(port._uuid);
        if (portUuid !== undefined && uuidsOf(br.ports).includes(portUuid)) return;
        const [owner] = await this.transact([{ op: "select", table: "Bridge", where: [["ports", "includes", ["uuid", portUuid]]], columns: ["name"] }]);
        const other = SelectResult.parse(owner).rows[0]?.name;
        throw new OvsdbError(`cannot add port ${iface} to bridge ${bridge}: a port named ${iface} is already on bridge ${String(other ?? "(none)")}; remove it there first`, { code: "exists" });
      }
      try {
        const results = await this.#transact(
          [
            absent("Port", iface),
            { op: "insert", table: "Interface", row: { name: iface }, "uuid-name": "iface" },
            { op: "insert", table: "Port", row: { name: iface, interfaces: ["named-uuid", "iface"] }, "uuid-name": "port" },
            { op: "mutate", table: "Bridge", where: [["_uuid", "==", ["uuid", brUuid]]], mutations: [["ports", "insert", ["named-uuid", "port"]]] },
          ],
          true,
        );
        // No bridge updated: it went meanwhile (and the unreferenced Port with it); read again.
        if (CountResult.parse(results[3]).count > 0) return;
      } catch (err) {
        if (!(err instanceof LostRace)) throw err; // another writer added the port: read again
      }
    }
    throw new OvsdbError(`cannot add port ${iface} to bridge ${bridge}: the bridge or port kept changing under ${MAX_ENSURE_ATTEMPTS} attempts; another program is editing them`, { code: "internal" });
  }

  /** Removes port `iface` from `bridge`, like `ovs-vsctl --if-exists del-port` (a missing bridge or port is no error). */
  async removePort(bridge: string, iface: string): Promise<void> {
    const [bridges, ports] = await this.transact([select("Bridge", ["_uuid", "ports"], bridge), select("Port", ["_uuid"], iface)]);
    const br = SelectResult.parse(bridges).rows[0];
    const port = SelectResult.parse(ports).rows[0];
    if (br === undefined || port === undefined) return;
    const [portUuid] = uuidsOf(port._uuid);
    if (portUuid === undefined || !uuidsOf(br.ports).includes(portUuid)) return;
    // Port and Interface are not root tables: unreferenced, the commit deletes them.
    await this.transact([{ op: "mutate", table: "Bridge", where: [["_uuid", "==", br._uuid]], mutations: [["ports", "delete", ["uuid", portUuid]]] }]);
  }

  /** The names of every bridge, sorted. */
  async bridges(): Promise<string[]> {
    const [found] = await this.transact([select("Bridge", ["name"])]);
    return SelectResult.parse(found)
      .rows.map((row) => String(row.name))
      .sort();
  }

  /**
   * Monitors Bridge(name, ports), Port(interfaces) and Interface(name, ofport): `ports()` is
   * interface name → its bridge and ofport (-1 or 0 while ovs-vswitchd has not opened it), for
   * every interface of every port of every bridge, from the monitor's copy of the three tables —
   * no request (ovsdb-server sends the whole tables once, ~2.5 MB for 10,000 ports, then only
   * changes). `onChange(reconnected)` is called after every change, and with `reconnected` when a
   * new connection sent the whole tables again (what happened meanwhile is not known).
   */
  async watchPorts(onChange: (reconnected: boolean) => void): Promise<PortsWatch> {
    const tables = new Map<string, Map<string, Record<string, unknown>>>(PORT_TABLES.map((t) => [t, new Map()]));
    let joined: Map<string, SwitchPortRow> | null = null;
    let started = false;
    const requests = { Bridge: { columns: ["name", "ports"] }, Port: { columns: ["interfaces"] }, Interface: { columns: ["name", "ofport"] } };
    const unwatch = await this.#session.monitor(DATABASE, "stoa-ports", requests, (updates, initial) => {
      if (initial) for (const rows of tables.values()) rows.clear();
      for (const [table, changes] of Object.entries(TableUpdates.parse(updates))) {
        const rows = tables.get(table);
        if (rows === undefined) continue;
        for (const [uuid, change] of Object.entries(changes)) {
          if (change.new === undefined) rows.delete(uuid);
          else rows.set(uuid, { ...rows.get(uuid), ...change.new });
        }
      }
      joined = null;
      if (started) onChange(initial);
    });
    started = true;
    return { ports: () => (joined ??= joinPorts(tables)), close: unwatch };
  }

  /** A key of the Open_vSwitch row's other_config (e.g. "userspace-tso-enable"), or undefined. */
  async otherConfig(key: string): Promise<string | undefined> {
    const [found] = await this.transact([{ op: "select", table: "Open_vSwitch", where: [], columns: ["other_config"] }]);
    const map = SelectResult.parse(found).rows[0]?.other_config;
    // A map datum: ["map", [[key, value], …]].
    if (!Array.isArray(map) || map[0] !== "map" || !Array.isArray(map[1])) return undefined;
    const pair = (map[1] as unknown[]).find((p): p is [string, string] => Array.isArray(p) && p[0] === key);
    return pair === undefined ? undefined : String(pair[1]);
  }

  /** Interface name → ofport, for the interfaces ovs-vswitchd has given one (ofport > 0). */
  async ofports(): Promise<Map<string, number>> {
    const [found] = await this.transact([select("Interface", ["name", "ofport"])]);
    return ofportMap(SelectResult.parse(found).rows);
  }

  /**
   * Monitors Interface(name, ofport): `onChange` gets the full name → ofport map (ofport > 0)
   * now, after every change of it, and again after a reconnect. Returns the unwatch.
   */
  async watchInterfaces(onChange: (ofports: Map<string, number>) => void): Promise<() => void> {
    const rows = new Map<string, Record<string, unknown>>();
    let last: string | null = null;
    return this.#session.monitor(DATABASE, "stoa-interfaces", { Interface: { columns: ["name", "ofport"] } }, (updates, initial) => {
      if (initial) rows.clear();
      for (const [uuid, change] of Object.entries(TableUpdates.parse(updates).Interface ?? {})) {
        if (change.new === undefined) rows.delete(uuid);
        else rows.set(uuid, { ...rows.get(uuid), ...change.new });
      }
      const ofports = ofportMap(rows.values());
      const key = JSON.stringify([...ofports].sort());
      if (!initial && key === last) return;
      last = key;
      onChange(ofports);
    });
  }

  /** Closes the connection and stops reconnecting; what is pending fails. Idempotent. */
  close(): void {
    this.#session.close();
  }
}

/** A port of the switch: its bridge and ofport (compile.ts SwitchPort). */
interface SwitchPortRow {
  bridge: string;
  ofport: number;
}

/** The switch's ports as `watchPorts` keeps them. */
export interface PortsWatch {
  /** Interface name → bridge and ofport, now (the monitor's copy; computed once per change). */
  ports(): ReadonlyMap<string, SwitchPortRow>;
  /** Stops the monitor. */
  close(): void;
}

const PORT_TABLES = ["Bridge", "Port", "Interface"] as const;

/** Bridge.ports → Port.interfaces → Interface(name, ofport), over rows by uuid. */
function joinPorts(tables: ReadonlyMap<string, ReadonlyMap<string, Record<string, unknown>>>): Map<string, SwitchPortRow> {
  const interfaces = tables.get("Interface");
  const ports = tables.get("Port");
  const out = new Map<string, SwitchPortRow>();
  for (const bridge of tables.get("Bridge")?.values() ?? []) {
    for (const port of uuidsOf(bridge.ports)) {
      for (const id of uuidsOf(ports?.get(port)?.interfaces)) {
        const row = interfaces?.get(id);
        if (row !== undefined) out.set(String(row.name), { bridge: String(bridge.name), ofport: optionalInteger(row.ofport) ?? -1 });
      }
    }
  }
  return out;
}

/** name → ofport of rows with an ofport ovs-vswitchd assigned (> 0; -1 is a failed port, none yet is the empty set). */
function ofportMap(rows: Iterable<Record<string, unknown>>): Map<string, number> {
  const out = new Map<string, number>();
  for (const row of rows) {
    const ofport = optionalInteger(row.ofport);
    if (typeof row.name === "string" && ofport !== undefined && ofport > 0) out.set(row.name, ofport);
  }
  return out;
}

