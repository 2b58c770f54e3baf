import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { ptr } from "bun:ffi";
import { StoaError } from "../../src/core/errors.ts";
import { MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES, OwnedFd, type Received, parseRights, recvFds, sendFds, socketPair } from "../../src/ffi/fdpass.ts";
import { errno, libc, strerror } from "../../src/ffi/libc.ts";

const CHILD = join(import.meta.dir, "../fixtures/fdpass-child.ts");
const O_CLOEXEC = 0o2000000;
/** Pipes here never block: a descriptor that leaked shows as EAGAIN on the read end, not as a hung test. */
const O_NONBLOCK = 0o4000;
const text = (s: string): Uint8Array => new TextEncoder().encode(s);

/** This process's descriptors, each as "fd -> what it refers to" (so a reused number differs). */
function openFds(): Set<string> {
  const fds = new Set<string>();
  for (const fd of readdirSync("/proc/self/fd")) {
    try {
      fds.add(`${fd} -> ${readlinkSync(`/proc/self/fd/${fd}`)}`);
    } catch {
      // closed while listing (readdir's own descriptor, for one)
    }
  }
  return fds;
}

/** A pipe as [read end, write end], both close-on-exec and non-blocking. */
function pipe(): [OwnedFd, OwnedFd] {
  const fds = new Int32Array(2);
  if (libc().pipe2(fds, O_CLOEXEC | O_NONBLOCK) !== 0) throw new Error(`pipe2: ${strerror(errno())}`);
  return [new OwnedFd(fds[0] ?? -1, "pipe read end"), new OwnedFd(fds[1] ?? -1, "pipe write end")];
}

/** What is in the pipe ("" at EOF); throws when it is empty but a write end is still open. */
function readText(fd: OwnedFd, max = 256): string {
  const buf = new Uint8Array(max);
  const n = libc().read(fd.fd, buf, max);
  if (n < 0) throw new Error(`read: ${strerror(errno())}`);
  return new TextDecoder().decode(buf.subarray(0, n));
}

function writeText(fd: OwnedFd, s: string): void {
  const bytes = text(s);
  expect(libc().write(fd.fd, bytes, bytes.byteLength)).toBe(bytes.byteLength);
}

function message(got: Received | "again" | "closed"): Received {
  if (typeof got === "string") throw new Error(`expected a message, got "${got}"`);
  return got;
}

function closeAll(fds: readonly OwnedFd[]): void {
  for (const fd of fds) fd.close();
}

/** The thrown StoaError's code (or the failure of the expectation). */
function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(StoaError);
    return (err as StoaError).code;
  }
  throw new Error("expected a StoaError, nothing was thrown");
}

/**
 * Sends `fds` with one sendmsg, bypassing sendFds' limit: how a misbehaving peer would send more
 * than MAX_FDS_PER_MESSAGE. Layout as in fdpass.ts's header (64-bit Linux).
 */
function rawSend(sock: OwnedFd, data: Uint8Array, fds: readonly OwnedFd[]): void {
  const control = new Uint8Array(16 + ((fds.length * 4 + 7) & ~7));
  const cv = new DataView(control.buffer);
  cv.setBigUint64(0, BigInt(16 + fds.length * 4), true);
  cv.setInt32(8, 1, true); // SOL_SOCKET
  cv.setInt32(12, 1, true); // SCM_RIGHTS
  fds.forEach((fd, i) => cv.setInt32(16 + i * 4, fd.fd, true));
  const iov = new Uint8Array(16);
  const iv = new DataView(iov.buffer);
  iv.setBigUint64(0, BigInt(ptr(data)), true);
  iv.setBigUint64(8, BigInt(data.byteLength), true);
  const msg = new Uint8Array(56);
  const mv = new DataView(msg.buffer);
  mv.setBigUint64(16, BigInt(ptr(iov)), true);
  mv.setBigUint64(24, 1n, true);
  mv.setBigUint64(32, BigInt(ptr(control)), true);
  mv.setBigUint64(40, BigInt(control.byteLength), true);
  if (libc().sendmsg(sock.fd, msg, 0) !== data.byteLength) throw new Error(`sendmsg: ${strerror(errno())}`);
}

// Every test leaves the descriptor table as it found it: nothing leaked, nothing closed twice.
let before: Set<string>;
beforeEach(() => {
  before = openFds();
});
afterEach(() => {
  expect([...openFds()].filter((fd) => !before.has(fd))).toEqual([]);
  // Bun closes the memfds of earlier spawns' stdin on its own time (other test files run in this
  // process too): those going away are not this test's doing.
  expect([...before].filter((fd) => !openFds().has(fd) && !fd.includes("/memfd:spawn_stdio"))).toEqual([]);
});

describe("passing descriptors to a child process", () => {
  test("a child given the pair's other end as fd 3 receives a pipe's write end and writes hello into it", async () => {
    const [mine, theirs] = socketPair();
    const [readEnd, writeEnd] = pipe();
    try {
      const child = Bun.spawn([process.execPath, CHILD], { stdio: ["ignore", "inherit", "inherit", theirs.fd] });
      theirs.close(); // Bun.spawn dup2'd it into the child and left ours open: ours to close
      expect(sendFds(mine, text("hello"), [writeEnd])).toBe("sent");
      writeEnd.close(); // the sender still owned its copy; now only the child's copy keeps the pipe open
      expect(new TextDecoder().decode(message(recvFds(mine)).data)).toBe("wrote 1");
      expect(await child.exited).toBe(0);
      expect(readText(readEnd)).toBe("hello");
      expect(readText(readEnd)).toBe(""); // EOF: the child closed the copy it received
    } finally {
      closeAll([mine, theirs, readEnd, writeEnd]);
    }
  });
});

describe("messages within one process", () => {
  test("several descriptors in one message arrive in order, as new close-on-exec descriptors", () => {
    const [a, b] = socketPair();
    const pipes = Array.from({ length: MAX_FDS_PER_MESSAGE }, () => pipe());
    try {
      expect(sendFds(a, text("many"), pipes.map(([, w]) => w))).toBe("sent");
      const got = message(recvFds(b));
      try {
        expect(new TextDecoder().decode(got.data)).toBe("many");
        expect(got.fds).toHaveLength(MAX_FDS_PER_MESSAGE);
        got.fds.forEach((fd, i) => {
          expect(fd.fd).not.toBe(pipes[i]?.[1].fd);
          const flags = /flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd.fd}`, "utf8"))?.[1] ?? "0";
          expect(Number.parseInt(flags, 8) & O_CLOEXEC).toBe(O_CLOEXEC);
          writeText(fd, `pipe ${i}`);
        });
        pipes.forEach(([r], i) => expect(readText(r)).toBe(`pipe ${i}`));
      } finally {
        closeAll(got.fds);
      }
    } finally {
      closeAll([a, b, ...pipes.flat()]);
    }
  });

  test("a data-only message has no descriptors, and message boundaries are kept", () => {
    const [a, b] = socketPair();
    try {
      expect(sendFds(a, text("one"))).toBe("sent");
      expect(sendFds(a, text("two"), [])).toBe("sent");
      for (const want of ["one", "two"]) {
        const got = message(recvFds(b));
        expect(new TextDecoder().decode(got.data)).toBe(want);
        expect(got.fds).toEqual([]);
      }
    } finally {
      closeAll([a, b]);
    }
  });

  test("a message of MAX_MESSAGE_BYTES arrives whole", () => {
    const [a, b] = socketPair();
    try {
      const big = new Uint8Array(MAX_MESSAGE_BYTES).map((_, i) => i & 0xff);
      expect(sendFds(a, big)).toBe("sent");
      expect(message(recvFds(b)).data).toEqual(big);
    } finally {
      closeAll([a, b]);
    }
  });
});

describe("limits are checked before anything is sent", () => {
  test("more than MAX_FDS_PER_MESSAGE descriptors, an empty or an oversized message are refused and nothing is queued", () => {
    const [a, b] = socketPair({ nonBlocking: true });
    const pipes = Array.from({ length: MAX_FDS_PER_MESSAGE + 1 }, () => pipe());
    try {
      expect(codeOf(() => sendFds(a, text("x"), pipes.map(([, w]) => w)))).toBe("too_large");
      expect(codeOf(() => sendFds(a, new Uint8Array(MAX_MESSAGE_BYTES + 1)))).toBe("too_large");
      expect(codeOf(() => sendFds(a, new Uint8Array(0)))).toBe("internal");
      expect(recvFds(b)).toBe("again");
    } finally {
      closeAll([a, b, ...pipes.flat()]);
    }
  });

  test("a peer sending more descriptors than fit: those that arrived are closed and recvFds throws", () => {
    const [a, b] = socketPair();
    const pipes = Array.from({ length: MAX_FDS_PER_MESSAGE + 4 }, () => pipe());
    try {
      rawSend(a, text("too many"), pipes.map(([, w]) => w));
      closeAll(pipes.map(([, w]) => w));
      expect(codeOf(() => recvFds(b))).toBe("decode");
      // Every copy of every write end is closed: each read end sees EOF, none blocks.
      for (const [r] of pipes) expect(readText(r)).toBe("");
    } finally {
      closeAll([a, b, ...pipes.flat()]);
    }
  });

  test("a message longer than maxData is an error, and its descriptors are closed", () => {
    const [a, b] = socketPair();
    const [r, w] = pipe();
    try {
      expect(sendFds(a, text("longer than ten bytes"), [w])).toBe("sent");
      w.close();
      expect(codeOf(() => recvFds(b, 10))).toBe("too_large");
      expect(readText(r)).toBe("");
      expect(codeOf(() => recvFds(b, 0))).toBe("internal");
      expect(codeOf(() => recvFds(b, MAX_MESSAGE_BYTES + 1))).toBe("internal");
    } finally {
      closeAll([a, b, r, w]);
    }
  });
});

describe("non-blocking sockets and peers that go away", () => {
  test("on a non-blocking pair recvFds says 'again' with nothing queued and sendFds says 'again' when the peer's queue is full", () => {
    const [a, b] = socketPair({ nonBlocking: true });
    try {
      expect(recvFds(b)).toBe("again");
      const chunk = new Uint8Array(MAX_MESSAGE_BYTES);
      let sent = 0;
      let outcome: string = "sent";
      // The queue is bounded by the socket buffers (a few hundred KiB): it fills long before this cap.
      for (let i = 0; i < 10_000 && outcome === "sent"; i++) {
        outcome = sendFds(a, chunk);
        if (outcome === "sent") sent++;
      }
      expect(outcome).toBe("again");
      expect(sent).toBeGreaterThan(0);
      for (let i = 0; i < sent; i++) expect(message(recvFds(b)).data.byteLength).toBe(MAX_MESSAGE_BYTES);
      expect(recvFds(b)).toBe("again");
    } finally {
      closeAll([a, b]);
    }
  });

  test("after the peer closes, recvFds gives the queued messages then 'closed', and sendFds says 'closed' (no SIGPIPE)", () => {
    const [a, b] = socketPair();
    try {
      expect(sendFds(a, text("last words"))).toBe("sent");
      a.close();
      expect(new TextDecoder().decode(message(recvFds(b)).data)).toBe("last words");
      expect(recvFds(b)).toBe("closed");
      expect(sendFds(b, text("anyone?"))).toBe("closed");
    } finally {
      closeAll([a, b]);
    }
  });
});

describe("OwnedFd", () => {
  test("closing twice is a no-op; using it after close throws", () => {
    const [r, w] = pipe();
    w.close();
    r.close();
    expect(() => r.close()).not.toThrow();
    expect(r.closed).toBe(true);
    expect(codeOf(() => r.fd)).toBe("closed");
    expect(codeOf(() => r.take())).toBe("closed");
    expect(codeOf(() => sendFds(r, text("x")))).toBe("closed");
  });

  test("take() hands the number over: the OwnedFd no longer closes it", () => {
    const [r, w] = pipe();
    const raw = w.take();
    w.close(); // no-op: the new owner closes it
    expect(codeOf(() => w.fd)).toBe("closed");
    expect(libc().close(raw)).toBe(0);
    r.close();
  });

  test("a descriptor closed behind its owner's back is reported on close (an ownership bug)", () => {
    const [r, w] = pipe();
    expect(libc().close(w.fd)).toBe(0);
    expect(codeOf(() => w.close())).toBe("internal");
    expect(() => w.close()).not.toThrow();
    r.close();
  });

  test("`using` closes it at the end of the scope", () => {
    const [r, w] = pipe();
    {
      using scoped = r;
      expect(scoped.closed).toBe(false);
    }
    expect(r.closed).toBe(true);
    w.close();
  });
});

describe("the control-data parser", () => {
  /** One cmsghdr: cmsg_len = 16 + payload, padded to 8 unless `pad` is false. */
  function cmsg(level: number, type: number, payload: Uint8Array, pad = true): Uint8Array {
    const len = 16 + payload.byteLength;
    const out = new Uint8Array(pad ? (len + 7) & ~7 : len);
    const v = new DataView(out.buffer);
    v.setBigUint64(0, BigInt(len), true);
    v.setInt32(8, level, true);
    v.setInt32(12, type, true);
    out.set(payload, 16);
    return out;
  }
  const ints = (...xs: number[]): Uint8Array => new Uint8Array(Int32Array.from(xs).buffer);
  const concat = (...parts: Uint8Array[]): Uint8Array => Uint8Array.from(parts.flatMap((p) => [...p]));
  const parse = (bytes: Uint8Array): number[] => {
    const into: number[] = [];
    parseRights(bytes, into);
    return into;
  };
  const failure = (bytes: Uint8Array): { code: string; seen: number[] } => {
    const into: number[] = [];
    const code = codeOf(() => parseRights(bytes, into));
    return { code, seen: into };
  };

  test("well-formed control data gives its descriptors", () => {
    expect(parse(new Uint8Array(0))).toEqual([]);
    expect(parse(cmsg(1, 1, ints(7)))).toEqual([7]); // padded: 16 + 4 → 24
    expect(parse(cmsg(1, 1, ints(7), false))).toEqual([7]); // the last padding cut off
    expect(parse(cmsg(1, 1, ints(3, 4)))).toEqual([3, 4]);
    expect(parse(concat(cmsg(1, 1, ints(5)), cmsg(1, 1, ints(6, 8, 9))))).toEqual([5, 6, 8, 9]);
    expect(parse(cmsg(1, 1, new Uint8Array(0)))).toEqual([]);
  });

  test("malformed control data is a decode error that keeps the descriptors seen before it", () => {
    expect(failure(new Uint8Array(8)).code).toBe("decode"); // shorter than a header
    expect(failure(concat(cmsg(1, 1, ints(5)), new Uint8Array(8)))).toEqual({ code: "decode", seen: [5] });
    const long = cmsg(1, 1, ints(5));
    new DataView(long.buffer).setUint32(0, 64, true); // cmsg_len past the end
    expect(failure(long).code).toBe("decode");
    const short = cmsg(1, 1, ints(5));
    new DataView(short.buffer).setUint32(0, 8, true); // cmsg_len below the header
    expect(failure(short).code).toBe("decode");
    const huge = cmsg(1, 1, ints(5));
    new DataView(huge.buffer).setUint32(4, 1, true); // a 64-bit cmsg_len over 4 GiB
    expect(failure(huge).code).toBe("decode");
    expect(failure(cmsg(1, 1, new Uint8Array(6))).code).toBe("decode"); // not whole descriptors
    expect(failure(cmsg(1, 1, ints(4, -1)))).toEqual({ code: "decode", seen: [4] });
  });

  test("another kind of control message is an error, after the walk collected every SCM_RIGHTS descriptor", () => {
    const credentials = cmsg(1, 2, new Uint8Array(12)); // SCM_CREDENTIALS
    expect(failure(concat(credentials, cmsg(1, 1, ints(11, 12))))).toEqual({ code: "decode", seen: [11, 12] });
  });

  test("it never reads past the view it is given", () => {
    const backing = concat(cmsg(1, 1, ints(5)), cmsg(1, 1, ints(6)));
    expect(parse(backing.subarray(0, 24))).toEqual([5]);
    expect(failure(backing.subarray(0, 30)).code).toBe("decode");
  });
});
