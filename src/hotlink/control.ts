/**
 * The hotlink daemon's control socket, through which `stoa hotlink tunnel|ipc|ls|close` change
 * a running `stoa hotlink connect`: server and client.
 *
 * Where: `<run_dir>/hotlink/<user>.sock` by default (`hotlinkControlPath`), mode 0600 in a
 * directory created 0700, bound with core/unixsock.ts, so a second daemon for the same user and
 * run dir finds the socket alive and fails with "in_use" instead of taking it over.
 *
 * Wire: core/frame.ts frames (4-byte big-endian length), each holding one CBOR message
 * (core/codec.ts, validated by the zod schemas below). The client sends requests; each is
 * answered, in order, by one message:
 *   {type: "tunnel", spec}    → {ok: true, type: "tunnel", tunnel}  spec as --tunnel:
 *                                CHANNEL=HOST:PORT[@PEER]; `tunnel.port` is the bound port
 *   {type: "ipc", spec}       → {ok: true, type: "ipc", ipc}        spec as --ipc: CHANNEL=unix:PATH
 *   {type: "ls"}              → {ok: true, type: "ls", status}      the daemon's status: user,
 *                                server, connected, tunnels, ipc, sessions, counters, link
 *   {type: "close", channel}  → {ok: true, type: "close", channel, kind: "tunnel" | "ipc"}
 * or {ok: false, code, message}, code a StoaError code: "usage" (bad spec), "exists",
 * "in_use" (port or socket taken), "not_found" (close of an unknown channel), "too_large",
 * "decode"/"schema" (not a request), "internal".
 *
 * Limits: requests ≤ `MAX_REQUEST_BYTES`, answers ≤ `MAX_ANSWER_BYTES`, at most
 * `MAX_PIPELINED` unanswered requests per connection and `MAX_CONNECTIONS` connections; idle
 * connections close after `IDLE_TIMEOUT_MS`. A request that does not decode is answered with an
 * error and the connection stays usable; a frame header over the limit is answered with an
 * error and the connection closed (no frame boundaries are left to trust).
 */
import { z } from "zod";
import { createCodec, encode } from "../core/codec.ts";
import { StoaError, errorCodeFromWire, describeError } from "../core/errors.ts";
import { connectErrorCode, framedRequest, serveFramed } from "../core/framed-socket.ts";
import type { Logger } from "../core/log.ts";
import { MAX_PATH_BYTES } from "./acl.ts";
import { type DaemonStatus, MAX_CHANNELS } from "./daemon.ts";
import type { IpcSpec } from "./ipc.ts";
import { parseIpcSpec, parseTunnelSpec } from "./specs.ts";
import type { TunnelSpec } from "./tunnel.ts";

/** A spec is a channel path (≤ 4096 bytes), `=`, and an address: far below this. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** `ls` of `MAX_CHANNELS` channels at well under 1 KiB each fits with room to spare. */
export const MAX_ANSWER_BYTES = 8 * 1024 * 1024;
export const MAX_PIPELINED = 16;
export const MAX_CONNECTIONS = 64;
export const IDLE_TIMEOUT_MS = 60_000;
/** How long a client waits for an answer; binding a port or a socket takes milliseconds. */
export const REQUEST_TIMEOUT_MS = 10_000;
const MAX_SPEC_CHARS = MAX_PATH_BYTES + 1024;
const MAX_MESSAGE_CHARS = 4096;

/** `<run_dir>/hotlink/<user>.sock`: the control socket of `user`'s daemon (core/paths.ts owns the layout). */
export { hotlinkControlPath } from "../core/paths.ts";

// ---------------------------------------------------------------------------------------------
// Messages

const Spec = z.string().min(1).max(MAX_SPEC_CHARS);

const ControlRequest = z.discriminatedUnion("type", [
  z.object({ type: z.literal("tunnel"), spec: Spec }),
  z.object({ type: z.literal("ipc"), spec: Spec }),
  z.object({ type: z.literal("ls") }),
  z.object({ type: z.literal("close"), channel: z.string().min(1).max(MAX_PATH_BYTES) }),
]);
export type ControlRequest = z.output<typeof ControlRequest>;

const Count = z.number().int().min(0);
const Channel = z.string().max(MAX_PATH_BYTES);
const Origin = z.enum(["flag", "control", "watch"]);
// Loose objects: a newer daemon may report more than this client prints; --json shows it all.
const SessionView = z.looseObject({ state: z.string().max(32), bytes: Count }).nullable();

const TunnelView = z.looseObject({
  channel: Channel,
  listen: z.string().max(300),
  port: z.number().int().min(0).max(65535),
  peer: z.string().max(256).nullable(),
  app: z.boolean(),
  held: Count,
  origin: Origin,
  out: SessionView,
  in: z.looseObject({ bytes: Count }).nullable(),
});

const IpcView = z.looseObject({
  channel: Channel,
  path: z.string().max(4096),
  apps: Count,
  held: Count,
  origin: Origin,
  out: SessionView,
  in: z.array(z.looseObject({ bytes: Count })).max(100_000),
});

const StatusView = z.looseObject({
  user: z.string().max(256),
  server: z.string().max(4096),
  connected: z.boolean(),
  tunnels: z.array(TunnelView).max(MAX_CHANNELS),
  ipc: z.array(IpcView).max(MAX_CHANNELS),
  sessions: z.object({ outgoing: Count, incoming: Count }),
  counters: z.looseObject({}),
});
export type StatusView = z.output<typeof StatusView>;

const OkAnswer = z.discriminatedUnion("type", [
  z.object({ ok: z.literal(true), type: z.literal("tunnel"), tunnel: TunnelView }),
  z.object({ ok: z.literal(true), type: z.literal("ipc"), ipc: IpcView }),
  z.object({ ok: z.literal(true), type: z.literal("ls"), status: StatusView }),
  z.object({ ok: z.literal(true), type: z.literal("close"), channel: Channel, kind: z.enum(["tunnel", "ipc"]) }),
]);
type OkAnswer = z.output<typeof OkAnswer>;
/** The answer to a request of type `T`. */
export type AnswerFor<T extends ControlRequest["type"]> = Extract<OkAnswer, { type: T }>;

// A string, not an enum: a newer daemon may send a code this client does not know.
const ErrorAnswer = z.object({ ok: z.literal(false), code: z.string().max(64), message: z.string().max(MAX_MESSAGE_CHARS) });

const ControlAnswer = z.union([OkAnswer, ErrorAnswer]);
export type ControlAnswer = z.output<typeof ControlAnswer>;

export const controlRequestCodec = createCodec(ControlRequest, { maxBytes: MAX_REQUEST_BYTES });
export const controlAnswerCodec = createCodec(ControlAnswer, { maxBytes: MAX_ANSWER_BYTES });

// ---------------------------------------------------------------------------------------------
// Answering

/** What the control socket changes: a `HotlinkDaemon` (an interface, so tests can stand in). */
export interface ControlTarget {
  addTunnel(spec: TunnelSpec, origin: "control"): unknown;
  addIpc(spec: IpcSpec, origin: "control"): Promise<unknown>;
  remove(channel: string): Promise<boolean>;
  channelKind(channel: string): "tunnel" | "ipc" | null;
  status(): DaemonStatus;
}

/** An answer as the daemon builds it (typed by its own status), before it goes on the wire. */
type DaemonAnswer =
  | { ok: true; type: "tunnel"; tunnel: DaemonStatus["tunnels"][number] }
  | { ok: true; type: "ipc"; ipc: DaemonStatus["ipc"][number] }
  | { ok: true; type: "ls"; status: DaemonStatus }
  | { ok: true; type: "close"; channel: string; kind: "tunnel" | "ipc" }
  | { ok: false; code: string; message: string };

async function handle(target: ControlTarget, request: ControlRequest): Promise<DaemonAnswer> {
  switch (request.type) {
    case "tunnel": {
      const spec = parseTunnelSpec(request.spec);
      target.addTunnel(spec, "control");
      const tunnel = target.status().tunnels.find((t) => t.channel === spec.channel);
      if (tunnel === undefined) throw new StoaError("internal", `tunnel ${spec.channel} was added but is not listed`);
      return { ok: true, type: "tunnel", tunnel: plain(tunnel) };
    }
    case "ipc": {
      const spec = parseIpcSpec(request.spec);
      await target.addIpc(spec, "control");
      const ipc = target.status().ipc.find((c) => c.channel === spec.channel);
      if (ipc === undefined) throw new StoaError("internal", `channel ${spec.channel} was added but is not listed`);
      return { ok: true, type: "ipc", ipc: plain(ipc) };
    }
    case "ls":
      return { ok: true, type: "ls", status: plain(target.status()) };
    case "close": {
      const kind = target.channelKind(request.channel);
      if (kind === null || !(await target.remove(request.channel))) {
        throw new StoaError("not_found", `no tunnel or channel ${request.channel} is declared on this daemon (see stoa hotlink ls)`);
      }
      return { ok: true, type: "close", channel: request.channel, kind };
    }
  }
}

/** The status as CBOR's data model takes it: no `undefined` fields, no class instances. */
function plain<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

function errorAnswer(error: StoaError): DaemonAnswer {
  return { ok: false, code: error.code, message: error.message.slice(0, MAX_MESSAGE_CHARS) };
}

/**
 * One request message's bytes in, its answer's bytes out (a frame payload each): what the
 * server does for every frame. Never throws; whatever the bytes, the answer is a valid
 * message within `MAX_ANSWER_BYTES`.
 */
export async function answerControlMessage(target: ControlTarget, bytes: Uint8Array, log: Logger): Promise<Uint8Array> {
  const decoded = controlRequestCodec.safeDecode(bytes);
  let answer: DaemonAnswer;
  if (!decoded.ok) answer = errorAnswer(decoded.error);
  else {
    try {
      answer = await handle(target, decoded.value);
    } catch (err) {
      if (err instanceof StoaError) answer = errorAnswer(err);
      else {
        log.error("a control request failed unexpectedly", { type: decoded.value.type, err });
        answer = errorAnswer(new StoaError("internal", `the daemon failed to answer: ${String(err)}`));
      }
    }
  }
  try {
    return encode(answer, { maxBytes: MAX_ANSWER_BYTES });
  } catch (err) {
    const error = err instanceof StoaError ? err : new StoaError("internal", String(err));
    return encode(errorAnswer(error), { maxBytes: MAX_ANSWER_BYTES });
  }
}

// ---------------------------------------------------------------------------------------------
// Server

export interface HotlinkControl {
  readonly path: string;
  /** Stops accepting, removes the socket file (if still ours) and ends every connection. */
  close(): Promise<void>;
}

/**
 * Serves the control socket at `path` for `target`. Throws StoaError "in_use" when a live
 * process (another daemon) serves that path.
 * @example
 * const control = await startHotlinkControl(hotlinkControlPath(defaultRunDir(), "alice"), daemon, log);
 * onShutdown("hotlink control", () => control.close());
 */
export async function startHotlinkControl(path: string, target: ControlTarget, log: Logger): Promise<HotlinkControl> {
  const server = await serveFramed(path, {
    maxRequestBytes: MAX_REQUEST_BYTES,
    maxAnswerBytes: MAX_ANSWER_BYTES,
    maxPipelined: MAX_PIPELINED,
    maxConnections: MAX_CONNECTIONS,
    idleTimeoutMs: IDLE_TIMEOUT_MS,
    answer: (frame) => answerControlMessage(target, frame, log),
    refusal: (error) => encode(errorAnswer(error), { maxBytes: MAX_ANSWER_BYTES }),
    log,
  });
  return { path: server.path, close: () => server.close() };
}

// ---------------------------------------------------------------------------------------------
// Client

export interface ControlRequestOptions {
  /** Default `REQUEST_TIMEOUT_MS`. */
  timeoutMs?: number;
  /** Appended to the "no daemon" error, e.g. "; is `stoa hotlink connect` running for user alice?" */
  hint?: string;
}


/**
 * Sends one request to the daemon serving the control socket `path` and returns its answer.
 * Throws StoaError: "closed" when no daemon serves `path`, "timeout", "decode"/"schema" for an
 * answer that is not one, or the daemon's own error (its code, message prefixed "hotlink daemon:").
 * @example
 * const { tunnel } = await hotlinkControlRequest(path, { type: "tunnel", spec: "alice/x=127.0.0.1:0@bob" });
 * console.log(tunnel.port); // the port the daemon bound
 */
export async function hotlinkControlRequest<R extends ControlRequest>(
  path: string,
  request: R,
  options: ControlRequestOptions = {},
): Promise<AnswerFor<R["type"]>> {
  const bytes = await framedRequest(path, controlRequestCodec.encode(request), {
    maxRequestBytes: MAX_REQUEST_BYTES,
    maxAnswerBytes: MAX_ANSWER_BYTES,
    timeoutMs: options.timeoutMs ?? REQUEST_TIMEOUT_MS,
    peer: `the hotlink daemon at ${path}`,
    what: request.type,
    noServer: (err) => noDaemon(path, err, options.hint ?? ""),
  });
  const got = controlAnswerCodec.decode(bytes);
  if (!got.ok) throw new StoaError(errorCodeFromWire(got.code), `hotlink daemon: ${got.message}`);
  if (answers<R["type"]>(got, request.type)) return got;
  throw new StoaError("decode", `the hotlink daemon answered "${got.type}" to a "${request.type}" request; is it a compatible version?`);
}

function answers<T extends ControlRequest["type"]>(answer: OkAnswer, type: T): answer is AnswerFor<T> {
  return answer.type === type;
}

function noDaemon(path: string, err: unknown, hint: string): StoaError {
  const code = connectErrorCode(err);
  if (code === "ENOENT" || code === "ECONNREFUSED") {
    return new StoaError("closed", `no hotlink daemon is running with control socket ${path}${hint}`, { cause: err });
  }
  const reason = describeError(err);
  return new StoaError("io", `cannot connect to the hotlink control socket ${path}: ${code || reason}`, { cause: err });
}
