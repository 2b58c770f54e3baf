/**
 * A bare WebSocket client over a Unix socket for the stream tests: it does the handshake by
 * hand, parses the server's frames itself, and can stop reading (`pause()`), so the kernel
 * buffers fill up and the publisher sees a truly slow subscriber. Bun's WebSocket client has no
 * way to stop reading.
 */
import type { Socket } from "bun";

export interface RawFrame {
  opcode: number;
  payload: Uint8Array;
}

const HANDSHAKE_END = "\r\n\r\n";

export class RawWsClient {
  /** Every complete frame received so far (pings and pongs included). */
  readonly frames: RawFrame[] = [];
  /** The status line of the handshake response. */
  status = "";
  closed = false;

  private buf = new Uint8Array(0);
  private handshakeDone = false;
  private waiters: (() => void)[] = [];

  private constructor(private readonly sock: Socket<undefined>) {}

  /** Connects to `unixPath`, upgrades with request path `path`, and resolves after the 101. */
  static async connect(unixPath: string, path = "/"): Promise<RawWsClient> {
    let client: RawWsClient | undefined;
    const sock = await Bun.connect({
      unix: unixPath,
      socket: {
        data: (_s, chunk) => client?.onData(chunk),
        close: () => client?.onClose(),
        error: () => client?.onClose(),
      },
    });
    client = new RawWsClient(sock);
    sock.write(
      `GET ${path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    const c = client;
    await c.waitFor("the handshake response", () => c.handshakeDone || c.closed);
    if (!c.status.includes(" 101 ")) throw new Error(`upgrade refused: ${c.status}`);
    return c;
  }

  /** Stop reading: the socket's buffers fill and the server's sends back up. */
  pause(): void {
    this.sock.pause();
  }

  resume(): void {
    this.sock.resume();
  }

  /** Sends masked frames (clients must mask) in one write, so the kernel takes them at once
   * (many tiny writes fill a Unix socket's buffer with per-write overhead). */
  send(opcode: number, payload: Uint8Array | string, times = 1): void {
    const data = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
    if (data.length > 125) throw new Error("rawws sends short frames only");
    const size = 6 + data.length;
    const out = new Uint8Array(size * times);
    for (let n = 0; n < times; n++) {
      const mask = crypto.getRandomValues(new Uint8Array(4));
      out[n * size] = 0x80 | opcode;
      out[n * size + 1] = 0x80 | data.length;
      out.set(mask, n * size + 2);
      for (let i = 0; i < data.length; i++) out[n * size + 6 + i] = (data[i] ?? 0) ^ (mask[i % 4] ?? 0);
    }
    const written = this.sock.write(out);
    if (written !== out.length) throw new Error(`short write: ${written} of ${out.length} bytes`);
  }

  /** Data frames only (text 1, binary 2, close 8), in order. */
  dataFrames(): RawFrame[] {
    return this.frames.filter((f) => f.opcode === 1 || f.opcode === 2 || f.opcode === 8);
  }

  async waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      const { promise, resolve } = Promise.withResolvers<void>();
      this.waiters.push(resolve);
      const timer = setTimeout(resolve, 20);
      await promise;
      clearTimeout(timer);
    }
  }

  end(): void {
    this.sock.end();
  }

  private onClose(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private onData(chunk: Uint8Array): void {
    const joined = new Uint8Array(this.buf.length + chunk.length);
    joined.set(this.buf);
    joined.set(chunk, this.buf.length);
    this.buf = joined;
    if (!this.handshakeDone) {
      const text = new TextDecoder("latin1").decode(this.buf);
      const end = text.indexOf(HANDSHAKE_END);
      if (end < 0) return;
      this.status = text.slice(0, text.indexOf("\r\n"));
      this.handshakeDone = true;
      this.buf = this.buf.slice(end + HANDSHAKE_END.length);
    }
    this.parseFrames();
    this.wake();
  }

  private parseFrames(): void {
    let pos = 0;
    const b = this.buf;
    for (;;) {
      if (b.length - pos < 2) break;
      const b0 = b[pos] ?? 0;
      const b1 = b[pos + 1] ?? 0;
      if ((b0 & 0x80) === 0) throw new Error("rawws does not handle fragmented frames");
      if ((b1 & 0x80) !== 0) throw new Error("server frames must not be masked");
      let len = b1 & 0x7f;
      let header = 2;
      if (len === 126) {
        if (b.length - pos < 4) break;
        len = ((b[pos + 2] ?? 0) << 8) | (b[pos + 3] ?? 0);
        header = 4;
      } else if (len === 127) {
        if (b.length - pos < 10) break;
        len = Number(new DataView(b.buffer, b.byteOffset + pos + 2, 8).getBigUint64(0));
        header = 10;
      }
      if (b.length - pos < header + len) break;
      this.frames.push({ opcode: b0 & 0x0f, payload: b.slice(pos + header, pos + header + len) });
      pos += header + len;
    }
    this.buf = b.slice(pos);
  }
}

/** The close code of a close frame's payload (1005 when it has none). */
export function closeCode(frame: RawFrame): number {
  return frame.payload.length >= 2 ? ((frame.payload[0] ?? 0) << 8) | (frame.payload[1] ?? 0) : 1005;
}
