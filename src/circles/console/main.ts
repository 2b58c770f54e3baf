/**
 * The script of the circles browser console (../console.html), bundled by Bun for the browser.
 * It speaks the protocol of ../protocol.ts to the server that served the page: GET /circles for
 * the circles, then JSON-RPC over ws(s)://<host>/<circle> — fetch_nonce, sign the nonce
 * eth-style (EIP-191 personal_sign, r‖s‖v with v 27/28, as ../auth.ts verifies), authenticate,
 * play. The private key never leaves the page.
 *
 * tsconfig has no DOM library (the rest of stoa runs on Bun), so the few DOM shapes used here
 * are declared below.
 */
import { secp256k1 } from "@noble/curves/secp256k1.js";
import { keccak_256 } from "@noble/hashes/sha3.js";
import { bytesToHex, hexToBytes } from "@noble/hashes/utils.js";
import { describeError } from "../../core/errors.ts";

interface Element {
  value: string;
  textContent: string | null;
  className: string;
  disabled: boolean;
  innerHTML: string;
  addEventListener(type: string, listener: () => void): void;
  appendChild(child: Element): void;
}
interface Document {
  getElementById(id: string): Element | null;
  createElement(tag: string): Element;
}
declare const document: Document;
declare const location: { protocol: string; host: string };

const ETH_MESSAGE_PREFIX = "\x19Ethereum Signed Message:\n";
const ETH_V_OFFSET = 27;

function element(id: string): Element {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`console.html has no #${id}`);
  return found;
}

const ui = {
  circle: element("circle"),
  authMode: element("auth-mode"),
  key: element("key"),
  generate: element("generate"),
  authenticate: element("authenticate"),
  pubkey: element("pubkey"),
  status: element("status"),
  script: element("script"),
  run: element("run"),
  output: element("output"),
};

type RpcError = { code: number; message: string };
type RpcAnswer = { result?: unknown; error?: RpcError };

/** One WebSocket to one circle, with requests answered by id. */
class Session {
  readonly circle: string;
  readonly #ws: WebSocket;
  readonly #waiting = new Map<number, (answer: RpcAnswer) => void>();
  readonly opened: Promise<void>;
  #nextId = 1;
  authenticatedAs = "";
  closed = false;

  constructor(circle: string) {
    this.circle = circle;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.#ws = new WebSocket(`${scheme}://${location.host}/${circle}`);
    this.opened = new Promise((resolve, reject) => {
      this.#ws.onopen = () => resolve();
      this.#ws.onerror = () => reject(new Error(`cannot connect to circle ${circle}`));
    });
    this.#ws.onmessage = (event) => {
      const answer = JSON.parse(String(event.data)) as RpcAnswer & { id: number };
      this.#waiting.get(answer.id)?.(answer);
      this.#waiting.delete(answer.id);
    };
    this.#ws.onclose = (event) => {
      this.closed = true;
      for (const resolve of this.#waiting.values()) resolve({ error: { code: 0, message: `connection closed (${event.code})` } });
      this.#waiting.clear();
      setStatus(`disconnected (${event.code}${event.reason === "" ? "" : ` ${event.reason}`})`);
    };
  }

  async call(method: string, params: Record<string, string>): Promise<unknown> {
    await this.opened;
    const id = this.#nextId++;
    const answer = await new Promise<RpcAnswer>((resolve) => {
      this.#waiting.set(id, resolve);
      this.#ws.send(JSON.stringify({ jsonrpc: "2.0", id, method, params }));
    });
    if (answer.error !== undefined) throw new RpcFailure(answer.error);
    return answer.result;
  }

  close(): void {
    this.#ws.close(1000);
  }
}

class RpcFailure extends Error {
  readonly code: number;
  constructor(error: RpcError) {
    super(error.message);
    this.code = error.code;
  }
}

let session: Session | undefined;

function setStatus(text: string): void {
  ui.status.textContent = text;
}

function showOutput(text: string, failed: boolean): void {
  ui.output.textContent = text;
  ui.output.className = failed ? "error" : "";
}

function describe(err: unknown): string {
  if (err instanceof RpcFailure) return `error ${err.code}: ${err.message}`;
  return describeError(err);
}

/** The private key in the key field, or undefined when it is empty; throws when it is not a key. */
function privateKey(): Uint8Array | undefined {
  const text = ui.key.value.trim().replace(/^0x/i, "");
  if (text === "") return undefined;
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new Error("the private key must be 64 hex digits");
  const key = hexToBytes(text);
  if (!secp256k1.utils.isValidSecretKey(key)) throw new Error("the private key is not a valid secp256k1 key");
  return key;
}

function showPublicKey(): void {
  try {
    const key = privateKey();
    ui.pubkey.textContent = key === undefined ? "—" : bytesToHex(secp256k1.getPublicKey(key, true));
  } catch (err) {
    ui.pubkey.textContent = describe(err);
  }
}

/** EIP-191 personal_sign of `nonce`: hex r‖s‖v, v 27 or 28. */
function signNonce(key: Uint8Array, nonce: string): string {
  const body = new TextEncoder().encode(nonce);
  const hash = keccak_256(new TextEncoder().encode(`${ETH_MESSAGE_PREFIX}${body.length}${nonce}`));
  const signed = secp256k1.sign(hash, key, { prehash: false, format: "recovered" });
  return bytesToHex(signed.subarray(1)) + (ETH_V_OFFSET + (signed[0] ?? 0)).toString(16);
}

/** The session to the chosen circle: the open one, or a new one. */
async function connected(): Promise<Session> {
  const circle = ui.circle.value;
  if (circle === "") throw new Error("choose a circle first");
  if (session === undefined || session.closed || session.circle !== circle) {
    session?.close();
    session = new Session(circle);
    setStatus(`connecting to ${circle.slice(0, 12)}…`);
    await session.opened;
    setStatus(`connected to ${circle.slice(0, 12)}…, not authenticated`);
  }
  return session;
}

async function authenticate(): Promise<void> {
  const key = privateKey();
  if (key === undefined) throw new Error("generate or paste a private key first");
  const current = await connected();
  const pubkey = bytesToHex(secp256k1.getPublicKey(key, true));
  const { nonce } = (await current.call("fetch_nonce", { pubkey })) as { nonce: string };
  await current.call("authenticate", { pubkey, signature: signNonce(key, nonce) });
  current.authenticatedAs = pubkey;
  setStatus(`authenticated as ${pubkey}`);
}

async function run(): Promise<void> {
  const current = await connected();
  const key = privateKey();
  if (key !== undefined && current.authenticatedAs !== bytesToHex(secp256k1.getPublicKey(key, true))) await authenticate();
  const { output } = (await current.call("play", { script: ui.script.value })) as { output: string };
  showOutput(output, false);
}

/** Runs a button's action with the button disabled; failures are shown, never thrown. */
function action(button: Element, fn: () => Promise<void>, onError: (message: string) => void): void {
  button.addEventListener("click", () => {
    button.disabled = true;
    fn()
      .catch((err: unknown) => onError(describe(err)))
      .finally(() => {
        button.disabled = false;
      });
  });
}

async function loadCircles(): Promise<void> {
  const answer = await fetch("/circles");
  const { circles, auth } = (await answer.json()) as { circles: string[]; auth: boolean };
  ui.circle.innerHTML = "";
  for (const circle of circles) {
    const option = document.createElement("option");
    option.value = circle;
    option.textContent = circle;
    ui.circle.appendChild(option);
  }
  ui.authMode.textContent = auth
    ? "This server requires authentication before a script runs."
    : "Authentication is optional on this server (it sets the script's CALLER_ID).";
}

ui.generate.addEventListener("click", () => {
  ui.key.value = bytesToHex(secp256k1.utils.randomSecretKey());
  showPublicKey();
});
ui.key.addEventListener("input", showPublicKey);
ui.circle.addEventListener("change", () => {
  session?.close();
  session = undefined;
  setStatus("not connected");
});
action(ui.authenticate, authenticate, (message) => setStatus(`authentication failed: ${message}`));
action(ui.run, run, (message) => showOutput(message, true));
loadCircles().catch((err: unknown) => setStatus(`cannot list the circles: ${describe(err)}`));
