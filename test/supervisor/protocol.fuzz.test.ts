import { expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { codecs } from "../../src/supervisor/protocol.ts";
import { fuzzSeed, mutate, prng } from "../helpers/prng.ts";

const seeds = [
  codecs.request.encode({ type: "add_rule", rule: { rule_id: "r1", input_interface: "eth0", input_group: "239.1.1.1", input_port: 5000, outputs: [{ group: "239.2.2.2", port: 6000, interface: "eth1" }] } }),
  codecs.request.encode({ type: "remove_rule", rule_id: "r1" }),
  codecs.toWorker.encode({ type: "health", seq: 3 }),
  codecs.fromWorker.encode({ type: "hello", role: "data", index: 0, pid: 9 }),
];

test("100,000 random and mutated control frames: every codec answers with a result or a StoaError, nothing else", () => {
  const rng = prng(fuzzSeed(14));
  for (let i = 0; i < 100_000; i++) {
    const input = i % 4 === 0 ? rng.bytes(rng.int(65)) : mutate(rng, seeds[i % seeds.length]!);
    for (const codec of Object.values(codecs)) {
      const result = codec.safeDecode(input);
      if (!result.ok) expect(result.error).toBeInstanceOf(StoaError);
    }
  }
}, 120_000);
