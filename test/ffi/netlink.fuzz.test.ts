import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { MsgType, ReplyCollector, decodeAddr, decodeError, decodeRoute, splitDatagram } from "../../src/ffi/netlink-codec.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";
import { addrMessage, concat, doneMessage, errorMessage, routeMessage } from "./netlink-messages.ts";

const ITERATIONS = 100_000;
/** The longest test here takes about 2.3 s on an idle machine, several times that on a loaded 2-core one (Bun's default is 5 s). */
const FUZZ_TIMEOUT_MS = 30_000;
const SEQ = 77;

interface Expected {
  done: boolean;
  errno: number;
  entries: number;
}

/** A kernel-shaped datagram for a request with SEQ, and what the collector must make of it. */
function datagram(rng: Prng, dump: boolean, entryType: number): { bytes: Uint8Array; expected: Expected } {
  const parts: Uint8Array[] = [];
  const expected: Expected = { done: false, errno: 0, entries: 0 };
  const count = rng.int(6);
  for (let i = 0; i < count; i++) {
    const seq = rng.int(5) === 0 ? SEQ + 1 : SEQ;
    const ours = seq === SEQ && !expected.done;
    switch (rng.int(5)) {
      case 0:
      case 1: {
        parts.push(addrMessage({ seq, address: rng.bytes(16), index: 1 + rng.int(1000), flags: rng.next(), label: rng.int(2) ? "eth0" : undefined, multi: dump }));
        if (ours && dump && entryType === MsgType.RTM_NEWADDR) expected.entries++;
        break;
      }
      case 2: {
        parts.push(routeMessage({ seq, dst: rng.bytes(16), dstLen: rng.int(129), oif: rng.int(100), table: rng.pick([254, 255, 1000]), protocol: rng.int(256), type: rng.int(12) }));
        if (ours && dump && entryType === MsgType.RTM_NEWROUTE) expected.entries++;
        break;
      }
      case 3: {
        const errno = rng.pick([0, 1, 17, 19, 22, 99]);
        parts.push(errorMessage({ seq, errno, extack: rng.int(2) ? "some kernel words" : undefined, capped: rng.int(2) === 0 }));
        if (ours) Object.assign(expected, { done: true, errno });
        break;
      }
      default: {
        if (!dump) break; // NLMSG_DONE for a plain request is an error, tested elsewhere
        const status = rng.pick([0, 0, -16]);
        parts.push(doneMessage(seq, status));
        if (ours) Object.assign(expected, { done: true, errno: status < 0 ? -status : 0 });
      }
    }
  }
  return { bytes: concat(...parts), expected };
}

/** Everything a reply goes through: the collector, then each decoder on every message. */
function decodeAll(bytes: Uint8Array, dump: boolean, entryType: number): ReplyCollector {
  const reply = new ReplyCollector(SEQ, dump, entryType);
  reply.feed(bytes);
  for (const entry of reply.entries) (entryType === MsgType.RTM_NEWADDR ? decodeAddr : decodeRoute)(entry);
  return reply;
}

function decodeEachMessage(bytes: Uint8Array): void {
  for (const msg of splitDatagram(bytes)) {
    for (const decode of [() => decodeAddr(msg.payload), () => decodeRoute(msg.payload), () => decodeError(msg)]) {
      try {
        decode();
      } catch (err) {
        if (!(err instanceof StoaError)) throw err;
        expect(["decode", "too_large"]).toContain(err.code);
      }
    }
  }
}

describe("netlink reply decoding fuzzing", () => {
  test(`${ITERATIONS} random and mutated datagrams: only StoaError escapes, and kernel-shaped ones decode exactly`, () => {
    const seed = fuzzSeed(0x0e7_11c);
    const rng = prng(seed);
    let i = 0;
    let input: Uint8Array = new Uint8Array(0);
    let rejected = 0;
    try {
      for (; i < ITERATIONS; i++) {
        const dump = rng.int(2) === 0;
        const entryType = rng.pick([MsgType.RTM_NEWADDR, MsgType.RTM_NEWROUTE]);
        const roll = rng.int(10);
        const { bytes, expected } = datagram(rng, dump, entryType);
        input = roll < 7 ? mutate(rng, bytes) : roll < 9 ? bytes : rng.bytes(rng.int(200));
        let reply: ReplyCollector | undefined;
        try {
          reply = decodeAll(input, dump, entryType);
          decodeEachMessage(input);
        } catch (err) {
          if (!(err instanceof StoaError)) throw err;
          expect(["decode", "too_large"]).toContain(err.code);
          rejected++;
        }
        if (roll >= 7 && roll < 9) {
          expect(reply).toBeDefined();
          expect({ done: reply?.done, errno: reply?.errno, entries: reply?.entries.length }).toEqual(expected);
        }
      }
    } catch (err) {
      console.error(`netlink fuzz failed: STOA_FUZZ_SEED=${seed}, iteration ${i}, input ${Buffer.from(input).toString("hex")}`);
      throw err;
    }
    expect(rejected).toBeGreaterThan(1_000);
    expect(rejected).toBeLessThan(ITERATIONS - 1_000);
  }, FUZZ_TIMEOUT_MS);
});
