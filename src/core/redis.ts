/**
 * Redis for every subsystem that uses it (circles' queue, flows' mesh, the metaserver's store):
 * Bun's built-in `RedisClient` with no offline queue (a command while disconnected fails at
 * once, the caller decides whether to retry), a connection that comes back by itself
 * (`RedisLink`), Lua scripts sent by digest (`LuaScripts`), and URLs shown without passwords.
 * Scripts name their keys from arguments: single-instance Redis, not Cluster.
 */
import { RedisClient } from "bun";
import { describeError } from "./errors.ts";

/** A connection attempt fails after this long (a host that drops packets). */
export const REDIS_CONNECT_TIMEOUT_MS = 2_000;
/** Pause before trying Redis again after a failure. */
export const REDIS_RETRY_MS = 250;

/**
 * Whether a Redis answers PING at `hostname`:`port` within `timeoutMs`: one raw RESP exchange on
 * its own connection (no client, no retries), for waiting until a redis-server just started is up.
 */
export async function redisAnswersPing(port: number, hostname = "127.0.0.1", timeoutMs = 500): Promise<boolean> {
  const { promise: reply, resolve } = Promise.withResolvers<string>();
  const timer = setTimeout(() => resolve(""), timeoutMs);
  try {
    const socket = await Bun.connect({ hostname, port, socket: { data: (_s, chunk) => resolve(chunk.toString()), close: () => resolve("") } });
    socket.write("PING\r\n");
    const answer = await reply;
    socket.end();
    return answer.startsWith("+PONG");
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Named Lua scripts, run with EVALSHA and sent whole (EVAL) only when Redis does not have them
 * (a restarted or flushed Redis answers NOSCRIPT).
 */
export class LuaScripts<Name extends string> {
  readonly #text: Record<Name, string>;
  readonly #sha: Record<Name, string>;

  constructor(text: Record<Name, string>) {
    this.#text = text;
    this.#sha = Object.fromEntries(
      Object.entries<string>(text).map(([name, lua]) => [name, new Bun.CryptoHasher("sha1").update(lua).digest("hex")]),
    ) as Record<Name, string>;
  }

  async run(client: RedisClient, name: Name, keys: readonly string[], args: readonly string[]): Promise<unknown> {
    try {
      return await client.send("EVALSHA", [this.#sha[name], String(keys.length), ...keys, ...args]);
    } catch (err) {
      if (!describeError(err).includes("NOSCRIPT")) throw err;
      return await client.send("EVAL", [this.#text[name], String(keys.length), ...keys, ...args]);
    }
  }
}

/**
 * A Redis URL as messages, logs and /health show it: its password (`redis://:secret@…`,
 * `redis://user:secret@…`) replaced by `***` — plays' error messages reach every client.
 */
export function shownRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password === "") return url;
    parsed.password = "***";
    return parsed.toString();
  } catch {
    return url.replace(/\/\/[^@/]*@/, "//***@");
  }
}

/** A client with no offline queue and no reconnecting of its own (`RedisLink` reconnects). */
export function newRedisClient(url: string): RedisClient {
  return new RedisClient(url, { autoReconnect: false, enableOfflineQueue: false, connectionTimeout: REDIS_CONNECT_TIMEOUT_MS });
}

/**
 * A connection that comes back: on close it says so (`onDown`) and dials again every
 * REDIS_RETRY_MS until it is up (`onUp`). Commands while down fail at once (no offline queue).
 */
export class RedisLink {
  #url: string;
  #client: RedisClient | null = null;
  #closed = false;
  #down: string | null = "not connected yet";
  #onUp: (client: RedisClient) => Promise<void> | void;
  #onDown: (reason: string) => void;
  #retry: Timer | null = null;

  constructor(url: string, handlers: { onUp?: (client: RedisClient) => Promise<void> | void; onDown?: (reason: string) => void } = {}) {
    this.#url = url;
    this.#onUp = handlers.onUp ?? (() => {});
    this.#onDown = handlers.onDown ?? (() => {});
  }

  /** The client while connected, else null. */
  get client(): RedisClient | null {
    return this.#down === null ? this.#client : null;
  }

  /** Why it is down, or null. */
  get down(): string | null {
    return this.#down;
  }

  /** Connects once; on failure keeps trying in the background. */
  async start(): Promise<void> {
    await this.#dial();
  }

  async #dial(): Promise<void> {
    this.#retry = null;
    if (this.#closed) return;
    const client = newRedisClient(this.#url);
    try {
      await client.connect();
      if (this.#closed) return client.close();
      this.#client = client;
      client.onclose = (err) => this.#lost(client, describeError(err));
      await this.#onUp(client);
      this.#down = null;
    } catch (err) {
      client.close();
      this.#lost(client, describeError(err));
    }
  }

  #lost(client: RedisClient, reason: string): void {
    if (this.#closed || (this.#client !== null && this.#client !== client)) return;
    this.#client = null;
    const first = this.#down === null;
    this.#down = reason;
    if (first) this.#onDown(reason);
    this.#retry ??= setTimeout(() => void this.#dial(), REDIS_RETRY_MS);
  }

  close(): void {
    this.#closed = true;
    if (this.#retry !== null) clearTimeout(this.#retry);
    this.#client?.close();
    this.#client = null;
  }
}

