/**
 * The mesh through Redis (`stoa flows serve --redis-url URL`), for meshes that outgrow a peer
 * list: every node writes its own exposed services under a key that expires unless refreshed,
 * and reads everyone else's. Keys (core/redis.ts: a command connection and a subscription, each
 * coming back by itself):
 *
 *   stoa:flows:node:<node>   JSON {node, services}, PX PEER_TTL_MS, rewritten every sync and on change
 *   stoa:flows:nodes         set of node names that wrote (a name whose key expired is dropped on read)
 *   stoa:flows:changed       pub/sub channel: a node's name after it wrote a change, so the others read at once
 *
 * Each node is authoritative for its own key; a node that stops refreshing (down, cut off) drops
 * out of every other node's answers within PEER_TTL_MS.
 */
import type { RedisClient } from "bun";
import { describeError } from "../core/errors.ts";
import { RedisLink } from "../core/redis.ts";
import type { Logger } from "../core/log.ts";
import type { ServiceLocation } from "./model.ts";

const KEY_PREFIX = "stoa:flows:node:";
const NODES = "stoa:flows:nodes";
const CHANNEL = "stoa:flows:changed";
/** The most nodes read in one sync (MGET per this many). */
const READ_BATCH = 500;
/** The first connection fails after this long (Bun's client would otherwise keep retrying silently). */
const CONNECT_TIMEOUT_MS = 5_000;

export interface MeshNode {
  node: string;
  services: ServiceLocation[];
}

export class RedisMesh {
  #commands: RedisLink;
  #subscriber: RedisLink;
  #node: string;
  #ttlMs: number;
  #log: Logger;

  private constructor(o: { url: string; node: string; ttlMs: number; log: Logger; onChange: (node: string) => void }) {
    // Commands while disconnected fail at once (the next sync retries); both links dial again by themselves.
    this.#commands = new RedisLink(o.url);
    this.#subscriber = new RedisLink(o.url, {
      onUp: async (client) => {
        await client.subscribe(CHANNEL, (message) => {
          if (message !== o.node) o.onChange(message);
        });
      },
    });
    this.#node = o.node;
    this.#ttlMs = o.ttlMs;
    this.#log = o.log;
  }

  /** Connects both connections; `onChange` hears of another node's change (to read at once). */
  static async connect(o: { url: string; node: string; ttlMs: number; log: Logger; onChange: (node: string) => void }): Promise<RedisMesh> {
    const mesh = new RedisMesh(o);
    await Promise.all([mesh.#commands.start(), mesh.#subscriber.start()]);
    const deadline = Date.now() + CONNECT_TIMEOUT_MS;
    for (;;) {
      const down = mesh.#commands.down ?? mesh.#subscriber.down;
      if (down === null) return mesh;
      if (Date.now() >= deadline) {
        mesh.#commands.close();
        mesh.#subscriber.close();
        throw new Error(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s (${down})`);
      }
      await Bun.sleep(50);
    }
  }

  /** The command connection, or an error saying why it is down. */
  get #client(): RedisClient {
    const client = this.#commands.client;
    if (client === null) throw new Error(`Redis is not connected: ${this.#commands.down ?? "closed"}`);
    return client;
  }

  /** Writes this node's services (refreshing their expiry); with `announce`, tells the others at once. */
  async write(services: readonly ServiceLocation[], announce: boolean): Promise<void> {
    await this.#client.send("SET", [KEY_PREFIX + this.#node, JSON.stringify({ node: this.#node, services }), "PX", String(this.#ttlMs)]);
    await this.#client.sadd(NODES, this.#node);
    if (announce) await this.#client.publish(CHANNEL, this.#node);
  }

  /** Every other node's services; names whose key expired leave the set. */
  async read(): Promise<MeshNode[]> {
    const names = (await this.#client.smembers(NODES)).filter((n) => n !== this.#node).sort();
    const out: MeshNode[] = [];
    const gone: string[] = [];
    for (let i = 0; i < names.length; i += READ_BATCH) {
      const batch = names.slice(i, i + READ_BATCH);
      const values = (await this.#client.send("MGET", batch.map((n) => KEY_PREFIX + n))) as (string | null)[];
      values.forEach((value, j) => {
        const node = batch[j]!;
        if (value === null) {
          gone.push(node);
          return;
        }
        try {
          const parsed = JSON.parse(value) as MeshNode;
          if (parsed.node === node && Array.isArray(parsed.services)) out.push({ node, services: parsed.services.filter((s) => s.node === node) });
        } catch (err) {
          this.#log.warn("a node's entry in Redis is not JSON; skipped", { node, error: describeError(err) });
        }
      });
    }
    if (gone.length > 0) await this.#client.srem(NODES, ...gone);
    return out;
  }

  /** Removes this node's entry (a clean stop) and closes both connections. */
  async close(): Promise<void> {
    try {
      await this.#client.del(KEY_PREFIX + this.#node);
      await this.#client.srem(NODES, this.#node);
      await this.#client.publish(CHANNEL, this.#node);
    } catch {
      // Redis gone: the entry expires by itself.
    }
    this.#subscriber.close();
    this.#commands.close();
  }
}
