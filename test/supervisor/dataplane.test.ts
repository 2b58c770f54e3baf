/**
 * The data-plane loop (src/supervisor/dataplane.ts): the user_data encoding; completions of SEND
 * and RECV in any order against a scripted ring, each naming the buffer it held (each copy
 * checked when its SEND completes, so a buffer given back early shows as a corrupt payload);
 * the ingress's poll and bursts (one poll per socket, no RECV left waiting, bursts that double
 * while full and shrink after -EAGAIN, a poll that fires during a burst); the removal of an
 * interface's last rule (its poll and RECVs cancelled, late frames dropped, the fd closed once
 * the last completion is reaped), scripted and on the real ring over AF_UNIX
 * datagram pairs (frames in, payload copies out, counters, commands through the eventfd, sockets
 * closed once); and, with root and network namespaces, 1,000 ×
 * 1,400 B relayed gen → relay → sink through AF_PACKET with ≥ 99 % arriving intact.
 */
import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { ptr, toArrayBuffer } from "bun:ffi";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { StoaError } from "../../src/core/errors.ts";
import { EFD_CLOEXEC } from "../../src/ffi/epoll.ts";
import { IORING_CQE_F_MORE, probeIoUring } from "../../src/ffi/io_uring.ts";
import { MSG_DONTWAIT, errno, libc, strerror } from "../../src/ffi/libc.ts";
import { DataPlane, MAX_INPUTS, MIN_BURST, RECV_BATCH, type Ring, SEND_BUFFERS, UserDataKind, decodeUserData, encodeUserData } from "../../src/supervisor/dataplane.ts";
import type { Rule, WorkerCounters } from "../../src/supervisor/protocol.ts";
import { canUseNetns, createNet, type Net } from "../helpers/netns.ts";
import { prng } from "../helpers/prng.ts";
import { seqPayload } from "../fixtures/supervisor-udp-flow.ts";
import { frame } from "../fixtures/udp-frames.ts";

const FIXTURE = join(import.meta.dir, "..", "fixtures", "supervisor-dataplane.ts");
const FLOW = join(import.meta.dir, "..", "fixtures", "supervisor-udp-flow.ts");
/** Where frame()'s payload starts: Ethernet 14 + IPv4 20 + UDP 8. */
const PAYLOAD_AT = 42;

const rule = (id: string, port: number, outputs = 1, iface = "in0"): Rule => ({
  rule_id: id,
  input_interface: iface,
  input_group: "239.1.2.3",
  input_port: port,
  outputs: Array.from({ length: outputs }, (_, i) => ({ group: "10.9.9.9", port: 6000 + i, interface: `out${i}` })),
});

/** A frame to 239.1.2.3:`port` whose payload is `seq` (4 bytes) then bytes derived from it. */
function seqFrame(seq: number, size: number, port = 5000): Uint8Array {
  const f = frame({ payload: size });
  new DataView(f.buffer).setUint16(36, port);
  f.set(seqPayload(seq, size), PAYLOAD_AT);
  return f;
}

/** Placeholder sockets for the scripted ring (the plane owns and closes them). */
function placeholders(n: number): number[] {
  return Array.from({ length: n }, () => {
    const fd = libc().eventfd(0, EFD_CLOEXEC);
    if (fd < 0) throw new Error(`eventfd: ${strerror(errno())}`);
    return fd;
  });
}

describe("user_data", () => {
  test("kind in bits 32.., buffer index in the low 32 bits, round trip; kind 0 is never made", () => {
    for (const kind of Object.values(UserDataKind)) {
      for (const index of [0, 1, 255, 511, 2 ** 32 - 1]) {
        const u = encodeUserData(kind, index);
        expect(u).toBe((BigInt(kind) << 32n) | BigInt(index));
        expect(decodeUserData(u)).toEqual({ kind, index });
      }
    }
    expect(new Set(Object.values(UserDataKind)).size).toBe(5);
    expect(Object.values(UserDataKind)).not.toContain(0);
    expect(() => encodeUserData(UserDataKind.RECV, 2 ** 32)).toThrow(RangeError);
    expect(() => encodeUserData(UserDataKind.SEND, -1)).toThrow(RangeError);
  });
});

interface Op {
  op: "recv" | "send" | "read" | "cancel" | "poll";
  fd: number;
  addr: number;
  len: number;
  userData: bigint;
  /** A SEND's bytes when it was prepared: they must be the same when it completes. */
  bytes?: Uint8Array;
  /** A cancel's target user_data. */
  target?: bigint;
}

/** A ring that completes nothing by itself: the test chooses which operation completes, and when. */
class ScriptedRing implements Ring {
  prepared: Op[] = [];
  inFlight: Op[] = [];
  ready: { userData: bigint; res: number; flags: number }[] = [];
  closed = 0;
  get sqSpace(): number {
    return 64 - this.prepared.length;
  }
  prepRecv(fd: number, addr: number, len: number, userData: bigint): void {
    this.prepared.push({ op: "recv", fd, addr, len, userData });
  }
  prepSend(fd: number, addr: number, len: number, userData: bigint): void {
    this.prepared.push({ op: "send", fd, addr, len, userData, bytes: memory(addr, len).slice() });
  }
  prepPollMultishot(fd: number, _events: number, userData: bigint): void {
    this.prepared.push({ op: "poll", fd, addr: 0, len: 0, userData });
  }
  prepRead(fd: number, addr: number, len: number, userData: bigint): void {
    this.prepared.push({ op: "read", fd, addr, len, userData });
  }
  prepCancel(target: bigint, userData: bigint): void {
    this.prepared.push({ op: "cancel", fd: -1, addr: 0, len: 0, userData, target });
  }
  submitAndWait(): { submitted: number; ready: number } {
    const submitted = this.prepared.length;
    this.inFlight.push(...this.prepared.splice(0));
    // Ownership: no two operations in flight ever share a buffer.
    const addrs = this.inFlight.filter((o) => o.op !== "cancel" && o.op !== "poll").map((o) => o.addr);
    if (new Set(addrs).size !== addrs.length) throw new Error("two operations in flight hold the same buffer");
    return { submitted, ready: this.ready.length };
  }
  reap(cb: (userData: bigint, res: number, flags: number) => void): number {
    const ready = this.ready.splice(0);
    for (const c of ready) cb(c.userData, c.res, c.flags);
    return ready.length;
  }
  close(): void {
    this.closed++;
  }
  /** The in-flight operations of one kind, with their positions. */
  of(op: Op["op"]): [Op, number][] {
    return this.inFlight.flatMap((o, i): [Op, number][] => (o.op === op ? [[o, i]] : []));
  }
  /** Takes in-flight operation `i` out and queues its completion. */
  complete(i: number, res: number): Op {
    const [op] = this.inFlight.splice(i, 1);
    if (op === undefined) throw new Error(`no operation ${i} in flight`);
    this.ready.push({ userData: op.userData, res, flags: 0 });
    return op;
  }
  /** The multishot poll of fd `fd` reports readiness (and stays in flight). */
  fire(fd: number): void {
    const op = this.inFlight.find((o) => o.op === "poll" && o.fd === fd);
    if (op === undefined) throw new Error(`no poll on fd ${fd} in flight`);
    this.ready.push({ userData: op.userData, res: 1, flags: IORING_CQE_F_MORE });
  }
  /** Completes every in-flight RECV with -EAGAIN: the socket's queue is empty. */
  empty(): void {
    for (let r = this.of("recv")[0]; r !== undefined; r = this.of("recv")[0]) this.complete(r[1], -11);
  }
}

/** The bytes at a raw address (a pool buffer the plane handed to the ring). */
function memory(addr: number, len: number): Uint8Array {
  return new Uint8Array(toArrayBuffer(addr, 0, len));
}

/** Puts `f` in the buffer of RECV `op` and completes it. */
function deliver(ring: ScriptedRing, op: Op, i: number, f: Uint8Array): void {
  memory(op.addr, op.len).set(f);
  ring.complete(i, f.length);
}

describe("completions in any order (scripted ring)", () => {
  test("RECV and SEND completions interleaved at random: every copy intact at its completion, every buffer back once", () => {
    const ring = new ScriptedRing();
    const plane = new DataPlane({ ring });
    const [input, out0, out1] = placeholders(3);
    plane.addRule(rule("r", 5000, 2), input!, [out0!, out1!]);
    const random = prng(14);
    let frames = 0;
    let junk = 0;
    let sendErrors = 0;
    const copies = new Map<number, number>();
    /** Completes SEND `i` after checking its buffer still holds what was prepared, derived from its sequence number. */
    const finishSend = (op: Op, i: number, res: number): void => {
      const now = memory(op.addr, op.len);
      expect(now).toEqual(op.bytes!);
      const seq = new DataView(now.buffer, now.byteOffset).getUint32(0);
      expect(now).toEqual(seqPayload(seq, op.len));
      copies.set(seq, (copies.get(seq) ?? 0) + 1);
      ring.complete(i, res);
    };
    plane.runOnce(0);
    let most = 0;
    let eagain = 0;
    for (let step = 0; step < 400; step++) {
      for (let k = random.int(6); k > 0; k--) {
        const recvs = ring.of("recv");
        const sends = ring.of("send");
        most = Math.max(most, recvs.length);
        if (recvs.length === 0) ring.fire(input!); // the socket became readable again
        else if (random.int(25) === 0) ring.fire(input!); // a poll event while a burst is out
        if (sends.length > 0 && random.int(2) === 0) {
          const [op, i] = random.pick(sends);
          const fail = random.int(20) === 0;
          if (fail) sendErrors++;
          finishSend(op, i, fail ? -111 : op.len); // -ECONNREFUSED: counted, not fatal
        } else if (recvs.length > 0) {
          const [op, i] = random.pick(recvs);
          const roll = random.int(12);
          if (roll === 0) {
            eagain++;
            ring.complete(i, -11); // the queue is empty: no frame, not an error
          } else if (roll === 1) {
            junk++;
            deliver(ring, op, i, frame({ proto: 6 }));
          } else deliver(ring, op, i, seqFrame(frames++, 46 + random.int(1400)));
        }
      }
      plane.runOnce(0);
    }
    // Drain: every SEND completes; then every send buffer is back and only the RECVs in the ring hold receive buffers.
    for (let sends = ring.of("send"); sends.length > 0; sends = ring.of("send")) {
      const [op, i] = sends[0]!;
      finishSend(op, i, op.len);
      plane.runOnce(0);
    }
    expect(plane.buffersInUse()).toEqual({ recv: ring.of("recv").length, send: 0 });
    expect(most).toBeGreaterThan(MIN_BURST);
    expect(most).toBeLessThanOrEqual(RECV_BATCH);
    expect(eagain).toBeGreaterThan(5);
    expect(frames).toBeGreaterThan(100);
    expect([...copies.keys()].sort((x, y) => x - y)).toEqual(Array.from({ length: frames }, (_, i) => i));
    expect([...copies.values()].every((n) => n === 2)).toBe(true);
    expect(plane.counters()).toEqual({ received: frames + junk, matched: frames, sent: 2 * frames - sendErrors, filtered: junk, no_match: 0, buffer_exhausted: 0, errors: sendErrors });
    expect(plane.rules.stats()[0]).toMatchObject({ rule_id: "r", packets: frames });
    plane.close();
    plane.close();
    expect(ring.closed).toBe(1);
  });

  test("small copies borrow full-size buffers when theirs run out; an empty send pool drops the copy and counts buffer_exhausted; receiving goes on", () => {
    const ring = new ScriptedRing();
    const plane = new DataPlane({ ring });
    const [input, out0] = placeholders(2);
    plane.addRule(rule("r", 5000, 1), input!, [out0!]);
    plane.runOnce(0);
    const frames = SEND_BUFFERS + 10;
    for (let n = 0; n < frames; n++) {
      if (ring.of("recv").length === 0) plane.runOnce(0); // the next burst is prepared: submit it
      const [op, i] = ring.of("recv")[0]!;
      deliver(ring, op, i, seqFrame(n, 100));
      plane.runOnce(0);
    }
    expect(plane.counters()).toMatchObject({ received: frames, matched: frames, buffer_exhausted: 10, sent: 0 });
    const posted = [...ring.inFlight, ...ring.prepared].filter((o) => o.op === "recv").length;
    expect(posted).toBeGreaterThan(0);
    expect(plane.buffersInUse()).toEqual({ recv: posted, send: SEND_BUFFERS });
    plane.close();
  });

  test("the last rule's removal cancels its poll and each RECV of its socket; frames that still come are dropped; the fd closes once the last completion is reaped", () => {
    const ring = new ScriptedRing();
    const plane = new DataPlane({ ring });
    const [input, out0] = placeholders(2);
    plane.addRule(rule("r", 5000, 1), input!, [out0!]);
    plane.runOnce(0);
    expect(ring.of("recv").length).toBe(MIN_BURST);
    // One RECV of the burst completes just before the removal: its copy is prepared, not yet submitted.
    const [first, at] = ring.of("recv")[0]!;
    deliver(ring, first, at, seqFrame(0, 64));
    plane.runOnce(0);
    expect(plane.removeRule("r")).toBe(true);
    expect(existsSync(`/proc/self/fd/${out0}`)).toBe(false);
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(true);
    plane.runOnce(0);
    const [send, sendAt] = ring.of("send")[0]!;
    ring.complete(sendAt, send.len);
    const recvs = ring.of("recv").map(([o]) => o);
    const [poll] = ring.of("poll").map(([o]) => o);
    const cancels = ring.of("cancel").map(([o]) => o);
    expect(recvs.length).toBe(MIN_BURST - 1);
    // Each cancel is submitted after the operation it aims at: the poll and every RECV still out.
    for (const c of cancels) expect(ring.inFlight.indexOf(c)).toBeGreaterThan(ring.inFlight.findIndex((o) => o.userData === c.target));
    expect(cancels.map((c) => c.target).sort()).toEqual([poll!.userData, ...recvs.map((r) => r.userData)].sort());
    for (const c of cancels) expect(decodeUserData(c.userData).kind).toBe(UserDataKind.CANCEL);
    // The frame wins the race (dropped, not counted); its cancel finds the RECV done (-ENOENT, not an error).
    const [late, lateAt] = ring.of("recv")[0]!;
    deliver(ring, late, lateAt, seqFrame(1, 64));
    for (let c = ring.of("cancel")[0]; c !== undefined; c = ring.of("cancel")[0]) ring.complete(c[1], c[0].target === poll!.userData ? 0 : -2);
    plane.runOnce(0);
    // Its RECVs are all back, but the poll's last completion is not: the fd stays open.
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(true);
    ring.complete(ring.of("poll")[0]![1], -125); // -ECANCELED, without IORING_CQE_F_MORE: its last
    plane.runOnce(0);
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(false);
    // Nothing was posted on the drained socket again, every buffer is back, and the late frame was not counted.
    expect([...ring.inFlight, ...ring.prepared].filter((o) => o.op === "recv" || o.op === "poll")).toEqual([]);
    expect(plane.buffersInUse()).toEqual({ recv: 0, send: 0 });
    expect(plane.counters()).toEqual({ received: 1, matched: 1, sent: 1, filtered: 0, no_match: 0, buffer_exhausted: 0, errors: 0 } satisfies WorkerCounters);
    plane.close();
  });

  test("removing (or replacing) a rule first submits the SENDs prepared for its outputs, then closes them: a SEND never names a closed fd", () => {
    const ring = new ScriptedRing();
    const plane = new DataPlane({ ring });
    const [input, out0, out1] = placeholders(3);
    plane.addRule(rule("r", 5000, 1), input!, [out0!]);
    plane.runOnce(0);
    const [op, i] = ring.of("recv")[0]!;
    deliver(ring, op, i, seqFrame(0, 64));
    plane.runOnce(0); // reaps the frame: its SEND is prepared, not yet submitted
    expect(ring.prepared.filter((o) => o.op === "send").map((o) => o.fd)).toEqual([out0!]);
    plane.addRule(rule("r", 5000, 1), undefined, [out1!]); // replaced: out0 goes
    expect(ring.prepared.filter((o) => o.op === "send")).toEqual([]);
    expect(ring.of("send").map(([o]) => o.fd)).toEqual([out0!]);
    expect(existsSync(`/proc/self/fd/${out0}`)).toBe(false);
    const [op2, i2] = ring.of("recv")[0]!;
    deliver(ring, op2, i2, seqFrame(1, 64));
    plane.runOnce(0);
    expect(ring.prepared.filter((o) => o.op === "send").map((o) => o.fd)).toEqual([out1!]);
    expect(plane.removeRule("r")).toBe(true);
    expect(ring.prepared.filter((o) => o.op === "send")).toEqual([]);
    expect(ring.of("send").map(([o]) => o.fd)).toEqual([out0!, out1!]);
    expect(existsSync(`/proc/self/fd/${out1}`)).toBe(false);
    plane.close();
  });

  test("ingress: one multishot poll per socket, no RECV left waiting on an empty one; bursts double while full, shrink after -EAGAIN, and a poll during a burst starts the next at once", () => {
    const ring = new ScriptedRing();
    const plane = new DataPlane({ ring });
    const [input, out0] = placeholders(2);
    plane.addRule(rule("r", 5000, 1), input!, [out0!]);
    let seq = 0;
    const fill = (n: number): void => {
      const recvs = ring.of("recv").slice(0, n);
      // Deliver from the last position down, so earlier positions stay valid.
      for (const [op, i] of recvs.reverse()) deliver(ring, op, i, seqFrame(seq++, 64));
    };
    // The RECVs in flight once what the last batch prepared is submitted (a batch with nothing to reap).
    const burst = (): number => {
      plane.runOnce(0);
      return ring.of("recv").length;
    };
    plane.runOnce(0);
    expect(ring.of("poll").length).toBe(1);
    expect(burst()).toBe(MIN_BURST); // readable at first: frames may wait since the socket was opened
    ring.empty();
    plane.runOnce(0);
    expect(burst()).toBe(0); // an empty socket: nothing waits in the kernel but the poll
    expect(plane.buffersInUse().recv).toBe(0);
    ring.fire(input!);
    plane.runOnce(0);
    expect(burst()).toBe(MIN_BURST);
    const sizes: number[] = [];
    for (let k = 0; k < 8; k++) {
      fill(burst());
      plane.runOnce(0);
      sizes.push(burst());
      for (let s = ring.of("send")[0]; s !== undefined; s = ring.of("send")[0]) ring.complete(s[1], s[0].len);
    }
    expect(sizes).toEqual([4, 8, 16, 32, 64, 64, 64, 64].map((n) => Math.min(n, RECV_BATCH)));
    // 3 frames, then the queue is empty: the burst ends, and the next one is sized 2 × 3.
    fill(3);
    ring.empty();
    plane.runOnce(0);
    expect(burst()).toBe(0);
    expect(ring.of("poll").length).toBe(1);
    ring.fire(input!);
    plane.runOnce(0);
    expect(burst()).toBe(6);
    // The poll fires while the burst is out: when it comes back empty, another burst goes at once.
    ring.fire(input!);
    plane.runOnce(0);
    ring.empty();
    plane.runOnce(0);
    expect(burst()).toBe(MIN_BURST);
    expect(ring.of("poll").length).toBe(1); // still the one poll
    // A poll ended by the kernel (no IORING_CQE_F_MORE) is armed again.
    ring.complete(ring.of("poll")[0]![1], 1);
    plane.runOnce(0); // reaps it
    plane.runOnce(0); // arms and submits a new one
    expect(ring.of("poll").length).toBe(1);
    expect(plane.counters().errors).toBe(0);
    expect(plane.counters().matched).toBe(seq);
    plane.close();
  });
});

const probe = probeIoUring();
if (!probe.ok) console.log(`skipping the data plane's io_uring tests: ${probe.reason}`);

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

describe.skipIf(!probe.ok)("the loop on a real ring (AF_UNIX datagram pairs stand in for the sockets)", () => {
  const opened: number[] = [];
  afterEach(() => {
    for (const fd of opened.splice(0)) libc().close(fd);
  });
  /** [the plane's end, the test's end]. */
  function pair(): [number, number] {
    const sv = new Int32Array(2);
    if (libc().socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, ptr(sv)) !== 0) throw new Error(`socketpair: ${strerror(errno())}`);
    opened.push(sv[1]!);
    return [sv[0]!, sv[1]!];
  }
  function drain(fd: number, into: Uint8Array[]): void {
    const buffer = new Uint8Array(4096);
    for (;;) {
      const n = libc().recv(fd, ptr(buffer), buffer.length, MSG_DONTWAIT);
      if (n < 0) return;
      into.push(buffer.slice(0, n));
    }
  }
  function push(fd: number, f: Uint8Array): void {
    expect(libc().send(fd, ptr(f), f.length, MSG_DONTWAIT)).toBe(f.length);
  }
  /** Runs the loop until `done` (bounded). */
  function runUntil(plane: DataPlane, done: () => boolean, outs: [number, Uint8Array[]][]): void {
    const deadline = Date.now() + 5_000;
    while (!done() && Date.now() < deadline) {
      plane.runOnce(20);
      for (const [fd, got] of outs) drain(fd, got);
    }
  }

  test("frames in, one intact payload copy per output out; junk and unmatched frames counted; sockets closed once", () => {
    const plane = new DataPlane();
    const [input, feed] = pair();
    const [a, aPeer] = pair();
    const [b, bPeer] = pair();
    plane.addRule(rule("r", 5000, 2), input, [a, b]);
    const gotA: Uint8Array[] = [];
    const gotB: Uint8Array[] = [];
    const outs: [number, Uint8Array[]][] = [[aPeer, gotA], [bPeer, gotB]];
    const N = 300;
    for (let seq = 0; seq < N; seq += 5) {
      for (let k = seq; k < seq + 5; k++) push(feed, seqFrame(k, 46 + ((k * 37) % 1427)));
      if (seq % 50 === 0) {
        push(feed, frame({ proto: 6 }));
        push(feed, seqFrame(9999, 64, 5001));
      }
      const want = seq + 5;
      runUntil(plane, () => gotA.length >= want && gotB.length >= want, outs);
    }
    for (const got of [gotA, gotB]) {
      expect(got.length).toBe(N);
      got.forEach((p, seq) => expect(p).toEqual(seqPayload(seq, 46 + ((seq * 37) % 1427))));
    }
    runUntil(plane, () => plane.counters().sent === 2 * N, outs);
    const c = plane.counters();
    expect(c).toEqual({ received: N + 12, matched: N, sent: 2 * N, filtered: 6, no_match: 6, buffer_exhausted: 0, errors: 0 } satisfies WorkerCounters);
    expect(plane.buffersInUse().send).toBe(0);
    expect(plane.removeRule("r")).toBe(true);
    expect(plane.removeRule("r")).toBe(false);
    runUntil(plane, () => !existsSync(`/proc/self/fd/${input}`), outs);
    for (const fd of [input, a, b]) expect(existsSync(`/proc/self/fd/${fd}`)).toBe(false);
    expect(plane.buffersInUse()).toEqual({ recv: 0, send: 0 });
    plane.close();
    plane.close();
    expect(() => plane.runOnce(0)).toThrow(StoaError);
  });

  test("a command queued and woken through the eventfd is applied between batches: no_match before, matched after", () => {
    const queue: (() => void)[] = [];
    let commands = 0;
    const plane = new DataPlane({
      onCommand: () => {
        commands++;
        for (const command of queue.splice(0)) command();
      },
    });
    const [input, feed] = pair();
    const [a, aPeer] = pair();
    const [b, bPeer] = pair();
    plane.addRule(rule("first", 5000), input, [a]);
    const got: Uint8Array[] = [];
    const outs: [number, Uint8Array[]][] = [[aPeer, got], [bPeer, got]];
    push(feed, seqFrame(1, 64, 5001));
    runUntil(plane, () => plane.counters().no_match === 1, outs);
    // The second rule reads the same interface: it comes without an input socket.
    queue.push(() => plane.addRule(rule("second", 5001), undefined, [b]));
    plane.wake();
    runUntil(plane, () => commands === 1, outs);
    push(feed, seqFrame(2, 64, 5001));
    runUntil(plane, () => got.length === 1, outs);
    expect(got[0]).toEqual(seqPayload(2, 64));
    expect(plane.counters()).toMatchObject({ received: 2, matched: 1, no_match: 1, errors: 0 });
    // Removing one of two rules on an interface keeps its socket; the last one closes it.
    queue.push(() => plane.removeRule("first"));
    plane.wake();
    runUntil(plane, () => commands === 2, outs);
    expect(existsSync(`/proc/self/fd/${a}`)).toBe(false);
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(true);
    plane.removeRule("second");
    runUntil(plane, () => !existsSync(`/proc/self/fd/${input}`), outs);
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(false);
    plane.close();
  });

  test("removing the last rule on an ingress cancels its poll: the socket is released after a few batches, buffers back, later frames not counted", () => {
    const plane = new DataPlane();
    const [input, feed] = pair();
    const [a, aPeer] = pair();
    plane.addRule(rule("r", 5000), input, [a]);
    const got: Uint8Array[] = [];
    const outs: [number, Uint8Array[]][] = [[aPeer, got]];
    push(feed, seqFrame(0, 64));
    runUntil(plane, () => got.length === 1 && plane.counters().sent === 1, outs);
    const idle = { recv: 0, send: 0 };
    // Every RECV completed inside its submit (MSG_DONTWAIT): none waits in the kernel, only the poll.
    expect(plane.buffersInUse()).toEqual(idle);
    const before = plane.counters();
    expect(plane.removeRule("r")).toBe(true);
    // Its poll is still in the ring: the fd stays open until its last completion is reaped. A frame now is dropped.
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(true);
    push(feed, seqFrame(1, 64));
    let batches = 0;
    for (; batches < 10 && existsSync(`/proc/self/fd/${input}`); batches++) plane.runOnce(20);
    expect(batches).toBeLessThan(10);
    expect(existsSync(`/proc/self/fd/${input}`)).toBe(false);
    expect(plane.buffersInUse()).toEqual(idle);
    // The socket itself is gone (no RECV in the ring holds it any more): its peer's send is refused.
    const late = seqFrame(2, 64);
    expect(libc().send(feed, ptr(late), late.length, MSG_DONTWAIT)).toBe(-1);
    expect(errno()).toBe(111); // ECONNREFUSED
    for (let k = 0; k < 3; k++) plane.runOnce(0);
    drain(aPeer, got);
    expect(got.length).toBe(1);
    expect(plane.counters()).toEqual(before);
    expect(plane.buffersInUse()).toEqual(idle);
    plane.close();
  });

  test("a SEND that fails (the output's peer is gone: ECONNREFUSED) is counted in errors, its buffer given back, the loop goes on", () => {
    const plane = new DataPlane();
    const [input, feed] = pair();
    const [a, aPeer] = pair();
    const [b, bPeer] = pair();
    opened.splice(opened.indexOf(aPeer), 1);
    libc().close(aPeer);
    plane.addRule(rule("r", 5000, 2), input, [a, b]);
    const got: Uint8Array[] = [];
    for (let seq = 0; seq < 5; seq++) push(feed, seqFrame(seq, 64));
    runUntil(plane, () => plane.counters().errors === 5 && got.length === 5, [[bPeer, got]]);
    expect(plane.counters()).toMatchObject({ matched: 5, sent: 5, errors: 5 });
    expect(got).toEqual([0, 1, 2, 3, 4].map((seq) => seqPayload(seq, 64)));
    expect(plane.buffersInUse().send).toBe(0);
    plane.close();
  });

  test("a rule with the wrong number of sockets, or none for an unread interface, is refused and its fds closed", () => {
    const plane = new DataPlane();
    const [a] = pair();
    const [b] = pair();
    expect(() => plane.addRule(rule("x", 5000, 2), undefined, [a])).toThrow(/2 outputs but came with 1/);
    expect(existsSync(`/proc/self/fd/${a}`)).toBe(false);
    expect(() => plane.addRule(rule("y", 5000), undefined, [b])).toThrow(/without a socket for in0/);
    expect(existsSync(`/proc/self/fd/${b}`)).toBe(false);
    plane.close();
  });

  test("a rule replaced by id closes its old outputs; a fifth input interface is refused (MAX_INPUTS) with its fds closed", () => {
    const plane = new DataPlane();
    const inputs = Array.from({ length: MAX_INPUTS + 1 }, () => pair()[0]);
    const outs = Array.from({ length: MAX_INPUTS + 2 }, () => pair()[0]);
    for (let i = 0; i < MAX_INPUTS; i++) plane.addRule(rule(`r${i}`, 5000 + i, 1, `in${i}`), inputs[i], [outs[i]!]);
    plane.addRule(rule("r0", 5000, 1, "in0"), undefined, [outs[MAX_INPUTS]!]);
    expect(existsSync(`/proc/self/fd/${outs[0]}`)).toBe(false);
    expect(existsSync(`/proc/self/fd/${inputs[0]}`)).toBe(true);
    expect(() => plane.addRule(rule("more", 6000, 1, "in9"), inputs[MAX_INPUTS], [outs[MAX_INPUTS + 1]!])).toThrow(/at most 4 interfaces/);
    for (const fd of [inputs[MAX_INPUTS], outs[MAX_INPUTS + 1]]) expect(existsSync(`/proc/self/fd/${fd}`)).toBe(false);
    plane.close();
    for (const fd of [...inputs, ...outs]) expect(existsSync(`/proc/self/fd/${fd}`)).toBe(false);
  });

});

const can = canUseNetns();
if (!can.ok) console.log(`skipping the data plane's namespace test: ${can.reason}`);

describe.skipIf(!can.ok || !probe.ok)("relaying across namespaces: gen → relay (AF_PACKET, io_uring) → sink", () => {
  let net: Net;
  beforeAll(async () => {
    net = await createNet({ hosts: ["gen", "relay", "sink"], links: [["gen", "relay"], ["relay", "sink"]], ipv4: true, ipv6: false });
  });
  afterAll(async () => {
    await net?.destroy();
  });

  /** Starts `argv` in `host` and waits for its "ready" line. */
  const start = (host: string, argv: string[]) => net.startReady(host, argv);

  test("1,000 × 1,400 B at 1,000 pps: ≥ 99 % relayed, payloads intact, counters consistent", async () => {
    const N = 1000;
    const SIZE = 1400;
    const relayIn = net.addr("relay", "gen", 4);
    const sinkAddr = net.addr("sink", "relay", 4);
    const sink = await start("sink", [process.execPath, FLOW, "sink", sinkAddr, "6000", String(N), String(SIZE)]);
    const relay = await start("relay", [process.execPath, FIXTURE, net.iface("relay", "gen"), relayIn, "5000", net.iface("relay", "sink"), sinkAddr, "6000", String(N)]);
    const sent = await net.exec("gen", [process.execPath, FLOW, "send", net.iface("gen", "relay"), relayIn, "5000", String(N), String(SIZE)], { timeoutMs: 20_000 });
    expect(sent.stderr).toBe("");
    expect(sent.stdout.trim()).toBe(`sent ${N}`);
    const counters = JSON.parse((await relay.done).trim()) as WorkerCounters;
    const seen = JSON.parse((await sink.done).trim()) as { received: number; distinct: number; corrupt: number };
    expect(seen.corrupt).toBe(0);
    expect(seen.distinct).toBe(seen.received);
    expect(seen.received).toBeGreaterThanOrEqual(0.99 * N);
    expect(counters.errors).toBe(0);
    expect(counters.buffer_exhausted).toBe(0);
    expect(counters.matched).toBeGreaterThanOrEqual(counters.sent);
    expect(counters.sent).toBeGreaterThanOrEqual(seen.received);
    expect(counters.received).toBe(counters.matched + counters.filtered + counters.no_match);
  }, 60_000);
});
