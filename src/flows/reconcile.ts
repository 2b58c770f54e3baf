/**
 * One reconcile of a desired state with the switch: read the ports (OVSDB), compile
 * (compile.ts), read each bridge's flows (`ovs-ofctl dump-flows`), plan (plan.ts) and — for
 * `applyState` — send each bridge's plan as one bundle. `planState` changes nothing; `applyState`
 * first makes the bridges exist (and, asked, the containers' ports: `attachVeths`), then plans
 * and applies. The CLI (`stoa flows plan|apply`) and the server
 * (`stoa flows serve`) both call these.
 */
import { StoaError, describeError } from "../core/errors.ts";
import { compile, type WaitingContainer } from "./compile.ts";
import { interfaceExists } from "./container.ts";
import type { Container, ServiceLocation, State } from "./model.ts";
import { applyFlowMods, dumpFlows, parseFlowSpec, type Flow } from "./ofctl.ts";
import type { OvsdbClient } from "./ovsdb.ts";
import { planBridge, type BridgePlan, type OwnedFlow } from "./plan.ts";

/** How long apply waits for OVS to give new ports their ofport. */
const PORT_WAIT_MS = 5_000;

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

async function plans(state: State, access: SwitchAccess, existing: ReadonlySet<string>): Promise<Report> {
  const ports = await access.ovsdb.ports();
  const compiled = compile(state, ports, access.remote ?? []);
  const bridges: BridgeReport[] = [];
  for (const [bridge, desired] of compiled.bridges) {
    const bridgePorts = new Map<string, number>();
    for (const [name, port] of ports) if (port.bridge === bridge && port.ofport > 0) bridgePorts.set(name, port.ofport);
    const owned: OwnedFlow[] = desired.map((d) => {
      try {
        return { flow: parseFlowSpec(d.spec, bridgePorts), owner: d.owner };
      } catch (err) {
        throw new StoaError("config", `bridge ${bridge}: ${d.owner}: ${describeError(err)}`);
      }
    });
    const exists = existing.has(bridge);
    // All of the bridge's flows: stoa's to diff, the others to make sure none is replaced.
    const current: Flow[] = exists ? await dumpFlows(bridge, { cookie: 0n, mask: 0n, env: access.env }) : [];
    bridges.push({ ...planBridge(bridge, owned, current), exists });
  }
  const warnings: string[] = [];
  const userspace = state.bridges.filter((b) => b.datapath_type === "netdev").map((b) => b.name);
  if (userspace.length > 0 && state.containers.length > 0 && (await access.ovsdb.otherConfig("userspace-tso-enable")) !== "true") {
    warnings.push(
      `bridge${userspace.length === 1 ? "" : "s"} ${userspace.join(", ")} use${userspace.length === 1 ? "s" : ""} the userspace datapath without userspace TSO: TCP from a veth arrives with a partial checksum and is dropped. ` +
        "Run: ovs-vsctl set Open_vSwitch . other_config:userspace-tso-enable=true, then restart ovs-vswitchd",
    );
  }
  return { node: state.node, bridges, waiting: compiled.waiting, unrouted: compiled.unrouted, warnings, changes: bridges.reduce((n, b) => n + b.mods.length, 0) };
}

/**
 * Puts each container's veth that exists here (in this network namespace) and is not a port of
 * its bridge on it, then waits for OVS to number them.
 */
export async function attachVeths(containers: readonly Container[], ovsdb: OvsdbClient): Promise<void> {
  const before = await ovsdb.ports();
  const added: string[] = [];
  for (const c of containers) {
    if (before.get(c.veth)?.bridge === c.bridge || !interfaceExists(c.veth)) continue;
    await ovsdb.ensurePort(c.bridge, c.veth);
    added.push(c.veth);
  }
  await waitForOfports(ovsdb, added);
}

/** What `applyState` would send now; changes nothing. */
export async function planState(state: State, access: SwitchAccess): Promise<Report> {
  return plans(state, access, new Set(await access.ovsdb.bridges()));
}

/**
 * Makes the switch hold `state`'s flows: bridges created, with `ensurePorts` the containers'
 * veths attached (`attachVeths`: `stoa flows apply`; the server attaches a veth once, when its
 * container registers, and otherwise follows the ports as OVSDB reports them, so a runtime that
 * takes a container's port off the bridge takes its flows with it), then one bundle per bridge.
 * A bundle OVS refuses changes nothing on that bridge and fails the apply with OVS's message.
 */
export async function applyState(state: State, access: SwitchAccess & { ensurePorts: boolean }): Promise<Report> {
  const { ovsdb } = access;
  for (const bridge of state.bridges) await ovsdb.ensureBridge(bridge.name, bridge.datapath_type === undefined ? {} : { datapathType: bridge.datapath_type });
  if (access.ensurePorts) await attachVeths(state.containers, ovsdb);
  const report = await plans(state, access, new Set(state.bridges.map((b) => b.name)));
  const applied: string[] = [];
  for (const bridge of report.bridges) {
    if (bridge.mods.length === 0) continue;
    try {
      await applyFlowMods(bridge.bridge, bridge.mods, { env: access.env });
    } catch (err) {
      const done = applied.length === 0 ? "" : ` (bridges already applied: ${applied.join(", ")})`;
      throw new StoaError("io", `bridge ${bridge.bridge}: OVS refused the plan; nothing changed on ${bridge.bridge}${done}: ${describeError(err)}`);
    }
    applied.push(bridge.bridge);
  }
  return report;
}
