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
 *   service's change sends only its mods. The memory is kept true by a flow monitor per bridge
 *   (ofmonitor.ts: one `ovs-ofctl monitor BR watch:` each, started by the first reconcile that
 *   has the bridge, stopped with it or by `close()`) and flow-memory.ts: the updates of stoa's
 *   own bundle are crossed off as they come; a flow of stoa's deleted or modified by hand is
 *   followed, so the next reconcile puts it back without a dump; any other update — a foreign
 *   flow added, changed or deleted (updates carry no priority, and the foreign places must be
 *   exact), an update arriving while stoa's own are still due, an ABBREV — drops that bridge's
 *   memory, and the next reconcile dumps it, so a foreign flow put at the place (table,
 *   priority, match) of one stoa would add or has fails that reconcile as a conflict (plan.ts)
 *   instead of being replaced (OVS identifies a flow by its place alone). Ordering: a reconcile
 *   first waits (a barrier through the monitor) for every update already sent — so a dump is
 *   older than every update after it — then plans; an update that arrives while it plans has
 *   those bridges planned again from a dump; one that arrives while the bundle is sent must be
 *   one of the bundle's own, or the bridge is dropped. What holds is then what the one-shot
 *   path has: the window is from the last update (or dump) to the bundle. A monitor that dies
 *   drops its bridge's memory and is started again by the next reconcile, which dumps; a bridge
 *   whose monitor cannot start is dumped every time (a warning in the report). The first
 *   reconcile dumps; so does the one after `forget()` — which the server calls every VERIFY_MS,
 *   as a backstop — after a failed reconcile (a refused bundle included), and after OVSDB
 *   reconnects.
 */
import { StoaError, describeError } from "../core/errors.ts";
import { compile, ownedFlows, type SwitchPort, type WaitingContainer } from "./compile.ts";
import { interfaceExists } from "./container.ts";
import type { Container, ServiceLocation, State } from "./model.ts";
import { isLearnedCookie } from "./model.ts";
import { applyFlowMods, dumpFlows, dumpPorts } from "./ofctl.ts";
import { BridgeMemory, expectedUpdates } from "./flow-memory.ts";
import { FlowMonitor, type FlowMessage } from "./ofmonitor.ts";
import type { OvsdbClient, PortsWatch } from "./ovsdb.ts";
import { indexFlows, planAgainst, type BridgeFlows, type BridgePlan } from "./plan.ts";

/** How long apply waits for OVS to give new ports their ofport. */
const PORT_WAIT_MS = 5_000;
/** How often the server has its engine dump every bridge anyway (`Reconciler.forget`): a backstop, the flow monitors keep the memory true between. */
export const VERIFY_MS = 300_000;

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

/** Flow-monitor messages a reconcile holds per bridge to check; past this the bridge is dumped next time. */
const MAX_HELD_MESSAGES = 1_000_000;

/** Whether any of `held` may have changed the bridge (learned flows come and go on their own). */
const changesBridge = (held: readonly FlowMessage[] | undefined): boolean =>
  (held ?? []).some((m) => m.type !== "flow" || !isLearnedCookie(m.flow.cookie));

/**
 * The reconcile engine of `stoa flows serve` (this file's header): the switch's ports from an
 * OVSDB monitor, each bridge's flows remembered from the last successful reconcile and kept true
 * by a flow monitor per bridge (ofmonitor.ts).
 * @example
 *   const engine = await Reconciler.start({ ovsdb, env, onPorts: (ports, reconnected) => kick() });
 *   const report = await engine.apply(registry.state, registry.remoteServices());
 *   setInterval(() => { engine.forget(); kick(); }, VERIFY_MS);
 */
export class Reconciler {
  readonly #ovsdb: OvsdbClient;
  readonly #env: NodeJS.ProcessEnv;
  readonly #watch: PortsWatch;
  /** Each bridge's flows after the last successful reconcile, kept true by its monitor; a bridge not here is dumped. */
  #known = new Map<string, BridgeMemory>();
  /** Counts `forget()`s: a reconcile that ran across one does not keep what it planned against. */
  #generation = 0;
  #dumps = 0;
  /** The flow monitor of each bridge of the last state; only a monitored bridge is remembered. */
  readonly #monitors = new Map<string, FlowMonitor>();
  /** What the monitors report while a reconcile runs, by bridge: checked against what it sent. */
  #held: Map<string, FlowMessage[]> | null = null;
  #updates = 0;
  #monitorStarts = 0;
  #closed: Promise<void> | null = null;

  private constructor(ovsdb: OvsdbClient, env: NodeJS.ProcessEnv, watch: PortsWatch) {
    this.#ovsdb = ovsdb;
    this.#env = env;
    this.#watch = watch;
  }

  /**
   * Starts the ports monitor (ovsdb-server sends every bridge, port and interface once). After
   * every change of them `onPorts(reconnected)` is called; after a reconnect the engine has
   * forgotten the flows first (the next reconcile dumps). The flow monitors start with the first
   * reconcile (the bridges are the state's).
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

  /** How many messages the flow monitors have reported (flow updates, of anyone). */
  get updates(): number {
    return this.#updates;
  }

  /** How many flow monitors the engine has started or tried to (one per bridge, again after one dies). */
  get monitorStarts(): number {
    return this.#monitorStarts;
  }

  /** The process ids of the running flow monitors, by bridge. */
  get monitorPids(): ReadonlyMap<string, number> {
    return new Map([...this.#monitors].map(([bridge, m]) => [bridge, m.pid]));
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
    const generation = this.#generation;
    await ensureBridges(state, this.#ovsdb);
    const warnings = await this.#monitor(state.bridges.map((b) => b.name));
    await this.#settle(state.bridges.map((b) => b.name)); // every update already sent reaches the memory first
    const held = new Map<string, FlowMessage[]>();
    const known = this.#known;
    this.#known = new Map();
    this.#held = held;
    let kept = new Map<string, BridgeMemory>();
    try {
      let planned = await this.#plan(state, remote, known);
      // The switch changed while planning: those bridges again, from a dump, so nothing is sent against what was.
      const changed = [...held.keys()].filter((bridge) => changesBridge(held.get(bridge)));
      if (changed.length > 0) {
        for (const bridge of changed) known.delete(bridge);
        held.clear();
        planned = await this.#plan(state, remote, known);
      }
      const { report, after, current } = planned;
      await send(report, this.#env);
      // What came meanwhile must be this bundle's own updates; the rest of them come to the memory as they arrive.
      for (const plan of report.bridges) {
        const flows = after.get(plan.bridge);
        const before = current.get(plan.bridge);
        if (!this.#monitors.has(plan.bridge) || flows === undefined || before === undefined) continue;
        const memory = new BridgeMemory(flows, expectedUpdates(before, flows, plan));
        if ((held.get(plan.bridge) ?? []).every((m) => memory.take(m))) kept.set(plan.bridge, memory);
      }
      report.warnings.push(...warnings);
      return report;
    } catch (err) {
      kept = new Map();
      throw err;
    } finally {
      this.#held = null;
      if (generation === this.#generation) this.#known = kept;
    }
  }

  /**
   * Waits until each remembered bridge has seen its last bundle's updates, or its monitor's
   * barrier says they will not come (the memory is given up then) — updates usually arrive
   * within a millisecond or two of the bundle, a barrier's reply at ovs-vswitchd's next turn —
   * and until each of `toDump` that is not remembered has had every update sent so far (a
   * barrier): a dump after that is older than every update that comes after it.
   */
  async #settle(toDump: readonly string[]): Promise<void> {
    const drain = toDump.filter((bridge) => !this.#known.has(bridge));
    await Promise.all([
      ...drain.map((bridge) => this.#monitors.get(bridge)?.barrier().catch(() => undefined)),
      ...[...this.#known].map(async ([bridge, memory]) => {
        const monitor = this.#monitors.get(bridge);
        if (memory.settled) return;
        if (monitor !== undefined) await Promise.race([memory.whenSettled(), monitor.barrier().catch(() => undefined)]);
        if (!memory.settled && this.#known.get(bridge) === memory) this.#known.delete(bridge);
      }),
    ]);
  }

  /** Compiles and plans against the memory, dumping the bridges it lacks. */
  async #plan(state: State, remote: readonly ServiceLocation[], known: ReadonlyMap<string, BridgeMemory>): Promise<Planned & { current: Map<string, BridgeFlows> }> {
    const current = new Map<string, BridgeFlows>();
    const planned = await planAll(state, this.ports, { ovsdb: this.#ovsdb, env: this.#env, remote }, async (bridge) => {
      let flows = known.get(bridge)?.flows;
      if (flows === undefined) {
        this.#dumps++;
        flows = await dumped(bridge, this.#env);
      }
      current.set(bridge, flows);
      return flows;
    });
    return { ...planned, current };
  }

  /** Runs a flow monitor on each of `bridges` (and none on others); warnings for those it cannot watch. */
  async #monitor(bridges: readonly string[]): Promise<string[]> {
    if (this.#closed !== null) return [];
    const wanted = new Set(bridges);
    for (const [bridge, monitor] of this.#monitors) {
      if (wanted.has(bridge)) continue;
      this.#monitors.delete(bridge);
      await monitor.stop();
    }
    const warnings: string[] = [];
    await Promise.all(
      bridges
        .filter((bridge) => !this.#monitors.has(bridge))
        .map(async (bridge) => {
          let monitor: FlowMonitor | undefined;
          try {
            this.#monitorStarts++;
            monitor = await FlowMonitor.start({
              bridge,
              env: this.#env,
              onMessage: (m) => this.#onMessage(bridge, m),
              onExit: () => {
                if (monitor === undefined || this.#monitors.get(bridge) !== monitor) return;
                this.#monitors.delete(bridge); // the next reconcile starts another and dumps
                this.#known.delete(bridge);
              },
            });
          } catch (err) {
            warnings.push(`bridge ${bridge}: no flow monitor (${describeError(err)}): every reconcile dumps it`);
            return;
          }
          if (this.#closed !== null) await monitor.stop();
          else this.#monitors.set(bridge, monitor);
        }),
    );
    return warnings;
  }

  #onMessage(bridge: string, m: FlowMessage): void {
    this.#updates++;
    if (this.#held !== null) {
      const held = this.#held.get(bridge) ?? [];
      if (held.length < MAX_HELD_MESSAGES) held.push(m);
      else held[0] = { type: "abbrev" }; // too many to check: an unknown change, so not kept
      this.#held.set(bridge, held);
      return;
    }
    const memory = this.#known.get(bridge);
    if (memory !== undefined && !memory.take(m)) this.#known.delete(bridge); // not remembered: the next reconcile dumps it
  }

  /** Stops the ports monitor and the flow monitors (their processes ended when it resolves). */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#watch.close();
      const monitors = [...this.#monitors.values()];
      this.#monitors.clear();
      this.#known = new Map();
      await Promise.all(monitors.map((m) => m.stop()));
    })();
    return this.#closed;
  }
}
