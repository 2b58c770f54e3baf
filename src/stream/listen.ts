/**
 * Where a publisher listens: its three WebSocket servers, on Unix sockets in
 * `<run_dir>/pub/<pub_id>/` (core/paths.ts) or on loopback TCP, and how they are torn down.
 *
 * Contract:
 * - Unix: `service.sock` is bound first, with core/unixsock.ts, so a live publisher of the same
 *   pub_id is found (`in_use`) before anything is bound; a stale directory from a killed one is
 *   reclaimed. On any failure the sockets bound so far are removed, and the directory too if
 *   this call created it: a failed start leaves nothing behind and touches nothing live. Once
 *   all three are bound the directory is ours and gets mode 0700.
 * - TCP: three servers on `[::1]`, ephemeral ports; no files. Or, for a publisher that owns
 *   its own address (`stoa pub --addr auto`), on that address with the fixed ports.
 * - `unlink()` removes the socket files only (nobody new connects); `stop()` stops the servers,
 *   gracefully for a moment and then forcibly, and removes the directory.
 */
import type { Server, WebSocketHandler } from "bun";
import { existsSync } from "node:fs";
import { chmod, rmdir } from "node:fs/promises";
import { resolve } from "node:path";
import type { Endpoint } from "../core/endpoint.ts";
import { StoaError, describeError, errnoCode } from "../core/errors.ts";
import { publisherDir, publisherSocketPath } from "../core/paths.ts";
import { bindUnix, UNIX_DIR_MODE, type UnixBinding } from "../core/unixsock.ts";
import { KINDS, type Kind } from "./names.ts";
import { urlHost } from "../core/endpoint.ts";

/** Where one endpoint listens: a Unix socket path, or `[::1]:<port>` with `internal: "tcp"`. */
export type InternalEndpoint = Extract<Endpoint, { kind: "unix" } | { kind: "tcp" }>;

/** How long `stop()` waits for connections still in their HTTP phase before cutting them. */
const STOP_GRACE_MS = 500;

/** The server options of one endpoint, apart from where it listens. */
export interface EndpointServer<D> {
  fetch: (req: Request, server: Server<D>) => Response | undefined;
  websocket: WebSocketHandler<D>;
}

export interface Listening {
  readonly endpoints: Readonly<Record<Kind, InternalEndpoint>>;
  /** A URL that reaches each endpoint directly. */
  readonly urls: Readonly<Record<Kind, string>>;
  /** The socket directory; undefined for TCP. */
  readonly dir: string | undefined;
  unlink(): void;
  /** Stops the servers and removes the directory; returns why the directory stayed, if it did. */
  stop(): Promise<string | undefined>;
}

/** TCP address and ports to bind the endpoints on, instead of the run dir. */
export interface TcpListen {
  host: string;
  /** Port per kind; 0 picks a free one. */
  ports: Readonly<Record<Kind, number>>;
}

/** Binds the three endpoints of `pubId` (see the module header). */
export async function listenEndpoints<D>(
  pubId: string,
  internal: "unix" | "tcp" | TcpListen,
  runDir: string,
  serverFor: (kind: Kind) => EndpointServer<D>,
): Promise<Listening> {
  if (internal === "unix") return listenUnixDir(pubId, resolve(runDir), serverFor);
  return listenTcp(pubId, serverFor, internal === "tcp" ? { host: "::1", ports: { service: 0, string: 0, ping: 0 } } : internal);
}

async function listenTcp<D>(pubId: string, serverFor: (kind: Kind) => EndpointServer<D>, where: TcpListen): Promise<Listening> {
  const servers: Server<D>[] = [];
  const endpoints: Partial<Record<Kind, InternalEndpoint>> = {};
  const urls: Partial<Record<Kind, string>> = {};
  const host = where.host;
  const shown = urlHost(host);
  try {
    for (const kind of KINDS) {
      const server = Bun.serve<D>({ hostname: host, port: where.ports[kind], ...serverFor(kind) });
      servers.push(server);
      const port = server.port ?? 0;
      endpoints[kind] = { kind: "tcp", host, port };
      urls[kind] = `ws://${shown}:${port}/`;
    }
  } catch (err) {
    for (const server of servers) await server.stop(true);
    throw new StoaError("io", `cannot listen on ${shown} for ${pubId}: ${describeError(err)}`, { cause: err });
  }
  return {
    endpoints: complete(endpoints),
    urls: complete(urls),
    dir: undefined,
    unlink: () => {},
    stop: async () => {
      for (const server of servers) await stopServer(server);
      return undefined;
    },
  };
}

async function listenUnixDir<D>(
  pubId: string,
  runDir: string,
  serverFor: (kind: Kind) => EndpointServer<D>,
): Promise<Listening> {
  const dir = publisherDir(runDir, pubId);
  const existed = existsSync(dir);
  const bindings: UnixBinding<Server<D>>[] = [];
  const endpoints: Partial<Record<Kind, InternalEndpoint>> = {};
  const urls: Partial<Record<Kind, string>> = {};
  try {
    for (const kind of KINDS) {
      const path = publisherSocketPath(runDir, pubId, kind);
      const binding = await bindUnix(path, (unix) => Bun.serve<D>({ unix, ...serverFor(kind) }));
      bindings.push(binding);
      endpoints[kind] = { kind: "unix", path: binding.path };
      urls[kind] = `ws+unix://${binding.path}:/`;
    }
  } catch (err) {
    for (const binding of bindings) await binding.close(true);
    if (!existed) await rmdir(dir).catch(() => {});
    if (err instanceof StoaError) {
      throw new StoaError(err.code, `cannot serve pub_id ${pubId}: ${err.message}`, { cause: err });
    }
    throw err;
  }
  // Ours now, even if a killed publisher left it with another mode.
  await chmod(dir, UNIX_DIR_MODE).catch(() => {});
  return {
    endpoints: complete(endpoints),
    urls: complete(urls),
    dir,
    unlink: () => {
      for (const binding of bindings) binding.remove();
    },
    stop: async () => {
      for (const binding of bindings) {
        binding.remove();
        await stopServer(binding.server);
      }
      return rmdir(dir).then(
        () => undefined,
        (err: unknown) => (errnoCode(err) === "ENOENT" ? undefined : describeError(err)),
      );
    },
  };
}

function complete<T>(partial: Partial<Record<Kind, T>>): Record<Kind, T> {
  const { service, string, ping } = partial;
  if (service === undefined || string === undefined || ping === undefined) {
    throw new StoaError("internal", "an endpoint was not bound");
  }
  return { service, string, ping };
}

async function stopServer<D>(server: Server<D>): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const graceful = Promise.resolve(server.stop(false)).then(() => true);
  const late = new Promise<boolean>((done) => {
    timer = setTimeout(() => done(false), STOP_GRACE_MS);
  });
  const stopped = await Promise.race([graceful, late]);
  clearTimeout(timer);
  if (!stopped) await server.stop(true);
}


