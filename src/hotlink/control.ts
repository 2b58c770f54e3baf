/**
 * The hotlink daemon's control socket, through which `stoa hotlink tunnel|ipc|ls|close` change
 * a running `stoa hotlink connect`: server and client.
 *
 * Where: `<run_dir>/hotlink/<user>.sock` by default (`hotlinkControlPath`), mode 0600 in a
 * directory created 0700, bound with core/unixsock.ts, so a second daemon for the same user and
 * run dir finds the socket alive and fails with "in_use" instead of taking it over.
 *
 * Wire: protocol.ts ("Control socket"): the requests, the answers, the daemon's status and the
 * limits, with their schemas and codecs. This module serves them (core/framed-socket.ts: frames,
 * pipelining, connection cap, idle timeout) and sends them.
 */
import { StoaError, errorCodeFromWire, describeError } from "../core/errors.ts";
import { connectErrorCode, framedRequest, serveFramed } from "../core/framed-socket.ts";
import type { Logger } from "../core/log.ts";
import type { IpcSpec } from "./ipc.ts";
import {
  type AnswerFor,
  type ControlAnswer,
  type ControlRequest,
  type DaemonStatus,
  MAX_CONTROL_ERROR_LENGTH,
  controlAnswerCodec,
  controlRequestCodec,
} from "./protocol.ts";
import { parseIpcSpec, parseTunnelSpec } from "./specs.ts";
import type { TunnelSpec } from "./tunnel.ts";

/** How long a client waits for an answer; binding a port or a socket takes milliseconds. */
const REQUEST_TIMEOUT_MS = 10_000;

/** `<run_dir>/hotlink/<user>.sock`: the control socket of `user`'s daemon (core/paths.ts owns the layout). */
export { hotlinkControlPath } from "../core/paths.ts";

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

async function handle(target: ControlTarget, request: ControlRequest): Promise<ControlAnswer> {
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

function errorAnswer(error: StoaError): ControlAnswer {
  return { ok: false, code: error.code, message: error.message.slice(0, MAX_CONTROL_ERROR_LENGTH) };
}

/**
 * One request message's bytes in, its answer's bytes out (a frame payload each): what the
 * server does for every frame. Never throws; whatever the bytes, the answer is a valid
 * message within `MAX_CONTROL_ANSWER_BYTES`.
 */
export async function answerControlMessage(target: ControlTarget, bytes: Uint8Array, log: Logger): Promise<Uint8Array> {
  const decoded = controlRequestCodec.safeDecode(bytes);
  let answer: ControlAnswer;
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
    return controlAnswerCodec.encode(answer);
  } catch (err) {
    const error = err instanceof StoaError ? err : new StoaError("internal", String(err));
    return controlAnswerCodec.encode(errorAnswer(error));
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
    answer: (frame) => answerControlMessage(target, frame, log),
    refusal: (error) => controlAnswerCodec.encode(errorAnswer(error)),
    log,
  });
  return { path: server.path, close: () => server.close() };
}

// ---------------------------------------------------------------------------------------------
// Client

interface ControlRequestOptions {
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

function answers<T extends ControlRequest["type"]>(answer: Extract<ControlAnswer, { ok: true }>, type: T): answer is AnswerFor<T> {
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
