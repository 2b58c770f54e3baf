/**
 * `stoa flows`: a service registry compiled to OpenFlow and applied atomically to Open vSwitch
 * (src/flows/: model.ts has the rules). `plan` prints what `apply` would send; `apply` sends it,
 * one bundle per bridge. Each subcommand is defined on its own and listed in `subcommands` at
 * the bottom.
 */
import { z } from "zod";
import { type Command, bool, defineCommand, defineGroup, list, str } from "./command.ts";
import { HostPort, logFlags, splitList, startService, waitFlag } from "./common.ts";
import { stateDirFlag } from "./flags.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { announceReady, onReload } from "../core/daemon.ts";
import { Duration } from "../core/duration.ts";
import { createLogger } from "../core/log.ts";
import { defaultStateDir } from "../core/paths.ts";
import { waitFor } from "../core/wait.ts";
import { isLoopback } from "../core/hostaddr.ts";
import { readTokenFile, tokenProblem } from "../core/token.ts";
import { onShutdown } from "../core/shutdown.ts";
import { createContainer, deleteContainer, vethOf } from "../flows/container.ts";
import { ContainerSchema, ServiceSchema, type Container } from "../flows/model.ts";
import { Registry } from "../flows/registry.ts";
import { startFlowsServer } from "../flows/server.ts";
import { OvsdbClient, ovsdbTarget } from "../flows/ovsdb.ts";
import { ofctlPath } from "../flows/ofctl.ts";
import { readStateFile } from "../flows/model.ts";
import { applyState, planState, type Report } from "../flows/reconcile.ts";

const EXAMPLE_STATE = `{"node": "node1",
 "bridges": [{"name": "vmbr0", "flows": ["priority=10,actions=normal"]}],
 "containers": [{"container_id": "103", "veth": "veth103", "bridge": "vmbr0", "ipv4_address": "10.0.0.103/24",
                 "services": [{"name": "vector-db", "protocol": "tcp", "port": 6333, "exposed": true}]}]}`;

const ovsdbFlag = () =>
  str("OVSDB socket (default unix:$OVS_RUNDIR/db.sock, OVS_RUNDIR default /var/run/openvswitch)", { placeholder: "unix:path" });
const stateFlag = () => str("the desired state, JSON (see the description)", { placeholder: "file", required: { example: "state.json" } });
/** plan's --state: checked in run, since exit 2 means "changes" there and a missing flag must exit 1. */
const planStateFlag = () => str("the desired state, JSON (see the description; required)", { placeholder: "file" });

/** OVS's two entry points, or the one line that says what to install. */
async function openSwitch(ovsdb: string | undefined): Promise<{ client: OvsdbClient; env: NodeJS.ProcessEnv }> {
  if (ofctlPath(process.env) === null) throw new StoaError("not_found", "ovs-ofctl is not on PATH: install Open vSwitch (apt install openvswitch-switch)");
  const target = ovsdbTarget(ovsdb, process.env);
  try {
    return { client: await OvsdbClient.connect(target), env: process.env };
  } catch (err) {
    throw new StoaError("io", describeError(err));
  }
}

function printReport(report: Report, verb: "plan" | "apply"): void {
  const out: string[] = [];
  for (const b of report.bridges) {
    const created = b.exists ? "" : " (the bridge does not exist yet: apply creates it)";
    if (b.mods.length === 0) {
      out.push(`# ${b.bridge}: no changes${created}`);
      continue;
    }
    const counts = `${b.adds} to add, ${b.modifies} to modify, ${b.deletes} to delete`;
    out.push(verb === "plan" ? `# ${b.bridge}: ${counts}${created}` : `# ${b.bridge}: applied: ${counts.replaceAll(" to ", " ")}`);
    if (verb === "plan") out.push(...b.mods);
  }
  for (const w of report.waiting) out.push(`# waiting: container ${w.container_id}: ${w.reason}`);
  for (const u of report.unrouted) out.push(`# not routed: ${u.service.service} on ${u.service.node}: ${u.reason}`);
  for (const w of report.warnings) out.push(`# warning: ${w}`);
  process.stdout.write(`${out.join("\n")}\n`);
}

const plan = defineCommand({
  name: "plan",
  summary: "print the flow changes apply would send (exit 0 none, 2 some, 1 error)",
  description:
    "Compiles the desired state (--state, JSON) to OpenFlow flows, reads each bridge's flows\n" +
    "(ovs-ofctl dump-flows) and prints the flow mods that would make the bridge match: exactly the\n" +
    "lines apply sends, one bundle per bridge, after a '# BRIDGE: …' line (ovs-ofctl add-flows reads\n" +
    "them as they are). Only flows under stoa's cookies are compared; others are never touched.\n" +
    "Exit 0: no changes; 2: changes; 1: an error (like ovs-ofctl diff-flows). Changes nothing.\n" +
    `A state:\n${EXAMPLE_STATE}`,
  flags: {
    state: planStateFlag(),
    ovsdb: ovsdbFlag(),
    json: bool("print one JSON object: {node, bridges: [{bridge, exists, adds, modifies, deletes, mods}], waiting, unrouted, warnings, changes}"),
  },
  examples: ["stoa flows plan --state state.json", "stoa flows plan --state state.json --json | jq .changes", "stoa flows plan --state state.json || [ $? = 2 ] && stoa flows apply --state state.json"],
  async run({ flags }) {
    try {
      if (flags.state === undefined) throw new StoaError("usage", "--state is required, e.g. --state state.json (see 'stoa flows plan --help')");
      const state = readStateFile(flags.state);
      const { client, env } = await openSwitch(flags.ovsdb);
      try {
        const report = await planState(state, { ovsdb: client, env });
        if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
        else printReport(report, "plan");
        return report.changes === 0 ? 0 : 2;
      } finally {
        client.close();
      }
    } catch (err) {
      // 2 means "changes" here: every error, a bad state file included, exits 1.
      process.stderr.write(`stoa flows plan: ${describeError(err)}\n`);
      return 1;
    }
  },
});

const apply = defineCommand({
  name: "apply",
  summary: "make the switch hold the state's flows: one atomic bundle per bridge",
  description:
    "Creates the state's bridges (OVSDB), adds each container's veth that exists on this host as a\n" +
    "port of its bridge, waits for OVS to number the new ports, then sends each bridge's plan (see\n" +
    "stoa flows plan) as one ovs-ofctl --bundle transaction: all of it or, when OVS refuses a flow,\n" +
    "nothing on that bridge (exit 1 with OVS's message). Flows stoa does not own are never touched;\n" +
    "applying the same state again sends nothing.",
  flags: {
    state: stateFlag(),
    ovsdb: ovsdbFlag(),
    json: bool("print one JSON object, as plan --json, of what was sent"),
  },
  examples: ["stoa flows apply --state state.json", "OVS_RUNDIR=/tmp/ovs stoa flows apply --state state.json --json"],
  async run({ flags }) {
    const state = readStateFile(flags.state);
    const { client, env } = await openSwitch(flags.ovsdb);
    try {
      const report = await applyState(state, { ovsdb: client, env, ensurePorts: true });
      if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else printReport(report, "apply");
    } finally {
      client.close();
    }
  },
});

/** The seed's API port (op-dbus served http://localhost:9573). */
const DEFAULT_PORT = 9573;
const DEFAULT_SERVER = `http://127.0.0.1:${DEFAULT_PORT}`;

const serve = defineCommand({
  name: "serve",
  summary: "the registry's HTTP API: containers and services in, flows on the switch kept in step",
  description:
    "Serves the registry: the state file's containers plus those registered through the API (kept in\n" +
    "SQLite under the state dir, so a restart keeps them), reconciled onto the switch after every\n" +
    "change — a registration, a removal, a peer's news, a port appearing or leaving (OVSDB monitor).\n" +
    "POST /api/containers (also the seed's /api/containers/create; the seed's {name, services} body makes\n" +
    "a container: a namespace on the first bridge with an address from its \"subnet\"),\n" +
    "DELETE /api/containers/ID, GET /api/services/NAME, GET /api/services, GET /api/flows (with counters),\n" +
    "POST /api/apply, GET /metrics, GET /health. Peers (the state's \"peers\" and --peers) are pulled every\n" +
    "few seconds and told at once of this node's changes, so a query on any node answers for the mesh;\n" +
    "with --redis-url every node writes its services to Redis (a key that expires unless refreshed) and reads the others'.\n" +
    "SIGHUP re-reads --state. Prints 'flows: <url>' when ready.",
  flags: {
    state: stateFlag(),
    listen: str("address and port to serve on (loopback by default: the API creates namespaces and changes flows)", { default: `127.0.0.1:${DEFAULT_PORT}`, placeholder: "host:port", schema: HostPort }),
    peers: list("other nodes' API URLs, besides the state's peers (a,b or repeated)", { placeholder: "url" }),
    redisUrl: str("also share this node's services through Redis at this URL, and read every other node's there (for meshes that outgrow a peer list)", { placeholder: "url" }),
    ovsdb: ovsdbFlag(),
    stateDir: stateDirFlag("where the registry of API-registered containers lives (flows/registry.sqlite)"),
    tokenFile: str("writes (POST, DELETE) need the token in this file (0600; one token, 22+ characters), and pushes to peers carry it; required when --listen is not loopback", { placeholder: "file" }),
    readyFile: str("once serving, write this file (JSON: pid, url, port, node) atomically; removed at exit", { placeholder: "file" }),
    ...logFlags(),
  },
  examples: [
    "stoa flows serve --state state.json",
    "stoa flows serve --state node1.json --listen 0.0.0.0:9573 --token-file /etc/stoa/flows.token --peers http://node2:9573",
    "stoa flows serve --state node1.json --redis-url redis://10.0.0.5:6379   # every node on one Redis",
    `curl -X POST ${DEFAULT_SERVER}/api/containers/create -H "Content-Type: application/json" -d '{"name": "vector-db", "services": [{"name": "vector-db", "protocol": "tcp", "port": 6333, "exposed": true}]}'`,
    `curl -s ${DEFAULT_SERVER}/api/services/vector-db`,
  ],
  async run({ flags }) {
    const file = readStateFile(flags.state);
    if (flags.tokenFile === undefined && !isLoopback(flags.listen.hostname)) {
      throw new StoaError("usage", `--listen ${flags.listen.hostname} serves other hosts: give --token-file F (a 0600 file with one token, e.g. openssl rand -hex 24 > F; the same on every node), since writes create namespaces and change the switch`);
    }
    const token = flags.tokenFile === undefined ? undefined : readTokenFile(flags.tokenFile, "the mesh's token");
    const weak = token === undefined ? null : tokenProblem(token);
    if (weak !== null) throw new StoaError("config", `--token-file ${flags.tokenFile}: ${weak} (e.g. openssl rand -hex 24 > ${flags.tokenFile})`);
    const log = startService("flows", flags, { daemon: true });
    const { client, env } = await openSwitch(flags.ovsdb);
    const registry = new Registry(file, flags.stateDir ?? defaultStateDir());
    let server: Awaited<ReturnType<typeof startFlowsServer>>;
    try {
      server = await startFlowsServer({ registry, ovsdb: client, env, listen: flags.listen, peers: splitList(flags.peers), ...(flags.redisUrl === undefined ? {} : { redisUrl: flags.redisUrl }), ...(token === undefined ? {} : { token }), log });
    } catch (err) {
      registry.close();
      client.close();
      throw err;
    }
    onShutdown("flows server", async () => {
      await server.close();
      registry.close();
      client.close();
    });
    // A state that does not read or conflicts with a registration throws: the old one stays in use (core/daemon.ts logs it).
    onReload("flows state file", () => {
      registry.replaceFile(readStateFile(flags.state));
      void server.reconcile().catch(() => undefined);
      return flags.state;
    });
    log.info("flows serving", { url: server.url, node: registry.node });
    process.stdout.write(`flows: ${server.url} (node ${registry.node})\n`);
    announceReady({ status: `flows ${server.url}`, readyFile: flags.readyFile, fields: { url: server.url, port: server.port, node: registry.node } });
    await new Promise(() => {});
  },
});

const serverFlag = () => str("the flows server's URL", { default: DEFAULT_SERVER, placeholder: "url" });
const tokenFileFlag = () => str("the flows server's token file (its serve --token-file), for a server that needs one", { placeholder: "file" });

/** A request to a flows server: its JSON answer, or a StoaError("closed") when none answers within `waitMs`. */
async function callServer(server: string, path: string, init: RequestInit = {}, waitMs = 0, tokenFile?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const auth: Record<string, string> = tokenFile === undefined ? {} : { authorization: `Bearer ${readTokenFile(tokenFile, "the flows server's token")}` };
  const once = async (): Promise<{ status: number; body: Record<string, unknown> }> => {
    let res: Response;
    try {
      res = await fetch(`${server.replace(/\/+$/, "")}${path}`, { ...init, headers: { ...(init.headers as Record<string, string> | undefined), ...auth }, signal: AbortSignal.timeout(30_000) });
    } catch (err) {
      throw new StoaError("closed", `no flows server answered at ${server} (${describeError(err)}): start one with stoa flows serve, or give --server`);
    }
    const body = (await res.json().catch(() => ({}))) as Record<string, unknown>;
    return { status: res.status, body };
  };
  return waitFor(once, {
    what: `the flows server at ${server}`,
    waitMs,
    retryable: (err) => err instanceof StoaError && err.code === "closed",
    log: createLogger({ level: "warn", format: "text", name: "flows" }),
  });
}

const query = defineCommand({
  name: "query",
  summary: "where does a service run: address, port and node (the seed's QueryService)",
  description:
    "Asks a flows server (--server, default the local one) where the service NAME runs, on its node\n" +
    "or any peer's, and prints 'NAME IP:PORT/PROTO on NODE (container ID)'. Exit 1 when no node has it.",
  flags: {
    server: serverFlag(),
    json: bool("print the answer as JSON: {service, container_id, node, ip, port, protocol}"),
    ...waitFlag("the flows server"),
  },
  positionals: [{ name: "NAME", description: "the service's name", required: true }],
  examples: ["stoa flows query vector-db", "stoa flows query vector-db --server http://node2:9573 --json | jq -r .ip"],
  async run({ flags, args }) {
    const name = args[0]!;
    const { status, body } = await callServer(flags.server, `/api/services/${encodeURIComponent(name)}`, {}, flags.wait);
    if (status !== 200) throw new StoaError("not_found", String(body.error ?? `HTTP ${status} from ${flags.server}`));
    if (flags.json) process.stdout.write(`${JSON.stringify(body)}\n`);
    else process.stdout.write(`${body.service} ${body.ip}:${body.port}/${body.protocol} on ${body.node} (container ${body.container_id})\n`);
  },
});

/** --service PROTO:PORT[:NAME] → a service (its name defaults to the container's). */
const ServiceArg = z.string().transform((text, ctx) => {
  const match = /^(tcp|udp):(\d{1,5})(?::(.+))?$/.exec(text);
  if (match === null) {
    ctx.addIssue({ code: "custom", message: `"${text}" is not PROTO:PORT[:NAME], e.g. tcp:6333 or tcp:6333:vector-db` });
    return z.NEVER;
  }
  return { protocol: match[1] as "tcp" | "udp", port: Number(match[2]), name: match[3] };
});

const containerCreate = defineCommand({
  name: "create",
  summary: "make a container: a network namespace with a veth on the bridge, registered with the server",
  description:
    "Creates network namespace stoa-NAME whose eth0 has --ip, with the other end of its veth\n" +
    "(sf + 8 hex digits of NAME) a port of --bridge, and registers it with the flows server (--server)\n" +
    "when one answers; without one, prints the container's JSON for a state file. Run programs in it\n" +
    "with: ip netns exec stoa-NAME COMMAND. Needs root (CAP_NET_ADMIN).",
  flags: {
    bridge: str("the OVS bridge to put its veth on", { placeholder: "bridge", required: { example: "vmbr0" } }),
    ip: str("its address with prefix", { placeholder: "a.b.c.d/n", required: { example: "10.0.0.103/24" } }),
    service: list("a service it offers: PROTO:PORT[:NAME] (NAME defaults to the container's)", { placeholder: "proto:port", schema: ServiceArg }),
    server: serverFlag(),
    wait: str("wait up to this long for the flows server to answer before printing the container's JSON instead (0: do not wait)", { default: "0s", placeholder: "duration", schema: Duration }),
    tokenFile: tokenFileFlag(),
    ovsdb: ovsdbFlag(),
  },
  positionals: [{ name: "NAME", description: "the container's name (its container_id)", required: true }],
  examples: ["stoa flows container create vector-db --bridge vmbr0 --ip 10.0.0.103/24 --service tcp:6333", "ip netns exec stoa-vector-db python3 -m http.server 6333"],
  async run({ flags, args }) {
    const name = args[0]!;
    const parsed = ContainerSchema.safeParse({
      container_id: name,
      veth: vethOf(name),
      bridge: flags.bridge,
      ipv4_address: flags.ip,
      services: flags.service.map((s) => ServiceSchema.parse({ name: s.name ?? name, protocol: s.protocol, port: s.port })),
    });
    if (!parsed.success) throw new StoaError("usage", parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "));
    const container: Container = parsed.data;
    const { client } = await openSwitch(flags.ovsdb);
    let registered = false;
    try {
      await client.ensureBridge(container.bridge);
      await createContainer({ name, bridge: container.bridge, cidr: container.ipv4_address, ovsdb: client });
      try {
        const { status, body } = await callServer(flags.server, "/api/containers", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(container) }, flags.wait, flags.tokenFile);
        if (status !== 201) throw new StoaError("exists", `the flows server at ${flags.server} refused the container (HTTP ${status}): ${String(body.error ?? "no reason given")}; the container was not kept`);
        registered = true;
      } catch (err) {
        if (!(err instanceof StoaError) || err.code !== "closed") {
          // Refused: nothing half-made stays (the user asked for a registered container).
          await deleteContainer({ name, bridge: container.bridge, ovsdb: client }).catch(() => undefined);
          throw err;
        }
        process.stderr.write(`stoa flows container create: ${describeError(err)}; add this container to your state file:\n`);
      }
    } finally {
      client.close();
    }
    process.stdout.write(`${JSON.stringify(container)}\n`);
    if (registered) process.stderr.write(`container ${name}: netns stoa-${name}, veth ${container.veth} on ${container.bridge}, registered at ${flags.server}\n`);
  },
});

const containerDelete = defineCommand({
  name: "delete",
  summary: "remove a container: unregistered, its port and namespace gone",
  description: "Unregisters the container from the flows server (when one answers; its flows go with it), removes\nits veth from its bridge and deletes its namespace stoa-NAME. Idempotent.",
  flags: {
    bridge: str("its bridge, when no server knows the container", { placeholder: "bridge" }),
    server: serverFlag(),
    tokenFile: tokenFileFlag(),
    ovsdb: ovsdbFlag(),
  },
  positionals: [{ name: "NAME", description: "the container's name", required: true }],
  examples: ["stoa flows container delete vector-db"],
  async run({ flags, args }) {
    const name = args[0]!;
    let bridge = flags.bridge;
    try {
      const known = await callServer(flags.server, "/api/containers");
      const entry = ((known.body.containers ?? []) as Container[]).find((c) => c.container_id === name);
      if (entry !== undefined) {
        bridge ??= entry.bridge;
        const { status, body } = await callServer(flags.server, `/api/containers/${encodeURIComponent(name)}`, { method: "DELETE" }, 0, flags.tokenFile);
        if (status !== 200 && status !== 404) throw new StoaError("exists", `the flows server at ${flags.server} refused: ${String(body.error ?? status)}`);
      }
    } catch (err) {
      if (!(err instanceof StoaError) || err.code !== "closed") throw err;
    }
    if (bridge === undefined) throw new StoaError("usage", `no flows server knows container ${name}: give --bridge`);
    const { client } = await openSwitch(flags.ovsdb);
    try {
      await deleteContainer({ name, bridge, ovsdb: client });
    } finally {
      client.close();
    }
  },
});

const container = defineGroup({
  name: "container",
  summary: "lightweight containers: a network namespace with a veth on an OVS bridge",
  description: "Containers real enough to carry traffic: a network namespace stoa-NAME, its eth0 on an OVS bridge.",
  subcommands: [containerCreate, containerDelete],
  examples: ["stoa flows container create vector-db --bridge vmbr0 --ip 10.0.0.103/24 --service tcp:6333", "stoa flows container delete vector-db"],
});

/** The subcommands of `stoa flows`, in help order. */
const subcommands: Command[] = [plan, apply, serve, query, container];

export default defineGroup({
  name: "flows",
  summary: "services to OpenFlow on Open vSwitch, applied atomically",
  description:
    "A registry of containers and the services they offer, compiled to OpenFlow flows (traffic to a\n" +
    "service's address and port reaches its container, replies return on the learned path) and\n" +
    "applied to Open vSwitch one atomic bundle per bridge, never touching flows stoa does not own.",
  subcommands,
  examples: ["stoa flows plan --state state.json", "stoa flows apply --state state.json"],
});
