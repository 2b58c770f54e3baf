/**
 * stoa flows — the data model: the desired state (a JSON file, or the registry of `stoa flows
 * serve`), how it compiles to OpenFlow flows, the cookies that mark stoa's flows on a switch, and
 * the plan that `plan` prints and `apply` sends. Field names are the seed's (op-dbus).
 *
 * ## Desired state
 *
 *   {"node": "oo1424oo",
 *    "bridges": [{"name": "vmbr0", "flows": ["priority=10,actions=normal"], "datapath_type": "netdev"}],
 *    "containers": [{"container_id": "103", "veth": "veth103", "bridge": "vmbr0",
 *                    "ipv4_address": "10.0.0.103/24",
 *                    "services": [{"name": "vector-db", "protocol": "tcp", "port": 6333, "exposed": true}]}],
 *    "peers": ["http://node2:9573"], "mesh_port": "from-mesh"}
 *
 * `bridges[].flows` are static flows in `ovs-ofctl add-flow` syntax (port names allowed; no
 * `cookie=`: stoa sets its own); `datapath_type` is optional ("netdev" for OVS's userspace
 * datapath; default: OVS's own); `subnet` is where `POST /api/containers/create` (the seed's
 * call, which names no address) takes a new container's address from. Every container's bridge is one of `bridges`; container ids,
 * veths, addresses on a bridge and service names on the node are unique. `exposed: false`
 * registers a service (answered by `query` on this node) without flows and without telling peers.
 * `mesh_port` is the port (on one of the bridges) that leads to the other nodes.
 *
 * ## Compile: flows per bridge
 *
 * For a container C with veth V (ofport pV) and address A, every exposed service (proto, port):
 *   table=0, priority=100, ip,nw_dst=A,<proto>,tp_dst=<port>
 *       actions=learn(table=1,hard_timeout=300,priority=110,delete_learned,cookie=<learned C>,
 *                     NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],output:NXM_OF_IN_PORT[]),output:pV
 *     Only traffic to A's address and that port reaches V (the seed matched the port alone, so
 *     one container captured every container's port). On the way in, the flow learns the return
 *     path: "to this client's MAC, out of the port it came from".
 *   table=0, priority=90, in_port=pV  actions=resubmit(,1)
 *     What C sends (its replies) goes to table 1, where the learned return paths are — the
 *     seed's learned flows sat in a table nothing looked at. (A packet from C to a service still
 *     takes that service's priority-100 flow.)
 * For each bridge with a container: table=1, priority=0 actions=NORMAL (no learned path yet:
 * ordinary switching). A learned flow lives 300 s after it was last refreshed by a request
 * (hard_timeout, relearned by every request); `delete_learned` removes C's learned flows with C.
 * For a service of another node (from the peers), on the bridge holding `mesh_port` (ofport pM):
 *   table=0, priority=100, ip,nw_dst=<its address>,<proto>,tp_dst=<port>
 *       actions=learn(… cookie=<learned node> …),output:pM
 *   and table=0, priority=90, in_port=pM actions=resubmit(,1) for the replies that come back.
 * Static flows go as written, in their table (default 0). OVS's own default flow (priority 0,
 * NORMAL, cookie 0) is not stoa's and stays. A container whose veth has no ofport yet (not on
 * the bridge, or OVS has not opened it) gets no flows: the plan lists it as waiting, and the
 * server reconciles when OVSDB reports its port.
 *
 * ## Cookies
 *
 * Every flow stoa installs carries a cookie `0x57a0_KK_HHHHHHHHHH`: the top 16 bits 0x57a0 say
 * "stoa", the next 8 the kind, the low 40 a hash (FNV-1a 64, folded) of what the flow belongs to:
 *   kind 1 static   (of the bridge name: the bridge's static flows and table-1 default)
 *   kind 2 container (of container_id)       kind 3 learned for a container (same hash)
 *   kind 4 remote   (of the node name)       kind 5 learned for a remote node (same hash)
 * A plan reads the bridge's flows, keeps those under 0x57a0/0xffff000000000000, and leaves the
 * learned kinds (3, 5) alone: OVS adds and expires them. Everything else on the switch is
 * foreign and never touched; a desired flow that would replace a foreign one (same table,
 * priority and match) is an error, not an overwrite. (The server's engine plans against its
 * memory of the bridge between dumps, kept true by a flow monitor — reconcile.ts: a foreign
 * flow's update makes its next reconcile dump the bridge, so the guarantee holds as on the
 * one-shot path, from the last update to the bundle.)
 *
 * ## Plan
 *
 * Per bridge: desired flows and stoa's current flows (a dump, or for the server the engine's
 * memory of the last reconcile: reconcile.ts) compared in canonical form (ofctl.ts), by
 * table + priority + match: a key only desired → `add`; only current → `delete_strict`
 * (restricted to its cookie); both with other actions → `modify_strict`; other cookie or
 * timeouts → `delete_strict` + `add`. Those lines are the plan — `stoa flows plan` prints them,
 * one `# bridge …` line first per bridge, exactly as `apply` sends them to `ovs-ofctl --bundle
 * add-flows BR -`: one transaction per bridge, all or nothing, so there is never a moment with
 * half the flows or none. Applying the same state again plans nothing and sends nothing.
 */
import { z } from "zod";
import { StoaError, describeError } from "../core/errors.ts";
import { readSmallFile } from "../core/smallfile.ts";

/** A state file is JSON of at most this size (100,000 containers fit). */
const MAX_STATE_BYTES = 64 * 1024 * 1024;

/** A network interface name as Linux takes it (IFNAMSIZ 16 with the NUL). */
const IFNAME = /^[A-Za-z0-9_.:-]{1,15}$/;
/** Ids and names of containers, services and nodes. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Static flows per bridge, containers and peers a state may have. */
export const FLOWS_LIMITS = {
  staticFlowsPerBridge: 10_000,
  flowTextBytes: 4096,
  bridges: 64,
  containers: 100_000,
  servicesPerContainer: 256,
  peers: 256,
} as const;

const ipv4Part = "(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)";
const IPV4_CIDR = new RegExp(`^${ipv4Part}(\\.${ipv4Part}){3}(/(3[0-2]|[12]?\\d))?$`);

export const ServiceSchema = z.object({
  name: z.string().regex(NAME, "a service name: letters, digits, . _ - (up to 64), starting with a letter or digit"),
  protocol: z.enum(["tcp", "udp"]),
  port: z.number().int().min(1).max(65535),
  exposed: z.boolean().default(true),
});

export const ContainerSchema = z.object({
  container_id: z.string().regex(NAME, "a container id: letters, digits, . _ - (up to 64)"),
  veth: z.string().regex(IFNAME, "an interface name of 1-15 characters (letters, digits, _ . : -)"),
  bridge: z.string().regex(IFNAME, "a bridge name of 1-15 characters"),
  ipv4_address: z.string().regex(IPV4_CIDR, "an IPv4 address with an optional prefix, e.g. 10.0.0.103/24"),
  services: z.array(ServiceSchema).max(FLOWS_LIMITS.servicesPerContainer).default([]),
});

export const BridgeSchema = z.object({
  name: z.string().regex(IFNAME, "a bridge name of 1-15 characters"),
  flows: z.array(z.string().min(1).max(FLOWS_LIMITS.flowTextBytes)).max(FLOWS_LIMITS.staticFlowsPerBridge).default([]),
  datapath_type: z.string().regex(/^[a-z]{1,16}$/).optional(),
  subnet: z.string().regex(IPV4_CIDR, "a subnet, e.g. 10.0.0.0/24").optional(),
});

export const StateSchema = z
  .object({
    node: z.string().regex(NAME, "a node name: letters, digits, . _ - (up to 64)"),
    bridges: z.array(BridgeSchema).min(1).max(FLOWS_LIMITS.bridges),
    containers: z.array(ContainerSchema).max(FLOWS_LIMITS.containers).default([]),
    peers: z.array(z.url({ protocol: /^https?$/ })).max(FLOWS_LIMITS.peers).default([]),
    mesh_port: z.string().regex(IFNAME).optional(),
  })
  .superRefine((state, ctx) => {
    const issue = (path: (string | number)[], message: string): void => ctx.addIssue({ code: "custom", path, message });
    const bridges = new Set<string>();
    state.bridges.forEach((b, i) => {
      if (bridges.has(b.name)) issue(["bridges", i, "name"], `bridge ${b.name} is listed twice`);
      bridges.add(b.name);
    });
    const ids = new Map<string, number>();
    const veths = new Map<string, number>();
    const addresses = new Map<string, number>();
    const services = new Map<string, string>();
    state.containers.forEach((c, i) => {
      if (!bridges.has(c.bridge)) issue(["containers", i, "bridge"], `container ${c.container_id} is on bridge ${c.bridge}, which is not in "bridges"`);
      const seen = (map: Map<string, number>, key: string, field: string, what: string): void => {
        const other = map.get(key);
        if (other !== undefined) issue(["containers", i, field], `${what} is also container ${state.containers[other]!.container_id}'s`);
        else map.set(key, i);
      };
      seen(ids, c.container_id, "container_id", `container id ${c.container_id}`);
      seen(veths, c.veth, "veth", `veth ${c.veth}`);
      seen(addresses, `${c.bridge} ${hostAddress(c.ipv4_address)}`, "ipv4_address", `address ${hostAddress(c.ipv4_address)} on ${c.bridge}`);
      c.services.forEach((s, j) => {
        const owner = services.get(s.name);
        if (owner !== undefined) issue(["containers", i, "services", j, "name"], `service ${s.name} is also offered by container ${owner}`);
        else services.set(s.name, c.container_id);
      });
    });
  });

export type Service = z.infer<typeof ServiceSchema>;
export type Container = z.infer<typeof ContainerSchema>;
export type Bridge = z.infer<typeof BridgeSchema>;
export type State = z.infer<typeof StateSchema>;

/** A service as `query` answers it (the seed's QueryService reply). */
export interface ServiceLocation {
  service: string;
  container_id: string;
  node: string;
  ip: string;
  port: number;
  protocol: "tcp" | "udp";
}

/** A desired state from JSON: zod's verdict as one StoaError("config") naming each problem's path. */
export function parseState(json: unknown, what: string): State {
  const parsed = StateSchema.safeParse(json);
  if (parsed.success) return parsed.data;
  const problems = parsed.error.issues.slice(0, 10).map((issue) => `  ${issue.path.join(".") || "(top)"}: ${issue.message}`);
  const more = parsed.error.issues.length > 10 ? `\n  … and ${parsed.error.issues.length - 10} more` : "";
  throw new StoaError("config", `${what} is not a valid flows state:\n${problems.join("\n")}${more}`);
}

/** The state in `path` (JSON, see model.ts). */
export function readStateFile(path: string): State {
  const text = readSmallFile(path, { maxBytes: MAX_STATE_BYTES, what: "flows state file", fix: "give --state a JSON file like the one in `stoa flows plan --help`" });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new StoaError("config", `${path} is not JSON: ${describeError(err)}`);
  }
  return parseState(json, path);
}

/** "10.0.0.103/24" → "10.0.0.103". */
export function hostAddress(cidr: string): string {
  const slash = cidr.indexOf("/");
  return slash < 0 ? cidr : cidr.slice(0, slash);
}

/** The services of a state, as query answers them. */
export function locations(state: State): ServiceLocation[] {
  return state.containers.flatMap((c) =>
    c.services.map((s) => ({ service: s.name, container_id: c.container_id, node: state.node, ip: hostAddress(c.ipv4_address), port: s.port, protocol: s.protocol })),
  );
}

// ---- cookies ----

export const COOKIE_PREFIX = 0x57a0n << 48n;
export const COOKIE_PREFIX_MASK = 0xffffn << 48n;
export const COOKIE_KIND = { static: 1n, container: 2n, learnedContainer: 3n, remote: 4n, learnedRemote: 5n } as const;
type CookieKind = keyof typeof COOKIE_KIND;
const HASH_MASK = (1n << 40n) - 1n;

/**
 * FNV-1a 64 of the UTF-8 bytes, folded to 40 bits. The 64-bit state is four 16-bit limbs (h3
 * highest) in plain numbers — a compile hashes every container's id, and BigInt arithmetic per
 * byte cost more than the rest of the compile. The prime 0x100000001b3 is 2^40 + 0x1b3: h × it
 * is h × 0x1b3 plus h shifted up 40 bits (h0 and h1's low byte land in limbs 2 and 3).
 */
function hash40(text: string): bigint {
  let h0 = 0x2325;
  let h1 = 0x8422;
  let h2 = 0x9ce4;
  let h3 = 0xcbf2;
  const ascii = /^[\x00-\x7f]*$/.test(text);
  const bytes = ascii ? undefined : Buffer.from(text);
  const length = bytes === undefined ? text.length : bytes.length;
  for (let i = 0; i < length; i++) {
    h0 ^= bytes === undefined ? text.charCodeAt(i) : bytes[i]!;
    const t0 = h0 * 0x1b3;
    const t1 = h1 * 0x1b3 + (t0 >>> 16);
    const t2 = h2 * 0x1b3 + (t1 >>> 16) + ((h0 & 0xff) << 8);
    const t3 = h3 * 0x1b3 + (t2 >>> 16) + (h0 >>> 8) + ((h1 & 0xff) << 8);
    h0 = t0 & 0xffff;
    h1 = t1 & 0xffff;
    h2 = t2 & 0xffff;
    h3 = t3 & 0xffff;
  }
  const h = (BigInt(h3) << 48n) | (BigInt(h2) << 32n) | (BigInt(h1) << 16n) | BigInt(h0);
  return (h ^ (h >> 40n)) & HASH_MASK;
}

/** The cookie of `kind` for `owner` (a bridge name, a container id or a node name). */
export function cookieOf(kind: CookieKind, owner: string): bigint {
  return COOKIE_PREFIX | (COOKIE_KIND[kind] << 40n) | hash40(owner);
}

/** Kind number → its name (a plan asks for every flow of a dump). */
const KIND_NAMES = new Map<bigint, CookieKind>(Object.entries(COOKIE_KIND).map(([name, value]) => [value, name as CookieKind]));

/** The kind of a cookie of stoa's, or null for a foreign one. */
export function cookieKind(cookie: bigint): CookieKind | null {
  if ((cookie & COOKIE_PREFIX_MASK) !== COOKIE_PREFIX) return null;
  return KIND_NAMES.get((cookie >> 40n) & 0xffn) ?? null;
}

/** Flows OVS learns and expires by itself: a plan neither adds nor deletes them. */
export function isLearnedCookie(cookie: bigint): boolean {
  const kind = cookieKind(cookie);
  return kind === "learnedContainer" || kind === "learnedRemote";
}

/** "0x57a0020000000abc". */
export function cookieHex(cookie: bigint): string {
  return `0x${cookie.toString(16)}`;
}
