/**
 * The circles benchmark's clients (scripts/bench/circles.ts): plain WebSocket JSON-RPC clients
 * written against the wire protocol (src/circles/protocol.ts), not stoa's own client code, and
 * signing with @noble directly — what a third-party client does. Each client connects to
 * ws://HOST:PORT/<circle_pk>, asks `fetch_nonce`, signs the nonce eth-style (secp256k1 over
 * keccak256("\x19Ethereum Signed Message:\n" + len(nonce) + nonce), hex r‖s‖v with v = 27|28),
 * `authenticate`s, then runs a closed loop of `play` requests, one in flight per client.
 */
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";
import { bytesToHex, concatBytes, utf8ToBytes } from "@noble/hashes/utils.js";

/** A caller's key pair: the private key signs nonces, the public key (compressed hex) is sent. */
interface CallerKey {
  secret: Uint8Array;
  pubkey: string;
}

export function newKey(): CallerKey {
  const secret = secp256k1.utils.randomSecretKey();
  return { secret, pubkey: bytesToHex(secp256k1.getPublicKey(secret, true)) };
}

/** An eth-style (EIP-191 personal_sign) signature of `text`: hex r‖s‖v, v ∈ {27, 28}. */
function signEth(text: string, secret: Uint8Array): string {
  const message = utf8ToBytes(text);
  const digest = keccak_256(concatBytes(utf8ToBytes(`\x19Ethereum Signed Message:\n${message.length}`), message));
  const recovered = secp256k1.sign(digest, secret, { prehash: false, format: "recovered" }); // recovery byte, r, s
  return bytesToHex(concatBytes(recovered.subarray(1), Uint8Array.of(27 + (recovered[0] ?? 0))));
}

/** How long a handshake request, or a closed loop without any completion, may take before the case fails. */
const REQUEST_TIMEOUT_MS = 10_000;

interface RpcReply {
  id: number;
  result?: unknown;
  error?: { code: number; message: string };
}

/** One authenticated connection with requests matched to replies by id. */
class RpcClient {
  #ws: WebSocket;
  #nextId = 1;
  #pending = new Map<number, { resolve: (r: RpcReply) => void; reject: (e: Error) => void }>();

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (ev) => {
      const reply = JSON.parse(String(ev.data)) as RpcReply;
      const waiter = this.#pending.get(reply.id);
      this.#pending.delete(reply.id);
      waiter?.resolve(reply);
    };
    ws.onclose = (ev) => {
      for (const w of this.#pending.values()) w.reject(new Error(`connection closed (${ev.code} ${ev.reason})`));
      this.#pending.clear();
    };
  }

  static async open(url: string): Promise<RpcClient> {
    const ws = new WebSocket(url);
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    return new RpcClient(ws);
  }

  /** The result of `method`, or an error naming the JSON-RPC error. */
  async call(method: string, params: Record<string, string>): Promise<unknown> {
    const id = this.#nextId++;
    const reply = await new Promise<RpcReply>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
    if (reply.error) throw new Error(`${method}: ${reply.error.code} ${reply.error.message}`);
    return reply.result;
  }

  close(): void {
    this.#ws.close();
  }
}

/** `call`, failing after REQUEST_TIMEOUT_MS (the handshake: a server that stops answering ends the run, not hangs it). */
async function callWithin(client: RpcClient, method: string, params: Record<string, string>): Promise<unknown> {
  let timer: Timer | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${method}: no answer within ${REQUEST_TIMEOUT_MS} ms`)), REQUEST_TIMEOUT_MS);
  });
  try {
    return await Promise.race([client.call(method, params), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What a closed loop did: completed operations, the time they took, every latency in ms. */
interface LoopResult {
  count: number;
  seconds: number;
  latenciesMs: Float64Array;
}

/** A set of clients ready to run closed loops; `close` releases them. */
export interface Load {
  run(seconds: number): Promise<LoopResult>;
  close(): Promise<void>;
}

/**
 * Runs `workers` closed loops of `op` for `seconds`: each loop starts its next operation when the
 * previous one finished. The rate is completed operations over the time from the start to the
 * last completion. No completion for REQUEST_TIMEOUT_MS fails the run (one watchdog, not a
 * timer per operation: that would be client cost on every sample).
 */
export async function closedLoop(workers: number, seconds: number, op: (worker: number) => Promise<void>): Promise<LoopResult> {
  const latencies: number[] = [];
  const started = Bun.nanoseconds();
  const deadline = started + seconds * 1e9;
  let last = started;
  let watchdog: Timer | undefined;
  const stalled = new Promise<never>((_, reject) => {
    watchdog = setInterval(() => {
      if (Bun.nanoseconds() - last > REQUEST_TIMEOUT_MS * 1e6) reject(new Error(`no operation completed for ${REQUEST_TIMEOUT_MS} ms`));
    }, 250);
  });
  const loops = Promise.all(
    Array.from({ length: workers }, async (_, w) => {
      while (Bun.nanoseconds() < deadline) {
        const t0 = Bun.nanoseconds();
        await op(w);
        last = Bun.nanoseconds();
        latencies.push((last - t0) / 1e6);
      }
    }),
  );
  try {
    await Promise.race([loops, stalled]);
  } finally {
    clearInterval(watchdog);
  }
  return { count: latencies.length, seconds: (last - started) / 1e9, latenciesMs: Float64Array.from(latencies) };
}

/**
 * Opens one authenticated client per URL (each with its own caller key) and returns a load whose
 * loops play `script` and check every output is `expected`.
 */
export async function openPlayers(urls: string[], script: string, expected: string): Promise<Load> {
  const clients = await Promise.all(
    urls.map(async (url) => {
      const client = await RpcClient.open(url);
      const key = newKey();
      const { nonce } = (await callWithin(client, "fetch_nonce", { pubkey: key.pubkey })) as { nonce: string };
      const auth = (await callWithin(client, "authenticate", { pubkey: key.pubkey, signature: signEth(nonce, key.secret) })) as { authenticated?: boolean };
      if (auth.authenticated !== true) throw new Error(`${url}: authenticate answered ${JSON.stringify(auth)}`);
      return client;
    }),
  );
  return {
    run: (seconds) =>
      closedLoop(clients.length, seconds, async (w) => {
        const { output } = (await (clients[w] as RpcClient).call("play", { script })) as { output?: string };
        if (output !== expected) throw new Error(`play ${JSON.stringify(script)} answered ${JSON.stringify(output)}, not ${JSON.stringify(expected)}`);
      }),
    close: async () => {
      for (const c of clients) c.close();
    },
  };
}
