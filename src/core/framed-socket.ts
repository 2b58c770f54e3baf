/**
 * Request/answer over a Unix socket in core/frame.ts frames: the machinery of stoa's control
 * sockets (the gateway's, a hotlink daemon's). What a frame holds is the caller's business.
 *
 * Server (`serveFramed`): each connection has a `FrameDecoder`; complete frames are queued (at
 * most `maxPipelined`) and answered one at a time, in order, by `answer`. Answers the socket does
 * not take at once are queued (core/outbox.ts) and written on drain. A frame header over the
 * limit, or too many unanswered requests, gets the `refusal` answer and the connection is closed
 * (no frame boundaries are left to trust). At most `maxConnections` connections; idle ones close
 * after `idleTimeoutMs`. The socket is bound with core/unixsock.ts: a live one is never taken over.
 * Every limit defaults to the control sockets' own (`MAX_CONTROL_*`, `CONTROL_IDLE_TIMEOUT_MS` below).
 *
 * Client (`framedRequest`): opens a connection, sends one frame, returns the first frame that
 * comes back and closes; bounded by a timeout.
 */
import type { Socket, SocketHandler, UnixSocketListener } from "bun";
import { StoaError, describeError } from "./errors.ts";
import { encodeFrame, FrameDecoder } from "./frame.ts";
import type { Logger } from "./log.ts";
import { Outbox } from "./outbox.ts";
import { listenUnix, type UnixBinding } from "./unixsock.ts";

// The limits of stoa's control sockets, the defaults of both ends: a protocol overrides only
// what it needs otherwise (gateway/protocol.ts and hotlink/protocol.ts use them as they are).

/** A control request is a few hundred bytes; this leaves room for long paths and nothing else. */
export const MAX_CONTROL_REQUEST_BYTES = 64 * 1024;
/** The longest answer, a full listing (the gateway's `list`, a hotlink daemon's `ls`), fits with room to spare. */
export const MAX_CONTROL_ANSWER_BYTES = 8 * 1024 * 1024;
/** Unanswered requests one connection may queue before it is closed: a CLI sends one at a time. */
export const MAX_CONTROL_PIPELINED = 16;
/** Concurrent connections; more are closed at once (local clients only: generous). */
export const MAX_CONTROL_CONNECTIONS = 64;
/** A connection with no traffic for this long is closed. */
export const CONTROL_IDLE_TIMEOUT_MS = 60_000;

interface FramedServerOptions {
  /** Default `MAX_CONTROL_REQUEST_BYTES`. */
  maxRequestBytes?: number;
  /** Default `MAX_CONTROL_ANSWER_BYTES`. */
  maxAnswerBytes?: number;
  /** Default `MAX_CONTROL_PIPELINED`. */
  maxPipelined?: number;
  /** Default `MAX_CONTROL_CONNECTIONS`. */
  maxConnections?: number;
  /** Default `CONTROL_IDLE_TIMEOUT_MS`. */
  idleTimeoutMs?: number;
  /**
   * Serve this listening Unix socket, bound elsewhere (a supervisor passed it on), instead of
   * binding `path` (then only a name in messages). The server owns it from the call on: `close()`
   * stops it and leaves the socket file alone — whoever bound it removes it.
   */
  fd?: number;
  /** Answers one request frame with the answer's payload. Must not throw: errors are answers. */
  answer(frame: Uint8Array): Promise<Uint8Array>;
  /** The payload of an error answer, for a request refused before `answer` saw it. */
  refusal(error: StoaError): Uint8Array;
  log: Logger;
}

export interface FramedServer {
  readonly path: string;
  /** Stops accepting and unlinks the socket file if it is still ours; open connections stay. */
  release(): Promise<void>;
  /** `release()`, then ends every connection once its queued answers are written. */
  close(): Promise<void>;
}

/** One server connection's state, in `socket.data`. */
interface FramedConn {
  frames: FrameDecoder;
  /** Requests not answered yet. */
  queue: Uint8Array[];
  busy: boolean;
  /** Answers the socket did not take yet. */
  out: Outbox;
  /** End the connection once everything queued is answered and written. */
  closing: boolean;
  closed: boolean;
}

/** Binds `path` and serves it. Throws `StoaError` "in_use" when a live process serves it. */
export async function serveFramed(path: string, options: FramedServerOptions): Promise<FramedServer> {
  const o = {
    ...options,
    maxRequestBytes: options.maxRequestBytes ?? MAX_CONTROL_REQUEST_BYTES,
    maxAnswerBytes: options.maxAnswerBytes ?? MAX_CONTROL_ANSWER_BYTES,
    maxPipelined: options.maxPipelined ?? MAX_CONTROL_PIPELINED,
    maxConnections: options.maxConnections ?? MAX_CONTROL_CONNECTIONS,
    idleTimeoutMs: options.idleTimeoutMs ?? CONTROL_IDLE_TIMEOUT_MS,
  };
  const conns = new Set<Socket<FramedConn>>();

  const finishIfDone = (sock: Socket<FramedConn>): void => {
    const c = sock.data;
    if (c.closing && !c.busy && c.queue.length === 0 && c.out.queued === 0 && !c.closed) sock.end();
  };

  const send = (sock: Socket<FramedConn>, payload: Uint8Array): void => {
    const c = sock.data;
    if (c.closed) return;
    let frame: Uint8Array;
    try {
      frame = encodeFrame(payload, { maxBytes: o.maxAnswerBytes });
    } catch (err) {
      frame = encodeFrame(o.refusal(err instanceof StoaError ? err : new StoaError("internal", String(err))));
    }
    c.out.write(frame);
    finishIfDone(sock);
  };

  const pump = async (sock: Socket<FramedConn>): Promise<void> => {
    const c = sock.data;
    if (c.busy) return;
    c.busy = true;
    try {
      for (let frame = c.queue.shift(); frame !== undefined && !c.closed; frame = c.queue.shift()) {
        send(sock, await o.answer(frame));
      }
    } finally {
      c.busy = false;
    }
    finishIfDone(sock);
  };

  const refuse = (sock: Socket<FramedConn>, error: StoaError): void => {
    const c = sock.data;
    c.queue = [];
    c.closing = true;
    sock.pause();
    send(sock, o.refusal(error));
  };

  const handlers: SocketHandler<FramedConn> = {
    open(sock) {
      sock.data = { frames: new FrameDecoder({ maxBytes: o.maxRequestBytes }), queue: [], busy: false, out: new Outbox(sock), closing: false, closed: false };
      if (conns.size >= o.maxConnections) {
        o.log.warn("too many control connections; refusing one", { limit: o.maxConnections });
        sock.terminate();
        return;
      }
      conns.add(sock);
      sock.timeout(Math.ceil(o.idleTimeoutMs / 1000));
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
        if (c.queue.length >= o.maxPipelined) {
          refuse(sock, new StoaError("too_large", `more than ${o.maxPipelined} unanswered requests; wait for answers before sending more`));
          return;
        }
        c.queue.push(frame);
      }
      void pump(sock);
    },
    drain(sock) {
      sock.data.out.flush(); // cleared, so a no-op, once closed
      finishIfDone(sock);
    },
    end(sock) {
      sock.data.closing = true;
      finishIfDone(sock);
    },
    timeout(sock) {
      sock.end();
    },
    close(sock) {
      const c = sock.data as FramedConn | undefined;
      if (c !== undefined) {
        c.closed = true;
        c.out.clear();
      }
      conns.delete(sock);
    },
    error(sock, err) {
      o.log.debug("control connection failed", { err });
      sock.terminate();
    },
  };
  const binding: Pick<UnixBinding<UnixSocketListener<FramedConn>>, "path" | "close"> =
    o.fd === undefined ? await listenUnix<FramedConn>(path, { allowHalfOpen: true, socket: handlers }) : adopt(o.fd, path, handlers);

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

/** A server on a listening socket bound by someone else (see `fd`): stopping it never unlinks a file. */
function adopt(fd: number, path: string, socket: SocketHandler<FramedConn>): Pick<UnixBinding<UnixSocketListener<FramedConn>>, "path" | "close"> {
  let listener: { stop(closeActive?: boolean): void };
  try {
    listener = Bun.listen<FramedConn>({ fd, allowHalfOpen: true, socket } as unknown as Parameters<typeof Bun.listen<FramedConn>>[0]);
  } catch (err) {
    throw new StoaError("io", `cannot serve the control socket ${path} (fd ${fd}): ${describeError(err)}`, { cause: err });
  }
  return { path, close: async () => listener.stop(false) };
}

interface FramedRequestOptions {
  /** Default `MAX_CONTROL_REQUEST_BYTES`. */
  maxRequestBytes?: number;
  /** Default `MAX_CONTROL_ANSWER_BYTES`. */
  maxAnswerBytes?: number;
  timeoutMs: number;
  /** Who answers, for messages: e.g. "the gateway at /run/stoa/gateway.sock". */
  peer: string;
  /** What is asked, for messages: e.g. the request's type. */
  what: string;
  /** The error for a failed connect (ENOENT / ECONNREFUSED: nobody serves `path`). */
  noServer(err: unknown): StoaError;
}

/**
 * Sends `payload` as one frame to the server at `path` and returns the payload of its answer.
 * Throws `StoaError`: `noServer(...)` when the connect fails, "timeout", "closed" when the server
 * hangs up first, "too_large" for an answer over the limit.
 */
export async function framedRequest(path: string, payload: Uint8Array, o: FramedRequestOptions): Promise<Uint8Array> {
  const decoder = new FrameDecoder({ maxBytes: o.maxAnswerBytes ?? MAX_CONTROL_ANSWER_BYTES });
  const answer = Promise.withResolvers<Uint8Array>();
  const request = encodeFrame(payload, { maxBytes: o.maxRequestBytes ?? MAX_CONTROL_REQUEST_BYTES });
  let out: Outbox | undefined; // made once connected
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StoaError("timeout", `${o.peer} did not answer ${o.what} within ${o.timeoutMs} ms; is it overloaded or stuck?`)), o.timeoutMs);
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
              if (first !== undefined) answer.resolve(first);
            } catch (err) {
              answer.reject(err);
            }
          },
          drain: () => void out?.flush(),
          close() {
            answer.reject(new StoaError("closed", `${o.peer} closed the connection before answering ${o.what}`));
          },
          error(_s, err) {
            answer.reject(err);
          },
        },
      }).catch((err: unknown) => {
        throw o.noServer(err);
      }),
      deadline,
    ]);
    out = new Outbox(sock);
    out.write(request);
    return await Promise.race([answer.promise, deadline]);
  } finally {
    clearTimeout(timer);
    answer.promise.catch(() => {}); // settled after we stopped listening: not an unhandled rejection
    sock?.end();
  }
}

/** The errno-style code of a failed connect ("ENOENT", "ECONNREFUSED", ...), or "". */
export function connectErrorCode(err: unknown): string {
  return typeof err === "object" && err !== null && "code" in err ? String(err.code) : "";
}
