/**
 * The control socket `<run_dir>/gateway.sock`: server and client (protocol in protocol.ts).
 *
 * Server: each connection has a `FrameDecoder`; complete frames are queued (at most
 * `MAX_PIPELINED_REQUESTS`) and answered one at a time, in order, by the gateway's handler. A
 * message that does not decode is answered with an error and the connection stays usable; a
 * frame header over the limit closes it (no boundaries are left to trust). Answers that the
 * socket does not take at once are queued and written on drain.
 *
 * Client: `controlRequest` opens a connection, sends one request, returns its typed answer and
 * closes. An error answer becomes a `StoaError` with the gateway's code and message.
 */
import type { Socket, UnixSocketListener } from "bun";
import { StoaError } from "../core/errors.ts";
import { encodeFrame, FrameDecoder } from "../core/frame.ts";
import type { Logger } from "../core/log.ts";
import { gatewayControlPath } from "../core/paths.ts";
import { listenUnix, type UnixBinding } from "../core/unixsock.ts";
import {
  CONTROL_IDLE_TIMEOUT_MS,
  CONTROL_REQUEST_TIMEOUT_MS,
  type ControlRequest,
  type ControlRequestInput,
  type ControlResponse,
  controlRequestCodec,
  controlResponseCodec,
  errorCodeFromWire,
  MAX_CONTROL_CONNECTIONS,
  MAX_CONTROL_REQUEST_BYTES,
  MAX_CONTROL_RESPONSE_BYTES,
  MAX_PIPELINED_REQUESTS,
  type ResponseFor,
} from "./protocol.ts";

/** Answers one decoded request; a thrown StoaError becomes an error answer. */
export type ControlHandler = (request: ControlRequest) => Promise<ControlResponse>;

export interface ControlServer {
  readonly path: string;
  /** Stops accepting and unlinks the socket file if it is still ours; open connections stay. */
  release(): Promise<void>;
  /** `release()`, then ends every connection once its queued answers are written. */
  close(): Promise<void>;
}

interface ControlConn {
  frames: FrameDecoder;
  queue: Uint8Array[];
  busy: boolean;
  unsent: Uint8Array[];
  /** End the connection once everything queued is answered and written. */
  closing: boolean;
  closed: boolean;
}

/**
 * Binds the control socket (safely: a live one is never taken over, see core unixsock.ts) and
 * serves it with `handle`. Throws `StoaError` "in_use" when another gateway serves it.
 */
export async function startControlServer(path: string, handle: ControlHandler, log: Logger): Promise<ControlServer> {
  const conns = new Set<Socket<ControlConn>>();

  const finishIfDone = (sock: Socket<ControlConn>): void => {
    const c = sock.data;
    if (c.closing && !c.busy && c.queue.length === 0 && c.unsent.length === 0 && !c.closed) sock.end();
  };

  const send = (sock: Socket<ControlConn>, response: ControlResponse): void => {
    const c = sock.data;
    if (c.closed) return;
    let bytes: Uint8Array;
    try {
      bytes = encodeFrame(controlResponseCodec.encode(response), { maxBytes: MAX_CONTROL_RESPONSE_BYTES });
    } catch (err) {
      const error = err instanceof StoaError ? err : new StoaError("internal", String(err));
      bytes = encodeFrame(controlResponseCodec.encode(errorAnswer(error)));
    }
    c.unsent.push(bytes);
    flush(sock);
  };

  const flush = (sock: Socket<ControlConn>): void => {
    const c = sock.data;
    while (c.unsent.length > 0 && !c.closed) {
      const head = c.unsent[0] as Uint8Array;
      const n = Math.max(0, sock.write(head));
      if (n < head.length) {
        c.unsent[0] = head.subarray(n);
        return;
      }
      c.unsent.shift();
    }
    finishIfDone(sock);
  };

  const answer = async (frame: Uint8Array): Promise<ControlResponse> => {
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

  const pump = async (sock: Socket<ControlConn>): Promise<void> => {
    const c = sock.data;
    if (c.busy) return;
    c.busy = true;
    try {
      for (let frame = c.queue.shift(); frame !== undefined && !c.closed; frame = c.queue.shift()) {
        send(sock, await answer(frame));
      }
    } finally {
      c.busy = false;
    }
    finishIfDone(sock);
  };

  const refuse = (sock: Socket<ControlConn>, error: StoaError): void => {
    const c = sock.data;
    c.queue = [];
    c.closing = true;
    send(sock, errorAnswer(error));
    sock.pause();
  };

  const binding: UnixBinding<UnixSocketListener<ControlConn>> = await listenUnix<ControlConn>(path, {
    allowHalfOpen: true,
    socket: {
      open(sock) {
        sock.data = { frames: new FrameDecoder({ maxBytes: MAX_CONTROL_REQUEST_BYTES }), queue: [], busy: false, unsent: [], closing: false, closed: false };
        if (conns.size >= MAX_CONTROL_CONNECTIONS) {
          log.warn("too many control connections; refusing one", { limit: MAX_CONTROL_CONNECTIONS });
          sock.terminate();
          return;
        }
        conns.add(sock);
        sock.timeout(Math.ceil(CONTROL_IDLE_TIMEOUT_MS / 1000));
      },
      data(sock, chunk) {
        const c = sock.data;
        if (c.closing || c.closed) return;
        let frames: Uint8Array[];
        try {
          frames = c.frames.push(chunk);
        } catch (err) {
          refuse(sock, err instanceof StoaError ? err : new StoaError("decode", String(err)));
          return;
        }
        for (const frame of frames) {
          if (c.queue.length >= MAX_PIPELINED_REQUESTS) {
            refuse(sock, new StoaError("too_large", `more than ${MAX_PIPELINED_REQUESTS} unanswered requests; wait for answers before sending more`));
            return;
          }
          c.queue.push(frame);
        }
        void pump(sock);
      },
      drain(sock) {
        flush(sock);
      },
      end(sock) {
        sock.data.closing = true;
        finishIfDone(sock);
      },
      timeout(sock) {
        sock.end();
      },
      close(sock) {
        const c = sock.data as ControlConn | undefined;
        if (c !== undefined) c.closed = true;
        conns.delete(sock);
      },
      error(sock, err) {
        log.warn("control connection failed", { err });
        sock.terminate();
      },
    },
  });

  let released: Promise<void> | undefined;
  const release = (): Promise<void> => (released ??= binding.close(false));
  return {
    path: binding.path,
    release,
    async close() {
      await release();
      for (const sock of conns) {
        sock.data.closing = true;
        finishIfDone(sock);
      }
    },
  };
}

function errorAnswer(error: StoaError): ControlResponse {
  return { type: "error", error: { code: error.code, message: error.message.slice(0, 4096) } };
}

export interface ControlRequestOptions {
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
  const timeoutMs = options.timeoutMs ?? CONTROL_REQUEST_TIMEOUT_MS;
  const frame = encodeFrame(controlRequestCodec.encode(request), { maxBytes: MAX_CONTROL_REQUEST_BYTES });
  const decoder = new FrameDecoder({ maxBytes: MAX_CONTROL_RESPONSE_BYTES });
  const answer = Promise.withResolvers<ControlResponse>();
  let unsent: Uint8Array = frame;
  const flush = (sock: Socket<undefined>): void => {
    if (unsent.length === 0) return;
    unsent = unsent.subarray(Math.max(0, sock.write(unsent)));
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new StoaError("timeout", `the gateway at ${path} did not answer ${request.type} within ${timeoutMs} ms; is it overloaded or stuck?`)),
      timeoutMs,
    );
  });
  let sock: Socket<undefined> | undefined;
  try {
    sock = await Promise.race([
      Bun.connect({
        unix: path,
        socket: {
          data(_s, chunk) {
            try {
              const [first] = decoder.push(chunk);
              if (first !== undefined) answer.resolve(controlResponseCodec.decode(first));
            } catch (err) {
              answer.reject(err);
            }
          },
          drain: (s) => flush(s),
          close() {
            answer.reject(new StoaError("closed", `the gateway at ${path} closed the connection before answering ${request.type}`));
          },
          error(_s, err) {
            answer.reject(err);
          },
        },
      }).catch((err: unknown) => {
        throw noGateway(path, err);
      }),
      deadline,
    ]);
    flush(sock);
    const response = await Promise.race([answer.promise, deadline]);
    if (response.type === "error") {
      throw new StoaError(errorCodeFromWire(response.error.code), `gateway: ${response.error.message}`);
    }
    if (answers<R["type"]>(response, request.type)) return response;
    throw new StoaError("decode", `the gateway answered "${response.type}" to a "${request.type}" request; is it a compatible version?`);
  } finally {
    clearTimeout(timer);
    answer.promise.catch(() => {}); // settled after we stopped listening: not an unhandled rejection
    sock?.end();
  }
}

function answers<T extends ControlRequest["type"]>(response: ControlResponse, type: T): response is ResponseFor<T> {
  return response.type === type;
}

function noGateway(path: string, err: unknown): StoaError {
  const code = typeof err === "object" && err !== null && "code" in err ? String(err.code) : "";
  if (code === "ENOENT" || code === "ECONNREFUSED") {
    return new StoaError("closed", `no gateway is running with control socket ${path}; start one with \`stoa gateway\` (or \`stoa up\`) on this run dir`, { cause: err });
  }
  const reason = err instanceof Error ? err.message : String(err);
  return new StoaError("io", `cannot connect to the gateway control socket ${path}: ${code || reason}`, { cause: err });
}
