/**
 * The control socket `<run_dir>/gateway.sock`: server and client (protocol in protocol.ts).
 *
 * Server: core/framed-socket.ts, with its limits (protocol.ts); requests are answered in order
 * by the gateway's handler. A message that does not decode is answered with an error and the
 * connection stays usable; a frame header over the limit closes it.
 *
 * Client: `controlRequest` opens a connection, sends one request, returns its typed answer and
 * closes. An error answer becomes a `StoaError` with the gateway's code and message.
 */
import { StoaError, describeError } from "../core/errors.ts";
import { connectErrorCode, type FramedServer, framedRequest, serveFramed } from "../core/framed-socket.ts";
import type { Logger } from "../core/log.ts";
import { gatewayControlPath } from "../core/paths.ts";
import {
  CONTROL_REQUEST_TIMEOUT_MS,
  type ControlRequest,
  type ControlRequestInput,
  type ControlResponse,
  controlRequestCodec,
  controlResponseCodec,
  errorCodeFromWire,
  type ResponseFor,
} from "./protocol.ts";

/** Answers one decoded request; a thrown StoaError becomes an error answer. */
type ControlHandler = (request: ControlRequest) => Promise<ControlResponse>;

/** `release()` stops accepting (connections stay); `close()` also ends them once answered. */
export type ControlServer = FramedServer;

/**
 * Binds the control socket (safely: a live one is never taken over, see core unixsock.ts) and
 * serves it with `handle`. Throws `StoaError` "in_use" when another gateway serves it.
 */
export async function startControlServer(path: string, handle: ControlHandler, log: Logger): Promise<ControlServer> {
  const respond = async (frame: Uint8Array): Promise<ControlResponse> => {
    const decoded = controlRequestCodec.safeDecode(frame);
    if (!decoded.ok) return errorAnswer(decoded.error);
    try {
      return await handle(decoded.value);
    } catch (err) {
      if (err instanceof StoaError) return errorAnswer(err);
      log.error("control request failed unexpectedly", { type: decoded.value.type, err });
      return errorAnswer(new StoaError("internal", `the gateway failed to answer: ${String(err)}`));
    }
  };
  const encodeAnswer = (response: ControlResponse): Uint8Array => {
    try {
      return controlResponseCodec.encode(response);
    } catch (err) {
      return controlResponseCodec.encode(errorAnswer(err instanceof StoaError ? err : new StoaError("internal", String(err))));
    }
  };
  return serveFramed(path, {
    answer: async (frame) => encodeAnswer(await respond(frame)),
    refusal: (error) => encodeAnswer(errorAnswer(error)),
    log,
  });
}

function errorAnswer(error: StoaError): ControlResponse {
  return { type: "error", error: { code: error.code, message: error.message.slice(0, 4096) } };
}

interface ControlRequestOptions {
  /** How long to wait for the answer; default `CONTROL_REQUEST_TIMEOUT_MS`. */
  timeoutMs?: number;
}

/**
 * Sends one request to the gateway serving `runDir` and returns its answer.
 * Throws `StoaError`: "closed" when no gateway serves the run dir (or it hung up), "timeout",
 * "decode"/"schema"/"too_large" for an answer that is not one, or the gateway's own error.
 * @example
 * const info = await controlRequest("/run/stoa", { type: "info" });
 * console.log(info.ports.service); // 8081
 * await controlRequest(runDir, { type: "register", pub_id: "p1", kind: "ping", target: "tcp:[::1]:4100" });
 */
export async function controlRequest<R extends ControlRequestInput>(
  runDir: string,
  request: R,
  options: ControlRequestOptions = {},
): Promise<ResponseFor<R["type"]>> {
  const path = gatewayControlPath(runDir);
  const answer = await framedRequest(path, controlRequestCodec.encode(request), {
    timeoutMs: options.timeoutMs ?? CONTROL_REQUEST_TIMEOUT_MS,
    peer: `the gateway at ${path}`,
    what: request.type,
    noServer: (err) => noGateway(path, err),
  });
  const response = controlResponseCodec.decode(answer);
  if (response.type === "error") {
    throw new StoaError(errorCodeFromWire(response.error.code), `gateway: ${response.error.message}`);
  }
  if (answers<R["type"]>(response, request.type)) return response;
  throw new StoaError("decode", `the gateway answered "${response.type}" to a "${request.type}" request; is it a compatible version?`);
}

function answers<T extends ControlRequest["type"]>(response: ControlResponse, type: T): response is ResponseFor<T> {
  return response.type === type;
}

function noGateway(path: string, err: unknown): StoaError {
  const code = connectErrorCode(err);
  if (code === "ENOENT" || code === "ECONNREFUSED") {
    return new StoaError("closed", `no gateway is running with control socket ${path}; start one with \`stoa gateway\` (or \`stoa up\`) on this run dir`, { cause: err });
  }
  const reason = describeError(err);
  return new StoaError("io", `cannot connect to the gateway control socket ${path}: ${code || reason}`, { cause: err });
}
