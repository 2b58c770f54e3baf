/**
 * A publisher's whole life on a host, the way `stoa pub` runs it (and programs may too):
 *
 *   1. ask the local gateway (control socket in the run dir) for its ports and addresses —
 *      with no gateway there is nothing to register: fail with what to start;
 *   2. start the three endpoints — first, so that a pub_id a live publisher serves is refused
 *      before any registration changes (and, with loopback TCP endpoints, register them with
 *      the gateway explicitly);
 *   3. register with the metaserver as {name, pub_id, host, ports};
 *   4. ask the metaserver to confirm — it pings us through our gateway, the path clients take;
 *   5. heartbeat well inside the metaserver's TTL; a heartbeat answered 404 (we were removed,
 *      e.g. after a long pause) registers and confirms again.
 * `close()` undoes all of it: deregisters, stops the endpoints, removes the sockets.
 */
import { StoaError } from "../core/errors.ts";
import { formatEndpoint, parseEndpoint } from "../core/endpoint.ts";
import { advertisedAddress } from "../core/hostaddr.ts";
import { gatewayControlPath } from "../core/paths.ts";
import type { Logger } from "../core/log.ts";
import { controlRequest } from "../gateway/control.ts";
import { MetaClient, type MetaToken } from "../meta/client.ts";
import { DEFAULT_TTL_MS, type PublisherInfo, type RegisterRequest } from "../meta/protocol.ts";
import { addRandomOwnedAddress } from "../addr/manager.ts";
import { KINDS, type Kind, newPubId } from "./names.ts";
import type { SlowPolicy } from "./protocol.ts";
import { type Publisher, createPublisher } from "./publisher.ts";

/** Heartbeats go out at a third of the metaserver's TTL, at most this often and at least this rarely. */
const MIN_HEARTBEAT_MS = 200;
const MAX_HEARTBEAT_MS = 5_000;

interface SessionOptions {
  name: string;
  /** Stable id; a fresh one when absent. */
  pubId?: string;
  /** Metaserver base URL, e.g. `http://[fd00::2]:8090`. */
  metaUrl: string;
  /** Bearer token for the metaserver's writes (meta/client.ts's `clientToken` finds one). */
  metaToken?: MetaToken;
  runDir: string;
  /** The host address clients reach the gateway at; default from the gateway's listen addresses. */
  host?: string;
  internal?: "unix" | "tcp";
  /**
   * Option 1 of the design (no gateway): add a random address of `prefix` (the on-link /64) to
   * `dev` as a /128 with nodad, serve the three endpoints on it with `ports` directly, register
   * that address, and delete it on close. Needs CAP_NET_ADMIN.
   */
  ownAddress?: { prefix: string; dev: string; ports: Readonly<Record<Kind, number>> };
  slow?: SlowPolicy;
  /** Values the publisher keeps for late subscribers (publisher.ts); default 1, the latest. */
  history?: number;
  log: Logger;
}

interface Session {
  readonly publisher: Publisher;
  /** The registration as the metaserver last answered it. */
  readonly info: PublisherInfo;
  close(): Promise<void>;
}

/** Runs steps 1–5 above; on any failure undoes what was done and throws a StoaError. */
export async function startPublishing(options: SessionOptions): Promise<Session> {
  if (options.ownAddress) return startOnOwnAddress(options, options.ownAddress);
  const { log, runDir } = options;
  const gateway = await controlRequest(runDir, { type: "info" }).catch((err: unknown) => {
    if (!(err instanceof StoaError) || err.code !== "closed") throw err;
    throw new StoaError(
      "io",
      `no gateway serves ${runDir} (nothing answers on ${gatewayControlPath(runDir)}): start one with ` +
        `'stoa gateway --run-dir ${runDir}' (or 'stoa up'), or give the --run-dir of the one that runs`,
    );
  });
  const host = options.host ?? advertisedAddress(gateway.listen);
  const meta = new MetaClient(options.metaUrl, { token: options.metaToken });
  const pubId = options.pubId ?? newPubId();
  const request = { name: options.name, pub_id: pubId, host, ports: gateway.ports };

  // Own the endpoints before touching any registration: a pub_id already served by a live
  // publisher must be refused without disturbing that publisher's routes or registration.
  return establish(meta, log, async (undo) => {
    if (options.internal === "tcp") await refuseLiveRoutes(runDir, pubId);
    const publisher = await createPublisher({ pubId, runDir, internal: options.internal, slow: options.slow, history: options.history, log });
    undo(() => publisher.close());
    if (options.internal !== "tcp") return { publisher, request };
    const routeTcp = async () => {
      for (const kind of KINDS) {
        await controlRequest(runDir, { type: "register", pub_id: pubId, kind, target: formatEndpoint(publisher.endpoints[kind]) });
      }
    };
    undo(() => controlRequest(runDir, { type: "deregister", pub_id: pubId }));
    await routeTcp();
    return { publisher, request, reregister: routeTcp };
  });
}

/** Option 1: a publisher on its own /128, reached without a gateway. */
async function startOnOwnAddress(options: SessionOptions, own: NonNullable<SessionOptions["ownAddress"]>): Promise<Session> {
  const { log, runDir } = options;
  const meta = new MetaClient(options.metaUrl, { token: options.metaToken });
  const pubId = options.pubId ?? newPubId();
  return establish(meta, log, async (undo) => {
    const owned = addRandomOwnedAddress({ prefix: own.prefix, dev: own.dev, runDir });
    undo(async () => owned.remove());
    log.info("added address", { addr: owned.addr, dev: own.dev });
    const publisher = await createPublisher({ pubId, runDir, internal: { host: owned.addr, ports: own.ports }, slow: options.slow, history: options.history, log });
    undo(() => publisher.close());
    return { publisher, request: { name: options.name, pub_id: pubId, host: owned.addr, ports: own.ports } };
  });
}

/** What `establish` starts before registering; `undo` takes the step that reverses each part. */
type Setup = (undo: (step: () => Promise<unknown>) => void) => Promise<{
  publisher: Publisher;
  request: RegisterRequest;
  /** Re-creates what the gateway must know before registering again (explicit routes). */
  reregister?: () => Promise<void>;
}>;

/**
 * Steps 2–5 for either path: `setUp` starts the endpoints, then the registration is made and
 * confirmed; on any failure everything done so far is undone, in reverse, and the error thrown.
 */
async function establish(meta: MetaClient, log: Logger, setUp: Setup): Promise<Session> {
  const undo: (() => Promise<unknown>)[] = [];
  const unwind = async () => {
    for (const step of undo.reverse()) await step().catch(() => {});
  };
  let started: Awaited<ReturnType<Setup>>;
  let info: PublisherInfo;
  try {
    started = await setUp((step) => undo.push(step));
    const { pubId } = started.publisher;
    await meta.register(started.request);
    undo.push(() => meta.deregister(pubId));
    info = await meta.confirm(pubId);
  } catch (err) {
    await unwind();
    throw err;
  }
  return liveSession({ ...started, meta, info, unwind, log });
}

/** Heartbeats for a confirmed registration, and the `close()` that undoes everything. */
async function liveSession(s: {
  meta: MetaClient;
  request: RegisterRequest;
  publisher: Publisher;
  info: PublisherInfo;
  unwind: () => Promise<void>;
  log: Logger;
  /** Re-creates what the gateway must know before registering again (explicit routes). */
  reregister?: () => Promise<void>;
}): Promise<Session> {
  const { meta, request, publisher, unwind, log } = s;
  const pubId = publisher.pubId;
  let info = s.info;
  log.info("publishing", { publisher: info.name, pub_id: pubId, service: info.urls.service });
  const ttlMs = await meta.health().then((h) => h.ttl_ms, () => DEFAULT_TTL_MS);
  const every = Math.min(MAX_HEARTBEAT_MS, Math.max(MIN_HEARTBEAT_MS, Math.floor(ttlMs / 3)));
  let beating = false;
  const timer = setInterval(async () => {
    if (beating) return; // one heartbeat at a time, however slow the metaserver is
    beating = true;
    try {
      info = await meta.heartbeat(pubId);
    } catch (err) {
      if (err instanceof StoaError && "status" in err && err.status === 404) {
        log.warn("the metaserver forgot this publisher; registering again", { pub_id: pubId });
        await (s.reregister ?? (async () => {}))()
          .then(() => meta.register(request))
          .then(() => meta.confirm(pubId))
          .then((fresh) => (info = fresh))
          .catch((again: unknown) => log.warn("registering again failed", { error: again }));
      } else {
        log.warn("heartbeat failed", { pub_id: pubId, error: err });
      }
    } finally {
      beating = false;
    }
  }, every);

  let closing: Promise<void> | undefined;
  return {
    publisher,
    get info() {
      return info;
    },
    close() {
      closing ??= (async () => {
        clearInterval(timer);
        await unwind();
        log.info("stopped publishing", { publisher: info.name, pub_id: pubId });
      })();
      return closing;
    },
  };
}

/** How long a probe of an explicit route's target may take before it counts as dead. */
const ROUTE_PROBE_TIMEOUT_MS = 300;

/**
 * With loopback TCP endpoints there are no socket files to guard a pub_id: refuse it when the
 * gateway already routes it to a target that answers (a stale route to a dead target is fine
 * to replace).
 */
async function refuseLiveRoutes(runDir: string, pubId: string): Promise<void> {
  const { entries } = await controlRequest(runDir, { type: "list" });
  for (const entry of entries) {
    if (entry.pub_id !== pubId || entry.source !== "explicit") continue;
    const target = parseEndpoint(entry.target);
    if (target.kind !== "tcp" && target.kind !== "unix") continue;
    if (await answers(target)) {
      throw new StoaError(
        "in_use",
        `pub_id ${pubId} is served by a live publisher (${entry.kind} at ${entry.target}); stop it or choose another --pub-id`,
      );
    }
  }
}

async function answers(target: { kind: "tcp"; host: string; port: number } | { kind: "unix"; path: string }): Promise<boolean> {
  const handler = { socket: { data() {} } };
  const dial = target.kind === "tcp" ? Bun.connect({ hostname: target.host, port: target.port, ...handler }) : Bun.connect({ unix: target.path, ...handler });
  const timeout = Bun.sleep(ROUTE_PROBE_TIMEOUT_MS).then(() => null);
  try {
    const socket = await Promise.race([dial, timeout]);
    if (socket === null) {
      void dial.then((s) => s.end(), () => {});
      return false;
    }
    socket.end();
    return true;
  } catch {
    return false;
  }
}
