/**
 * `stoa flows serve`: the registry (registry.ts) behind a hono API, reconciled onto the switch
 * by reconcile.ts's engine (`Reconciler`: the ports from an OVSDB monitor, each bridge's flows
 * remembered between reconciles) after every change — a registration, a removal, a peer's news,
 * a port OVSDB reports appearing, leaving or renumbered — one reconcile at a time, the changes
 * that arrive meanwhile folded into the next. What changes behind stoa's back reaches the
 * engine through its flow monitors (reconcile.ts): the next reconcile puts it right (or reports
 * a foreign flow in the place of one of stoa's). Every VERIFY_MS, as a backstop, and after
 * OVSDB reconnects, the engine forgets what it remembers and the next reconcile dumps the bridges.
 *
 *   POST   /api/containers           register a container (the seed's fields: container_id, veth,
 *                                     bridge, ipv4_address, services), or — with the seed's
 *                                     CreateContainer body {name, services} — create one (a network
 *                                     namespace on the first bridge, an address from its subnet)
 *   POST   /api/containers/create    the same (the seed's path)
 *   DELETE /api/containers/{id}      remove it (and its namespace, if this server made it)
 *   GET    /api/containers           the containers of the desired state
 *   GET    /api/services/{name}      {service, container_id, node, ip, port, protocol}: this node's, else a peer's
 *   GET    /api/services             every service known, this node's and the peers'
 *   GET    /api/flows                stoa's flows on each bridge now, with their counters
 *   POST   /api/apply                reconcile now; answers the report (reconcile.ts Report)
 *   GET    /api/registry             {node, services}: this node's exposed services (peers pull it)
 *   POST   /api/registry             a peer pushes its {node, services}
 *   GET    /metrics, GET /health
 *
 * With a token (`serve --token-file`), every POST and DELETE needs `Authorization: Bearer <token>`
 * (401 otherwise) and pushes to peers carry it: the nodes of a mesh share one token. Reads stay
 * open (queries, flows, metrics). Without one — loopback only, the seed's way — any local
 * process may write.
 *
 * Peers (the state's `peers` and --peers): every PEER_SYNC_MS each peer's /api/registry is pulled,
 * and after every change of this node's services they are pushed to each peer; a peer not heard
 * of within PEER_TTL_MS counts as gone. With `redisUrl` the same through Redis (redis-mesh.ts):
 * this node's key rewritten every PEER_SYNC_MS and on change, every other node's read. Each node
 * is authoritative for its own containers.
 */
import { Hono, type Context } from "hono";
import { StoaError, describeError, listenError } from "../core/errors.ts";
import { urlHost } from "../core/endpoint.ts";
import { readJsonBody } from "../core/http-body.ts";
import { bearerToken, sameDigest, tokenDigest } from "../core/token.ts";
import type { Logger } from "../core/log.ts";
import { CONTENT_TYPE, metrics } from "../core/metrics.ts";
import { allocateAddress, containerExists, createContainer, deleteContainer, vethOf } from "./container.ts";
import { ContainerSchema, ServiceSchema, hostAddress, cookieKind } from "./model.ts";
import { dumpFlows } from "./ofctl.ts";
import type { OvsdbClient } from "./ovsdb.ts";
import type { SwitchPort } from "./compile.ts";
import { Reconciler, VERIFY_MS, attachVeths, type Report } from "./reconcile.ts";
import { PEER_TTL_MS, type Registry } from "./registry.ts";
import { RedisMesh } from "./redis-mesh.ts";
import { z } from "zod";

/** A request body (a container with its services) is at most this large. */
const MAX_BODY_BYTES = 1024 * 1024;
/** How often each peer's registry is pulled. */
export const PEER_SYNC_MS = 5_000;
/** A pull or push that takes longer fails (the peer is counted down until its next answer). */
const PEER_TIMEOUT_MS = 3_000;

const CreateBody = z.object({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "a container name: letters, digits, . _ - (up to 64)"),
  services: z.array(ServiceSchema).default([]),
  bridge: z.string().optional(),
  ipv4_address: z.string().optional(),
});
const ServiceLocationSchema = z.object({
  service: z.string(),
  container_id: z.string(),
  node: z.string(),
  ip: z.string(),
  port: z.number().int().min(1).max(65535),
  protocol: z.enum(["tcp", "udp"]),
});
const RegistryBody = z.object({ node: z.string().min(1).max(64), services: z.array(ServiceLocationSchema).max(100_000) });

class ApiError extends Error {
  constructor(
    readonly status: 400 | 404 | 409 | 413 | 500 | 503,
    message: string,
  ) {
    super(message);
  }
}

export interface FlowsServer {
  url: string;
  port: number;
  /** Reconcile now (after whatever is running); the report of that reconcile. */
  reconcile(): Promise<Report>;
  close(): Promise<void>;
}

export async function startFlowsServer(o: {
  registry: Registry;
  ovsdb: OvsdbClient;
  env: NodeJS.ProcessEnv;
  listen: { hostname: string; port: number };
  peers: readonly string[];
  /** The mesh through Redis too (redis-mesh.ts). */
  redisUrl?: string;
  /** When set, every write (POST, DELETE) needs `Authorization: Bearer <token>`; peers are sent it too. */
  token?: string;
  log: Logger;
}): Promise<FlowsServer> {
  const { registry, ovsdb, env, log } = o;
  const reconciles = metrics.counter("stoa_flows_reconciles_total", "Reconciles of the registry onto the switch, by result.", ["result"]);
  const flowMods = metrics.counter("stoa_flows_flow_mods_total", "Flow mods sent to the switch (adds, modifies, deletes).");
  const containersGauge = metrics.gauge("stoa_flows_containers", "Containers of the desired state.");
  const waitingGauge = metrics.gauge("stoa_flows_containers_waiting", "Containers whose veth has no ofport yet.");
  const remoteGauge = metrics.gauge("stoa_flows_remote_services", "Services known from peers.");
  const peerErrors = metrics.counter("stoa_flows_peer_errors_total", "Failed pulls and pushes, by peer.", ["peer"]);
  const tokenDigestWanted = o.token === undefined ? null : tokenDigest(o.token);
  const authHeaders: Record<string, string> = o.token === undefined ? {} : { authorization: `Bearer ${o.token}` };
  const made = new Set<string>(); // containers this server created (their namespaces go with them)

  // A port of the state's (a container's veth, the mesh port) that appears, leaves, moves or is renumbered.
  const portAt = (ports: ReadonlyMap<string, SwitchPort>, name: string): string => {
    const p = ports.get(name);
    return p === undefined || p.ofport <= 0 ? "" : `${p.bridge} ${p.ofport}`;
  };
  let seen: ReadonlyMap<string, SwitchPort> = new Map();
  const engine = await Reconciler.start({
    ovsdb,
    env,
    onPorts: (ports, reconnected) => {
      const state = registry.state;
      const names = [...state.containers.map((c) => c.veth), ...(state.mesh_port === undefined ? [] : [state.mesh_port])];
      const moved = names.some((name) => portAt(ports, name) !== portAt(seen, name));
      seen = ports;
      if (moved || reconnected) kick();
    },
  });
  seen = engine.ports;

  // ---- reconcile: one at a time, later requests folded into one run after it ----
  let running: Promise<Report> | null = null;
  let again: Promise<Report> | null = null;
  let last: Report | null = null;
  let lastWarning: string | null = null;
  const runOnce = async (): Promise<Report> => {
    const state = registry.state;
    try {
      const report = await engine.apply(state, registry.remoteServices());
      last = report;
      reconciles.inc({ result: "ok" });
      flowMods.inc(report.changes);
      containersGauge.set(state.containers.length);
      waitingGauge.set(report.waiting.length);
      remoteGauge.set(registry.remoteServices().length);
      if (report.changes > 0) log.info("reconciled", { changes: report.changes, waiting: report.waiting.length });
      for (const warning of report.warnings) if (warning !== lastWarning) log.warn(warning);
      lastWarning = report.warnings[0] ?? null;
      return report;
    } catch (err) {
      reconciles.inc({ result: "error" });
      log.error("reconcile failed", { error: describeError(err) });
      throw err;
    }
  };
  const reconcile = (): Promise<Report> => {
    if (running === null) {
      running = runOnce().finally(() => {
        running = null;
      });
      return running;
    }
    again ??= running.catch(() => undefined).then(() => {
      again = null;
      return reconcile();
    });
    return again;
  };
  const kick = (): void => void reconcile().catch(() => undefined);

  // ---- peers ----
  const peers = [...new Set([...registry.state.peers, ...o.peers])].map((url) => url.replace(/\/+$/, ""));
  const pushAll = (): void => {
    const body = JSON.stringify({ node: registry.node, services: registry.localServices() });
    for (const peer of peers) {
      fetch(`${peer}/api/registry`, { method: "POST", headers: { "content-type": "application/json", ...authHeaders }, body, signal: AbortSignal.timeout(PEER_TIMEOUT_MS) })
        .then((res) => {
          if (!res.ok) throw new Error(`HTTP ${res.status}`);
        })
        .catch((err: unknown) => {
          peerErrors.inc({ peer });
          log.debug("push to peer failed", { peer, error: describeError(err) });
        });
    }
  };
  const pullAll = async (): Promise<void> => {
    let changed = registry.expirePeers();
    await Promise.all(
      peers.map(async (peer) => {
        try {
          const res = await fetch(`${peer}/api/registry`, { signal: AbortSignal.timeout(PEER_TIMEOUT_MS) });
          if (!res.ok) throw new Error(`HTTP ${res.status}`);
          const body = RegistryBody.parse(await readJsonBody(res, 64 * MAX_BODY_BYTES, { tooLarge: () => new Error("registry too large"), bad: (why) => new Error(why) }));
          if (registry.setPeer(body.node, body.services.filter((s) => s.node === body.node))) changed = true;
        } catch (err) {
          peerErrors.inc({ peer });
          log.debug("pull from peer failed", { peer, error: describeError(err) });
        }
      }),
    );
    if (changed) kick();
  };
  const peerTimer = setInterval(() => void pullAll(), PEER_SYNC_MS);
  peerTimer.unref();
  const verifyTimer = setInterval(() => {
    engine.forget();
    kick();
  }, VERIFY_MS);
  verifyTimer.unref();
  const stopBackground = (): void => {
    clearInterval(peerTimer);
    clearInterval(verifyTimer);
    void engine.close();
  };
  // ---- the mesh through Redis ----
  let mesh: RedisMesh | null = null;
  const fromRedis = new Set<string>();
  const readMesh = async (): Promise<void> => {
    if (mesh === null) return;
    try {
      const nodes = await mesh.read();
      let changed = false;
      const present = new Set(nodes.map((n) => n.node));
      for (const n of nodes) {
        fromRedis.add(n.node);
        if (registry.setPeer(n.node, n.services)) changed = true;
      }
      for (const node of [...fromRedis]) {
        if (present.has(node)) continue;
        fromRedis.delete(node);
        if (registry.dropPeer(node)) changed = true;
      }
      if (changed) kick();
    } catch (err) {
      peerErrors.inc({ peer: "redis" });
      log.warn("reading the mesh from Redis failed", { error: describeError(err) });
    }
  };
  const writeMesh = async (announce: boolean): Promise<void> => {
    if (mesh === null) return;
    await mesh.write(registry.localServices(), announce).catch((err: unknown) => {
      peerErrors.inc({ peer: "redis" });
      log.warn("writing this node's services to Redis failed", { error: describeError(err) });
    });
  };
  if (o.redisUrl !== undefined) {
    try {
      mesh = await RedisMesh.connect({ url: o.redisUrl, node: registry.node, ttlMs: PEER_TTL_MS, log, onChange: () => void readMesh() });
    } catch (err) {
      stopBackground();
      throw new StoaError("io", `cannot connect to Redis at ${o.redisUrl}: ${describeError(err)} (is redis-server running there?)`);
    }
  }
  const meshTimer = setInterval(() => void writeMesh(false).then(readMesh), PEER_SYNC_MS);
  meshTimer.unref();

  /** After a change of this node's containers: flows, then the peers. */
  const changedLocally = async (): Promise<Report> => {
    const report = await reconcile();
    pushAll();
    void writeMesh(true);
    return report;
  };

  // ---- the API ----
  const app = new Hono();
  // Writes create namespaces and change the switch: with a token, only its holders (and the peers given it) may.
  app.use("/api/*", async (c, next) => {
    if (tokenDigestWanted === null || c.req.method === "GET" || c.req.method === "HEAD") return next();
    const given = bearerToken(c.req.header("authorization"));
    if (given === null || !sameDigest(tokenDigest(given), tokenDigestWanted)) {
      return c.json({ error: "writes need the flows server's token: send Authorization: Bearer <the token in its --token-file> (stoa flows container takes --token-file)" }, 401);
    }
    return next();
  });
  const readJson = (c: Context): Promise<unknown> =>
    readJsonBody(c.req.raw, MAX_BODY_BYTES, { tooLarge: () => new ApiError(413, `the body is over ${MAX_BODY_BYTES} bytes`), bad: (why) => new ApiError(400, why) });
  const issues = (error: z.ZodError): string => error.issues.slice(0, 10).map((i) => `${i.path.join(".") || "(body)"}: ${i.message}`).join("; ");

  const registerContainer = async (c: Context) => {
    const body = await readJson(c);
    const isCreate = typeof body === "object" && body !== null && "name" in body && !("container_id" in body);
    let container;
    if (isCreate) {
      const parsed = CreateBody.safeParse(body);
      if (!parsed.success) throw new ApiError(400, issues(parsed.error));
      const state = registry.state;
      const bridge = state.bridges.find((b) => b.name === (parsed.data.bridge ?? state.bridges[0]!.name));
      if (bridge === undefined) throw new ApiError(400, `no bridge ${parsed.data.bridge} in this node's state`);
      if (registry.container(parsed.data.name) !== undefined || containerExists(parsed.data.name)) throw new ApiError(409, `container ${parsed.data.name} exists`);
      let cidr = parsed.data.ipv4_address;
      if (cidr === undefined) {
        if (bridge.subnet === undefined) throw new ApiError(400, `bridge ${bridge.name} has no subnet to take an address from: add "subnet" to it in the state, or send ipv4_address`);
        cidr = allocateAddress(bridge.subnet, new Set(state.containers.map((x) => hostAddress(x.ipv4_address))));
      }
      container = ContainerSchema.parse({ container_id: parsed.data.name, veth: vethOf(parsed.data.name), bridge: bridge.name, ipv4_address: cidr, services: parsed.data.services });
      registry.register(container); // checked before anything is made
      try {
        await createContainer({ name: container.container_id, bridge: bridge.name, cidr, ovsdb });
      } catch (err) {
        registry.unregister(container.container_id);
        throw err;
      }
      made.add(container.container_id);
    } else {
      const parsed = ContainerSchema.safeParse(body);
      if (!parsed.success) throw new ApiError(400, issues(parsed.error));
      container = parsed.data;
      registry.register(container);
      await attachVeths([container], ovsdb, engine.ports); // once: later, its port comes and goes with its runtime
    }
    log.info(isCreate ? "container created" : "container registered", { container: container.container_id, veth: container.veth, ip: container.ipv4_address });
    const report = await changedLocally();
    return c.json({ container, node: registry.node, waiting: report.waiting.some((w) => w.container_id === container.container_id) }, 201);
  };
  app.post("/api/containers", registerContainer);
  app.post("/api/containers/create", registerContainer);

  app.delete("/api/containers/:id", async (c) => {
    const id = c.req.param("id");
    const container = registry.container(id);
    if (container === undefined) throw new ApiError(404, `no container ${id} on ${registry.node}`);
    registry.unregister(id);
    if (made.has(id) || (container.veth === vethOf(id) && containerExists(id))) {
      await deleteContainer({ name: id, bridge: container.bridge, ovsdb });
      made.delete(id);
    }
    log.info("container removed", { container: id });
    await changedLocally();
    return c.json({ removed: id });
  });

  app.get("/api/containers", (c) => c.json({ node: registry.node, containers: registry.state.containers }));

  app.get("/api/services", (c) => {
    const local = registry.state.containers.flatMap((x) => x.services.map((s) => ({ service: s.name, container_id: x.container_id, node: registry.node, ip: hostAddress(x.ipv4_address), port: s.port, protocol: s.protocol })));
    return c.json({ node: registry.node, services: [...local, ...registry.remoteServices()] });
  });
  app.get("/api/services/:name", (c) => {
    const name = c.req.param("name");
    const found = registry.find(name);
    if (found === undefined) throw new ApiError(404, `no service ${name} on ${registry.node} or its peers`);
    return c.json(found);
  });

  app.get("/api/flows", async (c) => {
    const out = [];
    for (const bridge of registry.state.bridges) {
      const flows = await dumpFlows(bridge.name, { cookie: 0n, mask: 0n, env }).catch(() => []);
      for (const f of flows) {
        const kind = cookieKind(f.cookie);
        if (kind === null) continue;
        out.push({ bridge: bridge.name, kind, cookie: `0x${f.cookie.toString(16)}`, table: f.table, priority: f.priority, match: f.match, actions: f.actions, packets: Number(f.packets), bytes: Number(f.bytes) });
      }
    }
    return c.json({ node: registry.node, flows: out, last_reconcile: last === null ? null : { changes: last.changes, waiting: last.waiting } });
  });

  app.post("/api/apply", async (c) => c.json(await reconcile()));

  app.get("/api/registry", (c) => c.json({ node: registry.node, services: registry.localServices() }));
  app.post("/api/registry", async (c) => {
    const parsed = RegistryBody.safeParse(await readJson(c));
    if (!parsed.success) throw new ApiError(400, issues(parsed.error));
    if (parsed.data.node === registry.node) throw new ApiError(409, `node ${registry.node} is this node: two nodes have one name`);
    if (registry.setPeer(parsed.data.node, parsed.data.services.filter((s) => s.node === parsed.data.node))) kick();
    return c.json({ node: registry.node });
  });

  app.get("/metrics", async () => new Response(metrics.render(), { headers: { "content-type": CONTENT_TYPE } }));
  app.get("/health", (c) => c.json({ ok: true, node: registry.node, ovsdb: "connected" }));

  app.notFound((c) => c.json({ error: `no route ${c.req.method} ${new URL(c.req.url).pathname}: see stoa flows serve --help` }, 404));
  app.onError((err, c) => {
    if (err instanceof ApiError) return c.json({ error: err.message }, err.status);
    if (err instanceof StoaError) return c.json({ error: err.message }, err.code === "exists" ? 409 : err.code === "config" ? 400 : 500);
    log.error("request failed", { path: new URL(c.req.url).pathname, error: describeError(err) });
    return c.json({ error: describeError(err) }, 500);
  });

  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({ hostname: o.listen.hostname, port: o.listen.port, fetch: app.fetch });
  } catch (err) {
    stopBackground();
    throw listenError(err, `${urlHost(o.listen.hostname)}:${o.listen.port}`, { inUse: "another stoa flows serve? pick another with --listen" });
  }
  await reconcile().catch(() => undefined); // a first failure is logged; the server runs and retries on the next change
  void pullAll().then(pushAll);
  await writeMesh(true);
  await readMesh();
  const port = server.port ?? o.listen.port;
  const shown = o.listen.hostname === "0.0.0.0" ? "127.0.0.1" : o.listen.hostname === "::" ? "::1" : o.listen.hostname;
  return {
    url: `http://${urlHost(shown)}:${port}`,
    port,
    reconcile,
    async close() {
      stopBackground();
      await engine.close(); // its flow monitors ended
      clearInterval(meshTimer);
      await mesh?.close();
      await server.stop(true);
      await (running ?? Promise.resolve()).catch(() => undefined);
    },
  };
}
