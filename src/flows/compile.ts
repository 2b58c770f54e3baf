/**
 * Desired state → the flows each bridge should have (the rules are in model.ts's header). Pure:
 * the switch's ports come in as an argument, so a compile is tested without a switch and a plan
 * compares its output with what the switch has.
 */
import { StoaError } from "../core/errors.ts";
import { cookieHex, cookieOf, hostAddress, type ServiceLocation, type State } from "./model.ts";

/** A port of the switch as OVSDB reports it. */
export interface SwitchPort {
  bridge: string;
  ofport: number;
}

/** A flow to have, in add-flow syntax with its cookie (ofctl.ts parseFlowSpec canonicalizes it). */
export interface DesiredFlow {
  spec: string;
  /** What it belongs to, for messages: "static flow 3 of vmbr0", "container 103", "node node2". */
  owner: string;
}

/** A container that gets no flows yet: its veth is not a port of its bridge with an ofport. */
export interface WaitingContainer {
  container_id: string;
  veth: string;
  bridge: string;
  reason: string;
}

export interface Compiled {
  /** Every bridge of the state, in its order, with its flows (possibly none). */
  bridges: Map<string, DesiredFlow[]>;
  waiting: WaitingContainer[];
  /** Remote services that got no flow, and why (no mesh_port, or it has no ofport). */
  unrouted: { service: ServiceLocation; reason: string }[];
}

/** The learned return path of the inbound flows (model.ts). */
const LEARN_TIMEOUT_S = 300;
const PRIORITY = { service: 100, returnPath: 90, defaultLearned: 0 } as const;

function learnThenOutput(learnedCookie: bigint, ofport: number): string {
  return `learn(table=1,hard_timeout=${LEARN_TIMEOUT_S},priority=110,delete_learned,cookie=${cookieHex(learnedCookie)},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:${ofport}`;
}

/** "cookie=…" anywhere among a flow's fields (before actions=). */
const USER_COOKIE = /(^|[,\s])cookie\s*=/i;

/**
 * The flows of `state` on a switch with `ports` (interface name → bridge and ofport), plus
 * `remote` services of other nodes (routed through `mesh_port`).
 * @example
 *   compile(state, new Map([["veth103", { bridge: "vmbr0", ofport: 3 }]])).bridges.get("vmbr0")
 */
export function compile(state: State, ports: ReadonlyMap<string, SwitchPort>, remote: readonly ServiceLocation[] = []): Compiled {
  const bridges = new Map<string, DesiredFlow[]>();
  for (const bridge of state.bridges) {
    const staticCookie = cookieHex(cookieOf("static", bridge.name));
    bridges.set(
      bridge.name,
      bridge.flows.map((text, i) => {
        const before = text.split(/actions\s*=/i)[0] ?? text;
        if (USER_COOKIE.test(before)) throw new StoaError("config", `static flow ${i + 1} of bridge ${bridge.name} sets cookie=: remove it (stoa marks its flows with its own cookie)`);
        return { spec: `cookie=${staticCookie},${text.trim()}`, owner: `static flow ${i + 1} of ${bridge.name}` };
      }),
    );
  }
  const waiting: WaitingContainer[] = [];
  const withDefault = new Set<string>();
  for (const c of state.containers) {
    const port = ports.get(c.veth);
    const flows = bridges.get(c.bridge)!;
    if (port === undefined || port.ofport <= 0) {
      waiting.push({ container_id: c.container_id, veth: c.veth, bridge: c.bridge, reason: `${c.veth} is not a port of ${c.bridge} with an ofport yet` });
      continue;
    }
    if (port.bridge !== c.bridge) {
      waiting.push({ container_id: c.container_id, veth: c.veth, bridge: c.bridge, reason: `${c.veth} is a port of ${port.bridge}, not of ${c.bridge}` });
      continue;
    }
    const cookie = cookieHex(cookieOf("container", c.container_id));
    const learned = cookieOf("learnedContainer", c.container_id);
    const owner = `container ${c.container_id}`;
    const address = hostAddress(c.ipv4_address);
    for (const s of c.services) {
      if (!s.exposed) continue;
      flows.push({ spec: `cookie=${cookie},table=0,priority=${PRIORITY.service},${s.protocol},nw_dst=${address},tp_dst=${s.port},actions=${learnThenOutput(learned, port.ofport)}`, owner });
    }
    flows.push({ spec: `cookie=${cookie},table=0,priority=${PRIORITY.returnPath},in_port=${port.ofport},actions=resubmit(,1)`, owner });
    withDefault.add(c.bridge);
  }
  const unrouted: Compiled["unrouted"] = [];
  const meshRoutes = remote.filter((r) => r.node !== state.node);
  if (meshRoutes.length > 0) {
    const mesh = state.mesh_port === undefined ? undefined : ports.get(state.mesh_port);
    const why = state.mesh_port === undefined ? "the state has no mesh_port" : mesh === undefined || mesh.ofport <= 0 ? `mesh_port ${state.mesh_port} has no ofport` : !bridges.has(mesh.bridge) ? `mesh_port ${state.mesh_port} is on ${mesh.bridge}, not one of the state's bridges` : null;
    if (why !== null || mesh === undefined) {
      for (const service of meshRoutes) unrouted.push({ service, reason: why ?? "no mesh port" });
    } else {
      const flows = bridges.get(mesh.bridge)!;
      const local = new Set(state.containers.map((c) => hostAddress(c.ipv4_address)));
      const seen = new Set<string>();
      for (const r of meshRoutes) {
        const key = `${r.protocol} ${r.ip} ${r.port}`;
        if (local.has(r.ip)) {
          unrouted.push({ service: r, reason: `${r.ip} is the address of a container on this node` });
          continue;
        }
        if (seen.has(key)) continue;
        seen.add(key);
        const cookie = cookieHex(cookieOf("remote", r.node));
        flows.push({ spec: `cookie=${cookie},table=0,priority=${PRIORITY.service},${r.protocol},nw_dst=${r.ip},tp_dst=${r.port},actions=${learnThenOutput(cookieOf("learnedRemote", r.node), mesh.ofport)}`, owner: `node ${r.node}` });
      }
      if (seen.size > 0) {
        flows.push({ spec: `cookie=${cookieHex(cookieOf("static", mesh.bridge))},table=0,priority=${PRIORITY.returnPath},in_port=${mesh.ofport},actions=resubmit(,1)`, owner: `mesh port of ${mesh.bridge}` });
        withDefault.add(mesh.bridge);
      }
    }
  }
  for (const bridge of withDefault) {
    bridges.get(bridge)!.push({ spec: `cookie=${cookieHex(cookieOf("static", bridge))},table=1,priority=${PRIORITY.defaultLearned},actions=NORMAL`, owner: `table 1 of ${bridge}` });
  }
  return { bridges, waiting, unrouted };
}
