/**
 * Reconciles of a desired state with the switch: the switch's ports, compile (compile.ts:
 * canonical flows), each bridge's current flows, plan (plan.ts) and — to apply — each bridge's
 * plan sent as one bundle. Two ways to run it:
 *
 * - One-shot, for the CLI (`stoa flows plan|apply --state`): `planState` changes nothing;
 *   `applyState` first makes the bridges exist (and, asked, the containers' ports:
 *   `attachVeths`), then plans and applies. Each reads the ports of every bridge from
 *   ovs-vswitchd (`ovs-ofctl dump-ports-desc`) and dumps each bridge's flows: its cost is
 *   bounded below by that dump (~0.5 s for 20,000 flows) even when nothing changes.
 * - The engine, for the server (`Reconciler`, `stoa flows serve`): the ports come from an OVSDB
 *   monitor (ovsdb.ts `watchPorts`), never read per reconcile, and after a successful reconcile
 *   each bridge's flows are known — stoa's are the desired ones, the others as the last dump
 *   showed them (plan.ts `BridgeFlows`) — so the next reconcile plans against that memory
 *   instead of dumping: the same state again sends nothing and costs a compile and a diff, one
 *   service's change sends only its mods. The first reconcile dumps; so does the one after
 *   `forget()` — which the server calls every VERIFY_MS — after a failed reconcile (a refused
 *   bundle included), and after OVSDB reconnects. What changes behind stoa's back is seen at
 *   that verify: a flow of stoa's deleted or altered by hand is put back; a foreign flow put at
 *   the place (table, priority, match) of one of stoa's fails the reconcile as a conflict
 *   (plan.ts), as on the one-shot path. Until then the memory is trusted: a foreign flow added
 *   since the last dump at exactly the place of a flow stoa then adds is replaced by that add
 *   (OVS identifies a flow by its place alone) — the one guarantee that holds only as of the
 *   last verify.
 */
import { StoaError, describeError } from "../core/errors.ts";
import { compile, ownedFlows, type SwitchPort, type WaitingContainer } from "./compile.ts";
import { interfaceExists } from "./container.ts";
import type { Container, ServiceLocation, State } from "./model.ts";
import { applyFlowMods, dumpFlows, dumpPorts } from "./ofctl.ts";
import type { OvsdbClient, PortsWatch } from "./ovsdb.ts";
import { indexFlows, planAgainst, type BridgeFlows, type BridgePlan } from "./plan.ts";

/** How long apply waits for OVS to give new ports their ofport. */
const PORT_WAIT_MS = 5_000;
/** How often the server has its engine dump every bridge anyway (`Reconciler.forget`): what changed behind stoa's back is seen within this. */
export const VERIFY_MS = 60_000;

export interface BridgeReport extends BridgePlan {
  /** False when the bridge is not on the switch yet (plan only: apply creates it). */
  exists: boolean;
}

export interface Report {
  node: string;
  bridges: BridgeReport[];
  waiting: WaitingContainer[];
  unrouted: { service: ServiceLocation; reason: string }[];
  /** What works but will not carry traffic as it should (the userspace datapath without TSO, say). */
  warnings: string[];
  /** Flow mods planned (plan) or sent (apply), over every bridge. */
  changes: number;
}

export interface SwitchAccess {
  ovsdb: OvsdbClient;
  /** The environment ovs-ofctl runs with (the caller's OVS_RUNDIR). */
  env: NodeJS.ProcessEnv;
  /** Services of other nodes, routed through mesh_port. */
  remote?: readonly ServiceLocation[];
}

/** Waits until each of `names` has an ofport (or the deadline): OVS numbers a new port on its own time. */
async function waitForOfports(ovsdb: OvsdbClient, names: readonly string[]): Promise<void> {
  if (names.length === 0) return;
  const { promise, resolve } = Promise.withResolvers<void>();
  const timer = setTimeout(resolve, PORT_WAIT_MS);
  const unwatch = await ovsdb.watchInterfaces((ofports) => {
    if (names.every((name) => (ofports.get(name) ?? 0) > 0)) resolve();
  });
  try {
    await promise;
  } finally {
    clearTimeout(timer);
    unwatch();
  }
}

/** The flows of `bridge` (every cookie: stoa's to diff, the others to make sure none is replaced), by place. */
async function dumped(bridge: string, env: NodeJS.ProcessEnv): Promise<BridgeFlows> {
  return indexFlows(await dumpFlows(bridge, { cookie: 0n, mask: 0n, env }));
}

interface Planned {
  report: Report;
  /** Each bridge's flows once its mods are applied. */
  after: Map<string, BridgeFlows>;
}

/** Compiles `state` against `ports` and plans each bridge against `current(bridge)` (null: the bridge is not on the switch yet). */
async function planAll(state: State, ports: ReadonlyMap<string, SwitchPort>, access: SwitchAccess, current: (bridge: string) => Promise<BridgeFlows | null>): Promise<Planned> {
  const compiled = compile(state, ports, access.remote ?? []);
  const bridges: BridgeReport[] = [];
  const after = new Map<string, BridgeFlows>();
  for (const [bridge, desired] of compiled.bridges) {
    const owned = ownedFlows(bridge, desired, ports);
    const now = await current(bridge);
    const planned = planAgainst(bridge, owned, now ?? { ours: new Map(), foreign: new Map() });
    bridges.push({ ...planned.plan, exists: now !== null });
    after.set(bridge, planned.after);
  }
  const warnings: string[] = [];
  const userspace = state.bridges.filter((b) => b.datapath_type === "netdev").map((b) => b.name);
  if (userspace.length > 0 && state.containers.length > 0 && (await access.ovsdb.otherConfig("userspace-tso-enable")) !== "true") {
    warnings.push(
      `bridge${userspace.length === 1 ? "" : "s"} ${userspace.join(", ")} use${userspace.length === 1 ? "s" : ""} the userspace datapath without userspace TSO: TCP from a veth arrives with a partial checksum and is dropped. ` +
        "Run: ovs-vsctl set Open_vSwitch . other_config:userspace-tso-enable=true, then restart ovs-vswitchd",
    );
  }
  const report = { node: state.node, bridges, waiting: compiled.waiting, unrouted: compiled.unrouted, warnings, changes: bridges.reduce((n, b) => n + b.mods.length, 0) };
  return { report, after };
}

/** Sends each bridge's plan as one bundle; a refused one fails with OVS's message, naming the bridges already applied. */
async function send(report: Report, env: NodeJS.ProcessEnv): Promise<void> {
  const applied: string[] = [];
  for (const bridge of report.bridges) {
    if (bridge.mods.length === 0) continue;
    try {
      await applyFlowMods(bridge.bridge, bridge.mods, { env });
    } catch (err) {
      const done = applied.length === 0 ? "" : ` (bridges already applied: ${applied.join(", ")})`;
      throw new StoaError("io", `bridge ${bridge.bridge}: OVS refused the plan; nothing changed on ${bridge.bridge}${done}: ${describeError(err)}`);
    }
    applied.push(bridge.bridge);
  }
}

async function ensureBridges(state: State, ovsdb: OvsdbClient): Promise<void> {
  for (const bridge of state.bridges) await ovsdb.ensureBridge(bridge.name, bridge.datapath_type === undefined ? {} : { datapathType: bridge.datapath_type });
}

/**
 * The ports of every bridge on the switch, as ovs-vswitchd numbers them (`dumpPorts`: one
 * `ovs-ofctl` per bridge). A bridge of another program's that ovs-vswitchd cannot answer for
 * holds none of the state's ports and is skipped; one of the state's fails the read.
 */
async function switchPorts(state: State, onSwitch: readonly string[], env: NodeJS.ProcessEnv): Promise<Map<string, SwitchPort>> {
  const ours = new Set(state.bridges.map((b) => b.name));
  const out = new Map<string, SwitchPort>();
  await Promise.all(
    onSwitch.map(async (bridge) => {
      let ports: Map<string, number>;
      try {
        ports = await dumpPorts(bridge, { env });
      } catch (err) {
        if (ours.has(bridge)) throw err;
        return;
      }
      for (const [name, ofport] of ports) out.set(name, { bridge, ofport });
    }),
  );
  return out;
}

/** The one-shot plan: ports read, every existing bridge dumped. */
async function plans(state: State, access: SwitchAccess, onSwitch: readonly string[], ports?: ReadonlyMap<string, SwitchPort>): Promise<Report> {
  const existing = new Set(onSwitch);
  const current = ports ?? (await switchPorts(state, onSwitch, access.env));
  return (await planAll(state, current, access, async (bridge) => (existing.has(bridge) ? dumped(bridge, access.env) : null))).report;
}

/**
 * Puts each container's veth that exists here (in this network namespace) and is not a port of
 * its bridge in `ports` (the switch's ports now) on it, then waits for OVS to number them.
 * Returns the veths it added.
 */
export async function attachVeths(containers: readonly Container[], ovsdb: OvsdbClient, ports: ReadonlyMap<string, SwitchPort>): Promise<string[]> {
  const added: string[] = [];
  for (const c of containers) {
    if (ports.get(c.veth)?.bridge === c.bridge || !interfaceExists(c.veth)) continue;
    await ovsdb.ensurePort(c.bridge, c.veth);
    added.push(c.veth);
  }
  await waitForOfports(ovsdb, added);
  return added;
}

/** What `applyState` would send now; changes nothing. */
export async function planState(state: State, access: SwitchAccess): Promise<Report> {
  return plans(state, access, await access.ovsdb.bridges());
}

/**
 * Makes the switch hold `state`'s flows: bridges created, with `ensurePorts` the containers'
 * veths attached (`attachVeths`: `stoa flows apply`; the server attaches a veth once, when its
 * container registers, and otherwise follows the ports as OVSDB reports them, so a runtime that
 * takes a container's port off the bridge takes its flows with it), then one bundle per bridge.
 * A bundle OVS refuses changes nothing on that bridge and fails the apply with OVS's message.
 */
export async function applyState(state: State, access: SwitchAccess & { ensurePorts: boolean }): Promise<Report> {
  await ensureBridges(state, access.ovsdb);
  const onSwitch = await access.ovsdb.bridges();
  let ports: Map<string, SwitchPort> | undefined;
  if (access.ensurePorts) {
    ports = await switchPorts(state, onSwitch, access.env);
    if ((await attachVeths(state.containers, access.ovsdb, ports)).length > 0) ports = undefined; // read again, with their ofports
  }
  const report = await plans(state, access, onSwitch, ports);
  await send(report, access.env);
  return report;
}

/**
 * The reconcile engine of `stoa flows serve` (this file's header): the switch's ports from an
 * OVSDB monitor, each bridge's flows remembered from the last successful reconcile.
 * @example
 *   const engine = await Reconciler.start({ ovsdb, env, onPorts: (ports, reconnected) => kick() });
 *   const report = await engine.apply(registry.state, registry.remoteServices());
 *   setInterval(() => { engine.forget(); kick(); }, VERIFY_MS);
 */
export class Reconciler {
  readonly #ovsdb: OvsdbClient;
  readonly #env: NodeJS.ProcessEnv;
  readonly #watch: PortsWatch;
  /** Each bridge's flows after the last successful reconcile; a bridge not here is dumped. */
  #known = new Map<string, BridgeFlows>();
  /** Counts `forget()`s: a reconcile that ran across one does not keep what it planned against. */
  #generation = 0;
  #dumps = 0;

  private constructor(ovsdb: OvsdbClient, env: NodeJS.ProcessEnv, watch: PortsWatch) {
    this.#ovsdb = ovsdb;
    this.#env = env;
    this.#watch = watch;
  }

  /**
   * Starts the ports monitor (ovsdb-server sends every bridge, port and interface once). After
   * every change of them `onPorts(reconnected)` is called; after a reconnect the engine has
   * forgotten the flows first (the next reconcile dumps).
   */
  static async start(o: { ovsdb: OvsdbClient; env: NodeJS.ProcessEnv; onPorts?: (ports: ReadonlyMap<string, SwitchPort>, reconnected: boolean) => void }): Promise<Reconciler> {
    let engine: Reconciler | undefined;
    const watch = await o.ovsdb.watchPorts((reconnected) => {
      if (engine === undefined) return; // still starting: the first reconcile reads them
      if (reconnected) engine.forget();
      o.onPorts?.(engine.ports, reconnected);
    });
    engine = new Reconciler(o.ovsdb, o.env, watch);
    return engine;
  }

  /** Interface name → bridge and ofport, as the monitor has them now. */
  get ports(): ReadonlyMap<string, SwitchPort> {
    return this.#watch.ports();
  }

  /** How many bridge dumps the engine has run (a no-op reconcile from memory runs none). */
  get dumps(): number {
    return this.#dumps;
  }

  /** The next reconcile dumps every bridge and plans against what is really there. */
  forget(): void {
    this.#known = new Map();
    this.#generation++;
  }

  /**
   * Makes the switch hold `state`'s flows (and `remote` services through mesh_port): bridges
   * created, then one bundle per bridge that needs one, planned against the memory (or a dump).
   * A failure — a conflict, a refused bundle — forgets the memory and throws.
   */
  async apply(state: State, remote: readonly ServiceLocation[] = []): Promise<Report> {
    const known = this.#known;
    const generation = this.#generation;
    this.#known = new Map();
    await ensureBridges(state, this.#ovsdb);
    const planned = await planAll(state, this.ports, { ovsdb: this.#ovsdb, env: this.#env, remote }, async (bridge) => {
      const remembered = known.get(bridge);
      if (remembered !== undefined) return remembered;
      this.#dumps++;
      return dumped(bridge, this.#env);
    });
    await send(planned.report, this.#env);
    if (generation === this.#generation) this.#known = planned.after;
    return planned.report;
  }

  /** Stops the ports monitor. */
  close(): void {
    this.#watch.close();
  }
}
