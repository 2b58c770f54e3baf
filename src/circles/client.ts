/**
 * The play client behind `stoa circles play`: one WebSocket to `ws(s)://host:port/<circle_pk>`
 * (core/ws.ts `dialWebSocket`, so a refused upgrade shows the server's status and JSON message),
 * then — with a key file — fetch_nonce → sign (auth.ts `signNonce`) → authenticate, then play,
 * each awaited in turn (protocol.ts). The whole exchange is bounded by `timeoutMs`.
 *
 * Failures are StoaErrors: "auth" for a refused authentication (-32001, -32002), "timeout" for
 * -32003 and for the client's own deadline, "closed" when the server refused the upgrade or went
 * away, "io" for any other JSON-RPC error (-32000 execution, -326xx) — the message is the
 * server's, and `rpcCode` carries the JSON-RPC code when there was one.
 */
import { StoaError, describeError, type ErrorCode } from "../core/errors.ts";
import { type Logger, createLogger } from "../core/log.ts";
import { waitFor } from "../core/wait.ts";
import { type UpgradeRefusal, describeRefusal, dialWebSocket } from "../core/ws.ts";
import { readKeyFile, signNonce } from "./auth.ts";
import {
  AuthenticateResultSchema,
  FetchNonceResultSchema,
  MAX_RESPONSE_BYTES,
  type Method,
  PlayResultSchema,
  RPC_ERROR,
  type RequestParams,
  decodeResponse,
  encodeRequest,
} from "./protocol.ts";

/** Default bound of one `playOnce`: connect, authenticate and play. */
export const DEFAULT_PLAY_TIMEOUT_MS = 30_000;

interface PlayOptions {
  /** `ws://host:port/<circle_pk>` (or wss://). */
  url: string;
  /** A key file (auth.ts `readKeyFile`): authenticate with it before the play. */
  keyFile?: string;
  script: string;
  /** Bound of the whole exchange (default DEFAULT_PLAY_TIMEOUT_MS). */
  timeoutMs?: number;
  /** Before that: go on dialling a server that is not there (yet) this long (core/wait.ts; default 0). */
  waitMs?: number;
  /** Says once what it waits for (with `waitMs`). */
  log?: Logger;
}

/** A failed play: the StoaError, with the JSON-RPC error code when the server answered one. */
export class PlayError extends StoaError {
  readonly rpcCode: number | undefined;
  /** Nothing answered at the URL (no server yet): worth dialling again while waiting. */
  readonly unreachable: boolean;
  constructor(code: ErrorCode, message: string, rpcCode?: number, unreachable = false) {
    super(code, message);
    this.rpcCode = rpcCode;
    this.unreachable = unreachable;
  }
}

/**
 * Runs one script in a circle and returns its output (see the module header for failures).
 * @example
 * const output = await playOnce({ url: "ws://127.0.0.1:8080/02ab…", keyFile: "me.key", script: "40 + 2" }); // "42"
 */
export async function playOnce(options: PlayOptions): Promise<string> {
  const keys = options.keyFile === undefined ? undefined : readKeyFile(options.keyFile);
  const timeoutMs = options.timeoutMs ?? DEFAULT_PLAY_TIMEOUT_MS;
  const waitMs = options.waitMs ?? 0;
  const rpc =
    waitMs > 0
      ? await waitFor(() => RpcSocket.open(options.url, timeoutMs), {
          what: `the circles server at ${options.url}`,
          waitMs,
          retryable: (err) => err instanceof PlayError && err.unreachable,
          log: options.log ?? createLogger({ level: "warn" }),
        })
      : await RpcSocket.open(options.url, timeoutMs);
  try {
    if (keys !== undefined) {
      const pubkey = keys.publicKey.hex;
      const { nonce } = FetchNonceResultSchema.parse(await rpc.call("fetch_nonce", { pubkey }));
      AuthenticateResultSchema.parse(await rpc.call("authenticate", { pubkey, signature: signNonce(keys.privateKey, nonce) }));
    }
    return PlayResultSchema.parse(await rpc.call("play", { script: options.script })).output;
  } finally {
    rpc.close();
  }
}

/** One WebSocket, one request at a time, every wait bounded by the one deadline. */
class RpcSocket {
  readonly #ws: WebSocket;
  readonly #deadline: number;
  readonly #url: string;
  #nextId = 1;
  #answer: ((message: string) => void) | undefined;
  #failure: PlayError | undefined;
  #onFailure: ((err: PlayError) => void) | undefined;

  private constructor(ws: WebSocket, url: string, deadline: number) {
    this.#ws = ws;
    this.#url = url;
    this.#deadline = deadline;
  }

  static open(url: string, timeoutMs: number): Promise<RpcSocket> {
    let refusal: UpgradeRefusal | undefined;
    let ws: WebSocket;
    try {
      ws = dialWebSocket(url, { maxPayload: MAX_RESPONSE_BYTES }, (r) => {
        refusal = r;
      });
    } catch (err) {
      throw new PlayError("usage", `cannot connect to ${url}: ${describeError(err)}; give --url ws://HOST:PORT/<circle_pk>`);
    }
    const socket = new RpcSocket(ws, url, Date.now() + timeoutMs);
    ws.onmessage = (event) => socket.#answer?.(typeof event.data === "string" ? event.data : Buffer.from(event.data as ArrayBuffer).toString("utf8"));
    let opened = false;
    ws.onclose = (event) => {
      const unreachable = refusal === undefined && !opened;
      const why =
        refusal !== undefined
          ? `the server refused the connection: ${describeRefusal(refusal)}`
          : opened
            ? `the connection to ${url} closed (${event.code}${event.reason === "" ? "" : ` ${event.reason}`})`
            : `cannot connect to ${url}: no server answered there (is stoa circles serve running on that port?)`;
      socket.#fail(new PlayError("closed", why, undefined, unreachable));
    };
    return socket.#bounded("connecting", (resolve) => {
      ws.onopen = () => {
        opened = true;
        resolve(socket);
      };
    });
  }

  async call<M extends Method>(method: M, params: RequestParams[M]): Promise<unknown> {
    const id = this.#nextId++;
    const message = await this.#bounded<string>(method, (resolve) => {
      this.#answer = resolve;
      this.#ws.send(encodeRequest(id, method, params));
    });
    this.#answer = undefined;
    const response = decodeResponse(message);
    if (response.id !== id && response.id !== null) throw new PlayError("decode", `the server answered id ${String(response.id)} to request ${id}`);
    if ("error" in response) {
      const { code, message: text } = response.error;
      throw new PlayError(errorCodeFor(code), text, code);
    }
    return response.result;
  }

  close(): void {
    this.#ws.onclose = null;
    this.#ws.close(1000);
  }

  #fail(err: PlayError): void {
    this.#failure ??= err;
    this.#onFailure?.(this.#failure);
  }

  /** Waits for `start`'s resolve, the connection's failure, or the deadline. */
  #bounded<T>(what: string, start: (resolve: (value: T) => void) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#failure !== undefined) return reject(this.#failure);
      const timer = setTimeout(
        () => {
          reject(new PlayError("timeout", `no answer from ${this.#url} while ${what === "connecting" ? "connecting" : `waiting for ${what}`}; the deadline passed (--timeout)`));
          this.#ws.close();
        },
        Math.max(0, this.#deadline - Date.now()),
      );
      this.#onFailure = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      start((value) => {
        clearTimeout(timer);
        this.#onFailure = undefined;
        resolve(value);
      });
    });
  }
}

function errorCodeFor(rpcCode: number): ErrorCode {
  if (rpcCode === RPC_ERROR.authRequired || rpcCode === RPC_ERROR.invalidCredentials) return "auth";
  if (rpcCode === RPC_ERROR.timeout) return "timeout";
  return "io";
}
