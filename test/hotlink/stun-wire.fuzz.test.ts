/**
 * The STUN decoder and the binding server's answer against 100,000 random and mutated datagrams
 * (seeded: STOA_FUZZ_SEED replays one): decodeStun returns a message or throws StunDecodeError,
 * nothing else; a message it returns encodes back to the same bytes; answerStun never throws and
 * answers only binding requests, each with the request's transaction id.
 */
import { expect, test } from "bun:test";
import { answerStun } from "../../src/hotlink/stun.ts";
import { decodeStun, encodeStun, STUN_METHOD_BINDING, StunDecodeError } from "../../src/hotlink/stun-wire.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const ITERATIONS = 100_000;

test(`${ITERATIONS} random and mutated datagrams: a message or a StunDecodeError, and answers only to binding requests`, () => {
  const rand = prng(fuzzSeed(0x57a1));
  const id = () => rand.bytes(12);
  const seeds = [
    encodeStun({ method: STUN_METHOD_BINDING, class: "request", transactionId: id(), attributes: [] }, { fingerprint: true }),
    encodeStun({ method: STUN_METHOD_BINDING, class: "request", transactionId: id(), attributes: [{ type: 0x8022, value: rand.bytes(7) }] }),
    encodeStun({ method: STUN_METHOD_BINDING, class: "success", transactionId: id(), attributes: [{ type: 0x0020, value: rand.bytes(8) }] }, { fingerprint: true }),
    encodeStun({ method: 0x003, class: "indication", transactionId: id(), attributes: [{ type: 0x0006, value: rand.bytes(5) }] }),
  ];
  let decoded = 0;
  let answers = 0;
  for (let i = 0; i < ITERATIONS; i++) {
    const input = i % 3 === 0 ? rand.bytes(rand.int(120)) : mutate(rand, rand.pick(seeds));
    let message: ReturnType<typeof decodeStun> | null = null;
    try {
      message = decodeStun(input);
    } catch (err) {
      if (!(err instanceof StunDecodeError)) throw new Error(`seed ${rand.seed} iteration ${i}: ${String(err)}`);
    }
    if (message !== null) {
      decoded++;
      const hasPrint = message.attributes.at(-1)?.type === 0x8028;
      const again = encodeStun({ ...message, attributes: hasPrint ? message.attributes.slice(0, -1) : message.attributes }, { fingerprint: hasPrint });
      if (again.length !== input.length || again.some((b, k) => b !== input[k])) {
        // Padding bytes are not kept: the same message with zero padding is what comes back.
        expect(decodeStun(again)).toEqual(message);
      }
    }
    const answer = answerStun(input, "198.51.100.7", 1 + (i % 65_535));
    if (answer !== null) {
      answers++;
      expect(message?.class).toBe("request");
      expect(message?.method).toBe(STUN_METHOD_BINDING);
      expect(decodeStun(answer).transactionId).toEqual(message?.transactionId ?? new Uint8Array());
    }
  }
  // The mutations keep a share of valid messages, so both paths ran.
  expect(decoded).toBeGreaterThan(1_000);
  expect(answers).toBeGreaterThan(100);
});
