/**
 * Desired state → the flows each bridge should have (the rules are in model.ts's header). Pure:
 * the switch's ports come in as an argument, so a compile is tested without a switch and a plan
 * compares its output with what the switch has.
 *
 * Every flow comes out canonical (ofctl.ts `Flow`), ready for plan.ts. The flows of containers,
 * remote services, the mesh port and table 1 are built from fixed templates, so they are written
 * canonical directly — exactly what `parseFlowSpec(spec, bridge's ports)` would make of their
 * `spec` (test/flows/compile.test.ts checks it over many shapes) at a fraction of the cost
 * (where parsing 20,000 of them took ~400 ms). Static flows, written by users, go through
 * `parseFlowSpec` with the bridge's port names (`ownedFlows`). Two memos make a compile of an
 * unchanged registry cheap without changing its result: owners' cookies, and each container's
 * flows of the last compile (handed out again, the same objects, while its address, services
 * and ofport are the same).
 */
import { StoaError, describeError } from "../core/errors.ts";
import { outputAction } from "./flow-syntax.ts";
import { fieldNamed, fieldValue, portName } from "./flow-values.ts";
import { cookieHex, cookieOf, hostAddress, type Container, type Service, type ServiceLocation, type State } from "./model.ts";
import { parseFlowSpec, type Flow } from "./ofctl.ts";
import type { OwnedFlow } from "./plan.ts";

/** A port of the switch as OVSDB reports it. */
export interface SwitchPort {
  bridge: string;
  ofport: number;
}

/** A flow to have, in add-flow syntax with its cookie, and canonical (what `parseFlowSpec` reads `spec` into). */
export interface DesiredFlow {
  /** Null for a static flow: `ownedFlows` parses it against the bridge's ports. */
  flow: Flow | null;
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

/** The lowest OpenFlow 1.0 reserved port (IN_PORT): a number below it is printed as itself. */
const FIRST_RESERVED_PORT = 0xfff8;

/** Cookies of one owner (a container, or a remote node), and its inbound flows' learn action. */
interface OwnerCookies {
  cookie: bigint;
  /** `learn(…,cookie=<learned>,…),` — the actions of its inbound flows but the output. */
  learn: string;
}
/**
 * Owners' cookies, kept across compiles: hashing every container id again (FNV over BigInt) was
 * half of a compile's time. Cleared when full.
 */
const ownerCookies = { container: new Map<string, OwnerCookies>(), remote: new Map<string, OwnerCookies>() };
const MAX_CACHED_OWNERS = 1 << 18;

function cookiesOf(kind: "container" | "remote", owner: string): OwnerCookies {
  const cache = ownerCookies[kind];
  const cached = cache.get(owner);
  if (cached !== undefined) return cached;
  const learned = cookieOf(kind === "container" ? "learnedContainer" : "learnedRemote", owner);
  // Canonical (flow-syntax.ts's learn order: table, hard_timeout, priority, flags, cookie, specs).
  const learn = `learn(table=1,hard_timeout=${LEARN_TIMEOUT_S},priority=110,delete_learned,cookie=${cookieHex(learned)},NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),`;
  const out = { cookie: cookieOf(kind, owner), learn };
  if (cache.size >= MAX_CACHED_OWNERS) cache.clear();
  cache.set(owner, out);
  return out;
}

/** A container's flows as the last compile made them, and what they were made of. */
interface CompiledContainer {
  /** A copy of what the flows depend on (the caller's objects may change). */
  made: Made;
  ofport: number;
  flows: DesiredFlow[];
}
type Made = Pick<Container, "bridge" | "ipv4_address"> & { services: Pick<Service, "protocol" | "port" | "exposed">[] };

const madeOf = (c: Container): Made => ({ bridge: c.bridge, ipv4_address: c.ipv4_address, services: c.services.map((s) => ({ protocol: s.protocol, port: s.port, exposed: s.exposed })) });
/**
 * Each container's flows from the last compile, by id: a container with the same address,
 * services and ofport gets the very same flows (objects included, which plan.ts compares first),
 * so a compile of 10,000 unchanged containers builds no strings. Replaced by every compile: a
 * container gone is forgotten.
 */
let lastCompiled = new Map<string, CompiledContainer>();

/** The fields of `c` its flows depend on (besides its ofport) are those of `before`. */
function sameFlows(c: Container, before: Made): boolean {
  if (c.bridge !== before.bridge || c.ipv4_address !== before.ipv4_address || c.services.length !== before.services.length) return false;
  return c.services.every((s, i) => {
    const b = before.services[i]!;
    return s.protocol === b.protocol && s.port === b.port && s.exposed === b.exposed;
  });
}

/** An ofport as a match value and as an output action, canonical (a reserved port by its name). */
const portText = (ofport: number): string => (ofport < FIRST_RESERVED_PORT ? String(ofport) : portName(String(ofport), undefined, "in_port"));
const outputText = (ofport: number): string => (ofport < FIRST_RESERVED_PORT ? `output:${ofport}` : outputAction(ofport));

/** A flow of table 0 or 1 without timeouts, and its add-flow text. */
function templated(cookie: bigint, table: number, priority: number, match: string, actions: string, owner: string): DesiredFlow {
  const spec = `cookie=${cookieHex(cookie)},table=${table},priority=${priority}${match === "" ? "" : `,${match}`},actions=${actions}`;
  return { flow: { cookie, table, priority, idleTimeout: 0, hardTimeout: 0, match, actions }, spec, owner };
}

/** An inbound flow: to `address`:`port` over `protocol` (null: a peer's address under a /0 mask, any), learn the way back, out of `ofport`. */
function inbound(cookies: OwnerCookies, protocol: string, address: string | null, port: number, ofport: number, owner: string): DesiredFlow {
  return templated(cookies.cookie, 0, PRIORITY.service, `${protocol}${address === null ? "" : `,nw_dst=${address}`},tp_dst=${port}`, `${cookies.learn}${outputText(ofport)}`, owner);
}

/** What comes in from `ofport` looks up the learned return paths in table 1. */
function returnPath(cookie: bigint, ofport: number, owner: string): DesiredFlow {
  return templated(cookie, 0, PRIORITY.returnPath, `in_port=${portText(ofport)}`, "resubmit(,1)", owner);
}

/** A peer's service address, canonical as a match value (peers send text: it is checked here). */
function remoteAddress(r: ServiceLocation, bridge: string): string | null {
  try {
    return fieldValue(fieldNamed("nw_dst"), r.ip, undefined);
  } catch (err) {
    throw new StoaError("config", `bridge ${bridge}: node ${r.node}: service ${r.service}: ${describeError(err)}`);
  }
}

/**
 * The canonical flows of one bridge's `desired`: the compiled ones as they are, the static ones
 * parsed (`parseFlowSpec`) with `ports`' names of that bridge.
 * @throws StoaError("config") naming the bridge and the flow's owner.
 */
export function ownedFlows(bridge: string, desired: readonly DesiredFlow[], ports: ReadonlyMap<string, SwitchPort>): OwnedFlow[] {
  let bridgePorts: Map<string, number> | undefined;
  return desired.map((d) => {
    if (d.flow !== null) return { flow: d.flow, owner: d.owner };
    if (bridgePorts === undefined) {
      bridgePorts = new Map();
      for (const [name, port] of ports) if (port.bridge === bridge && port.ofport > 0) bridgePorts.set(name, port.ofport);
    }
    try {
      return { flow: parseFlowSpec(d.spec, bridgePorts), owner: d.owner };
    } catch (err) {
      throw new StoaError("config", `bridge ${bridge}: ${d.owner}: ${describeError(err)}`);
    }
  });
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
        return { flow: null, spec: `cookie=${staticCookie},${text.trim()}`, owner: `static flow ${i + 1} of ${bridge.name}` };
      }),
    );
  }
  const waiting: WaitingContainer[] = [];
  const withDefault = new Set<string>();
  const previous = lastCompiled;
  const compiledNow = new Map<string, CompiledContainer>();
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
    withDefault.add(c.bridge);
    const before = previous.get(c.container_id);
    if (before !== undefined && before.ofport === port.ofport && sameFlows(c, before.made)) {
      for (const f of before.flows) flows.push(f);
      compiledNow.set(c.container_id, before);
      continue;
    }
    const cookies = cookiesOf("container", c.container_id);
    const owner = `container ${c.container_id}`;
    const address = hostAddress(c.ipv4_address);
    const mine: DesiredFlow[] = [];
    for (const s of c.services) {
      if (s.exposed) mine.push(inbound(cookies, s.protocol, address, s.port, port.ofport, owner));
    }
    mine.push(returnPath(cookies.cookie, port.ofport, owner));
    for (const f of mine) flows.push(f);
    compiledNow.set(c.container_id, { made: madeOf(c), ofport: port.ofport, flows: mine });
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
        flows.push(inbound(cookiesOf("remote", r.node), r.protocol, remoteAddress(r, mesh.bridge), r.port, mesh.ofport, `node ${r.node}`));
      }
      if (seen.size > 0) {
        flows.push(returnPath(cookieOf("static", mesh.bridge), mesh.ofport, `mesh port of ${mesh.bridge}`));
        withDefault.add(mesh.bridge);
      }
    }
  }
  lastCompiled = compiledNow;
  for (const bridge of withDefault) {
    bridges.get(bridge)!.push(templated(cookieOf("static", bridge), 1, PRIORITY.defaultLearned, "", "NORMAL", `table 1 of ${bridge}`));
  }
  return { bridges, waiting, unrouted };
}
