/**
 * Fuzzing the two readers of src/flows/ofctl.ts: mutated real `dump-flows` output and mutated
 * flow specs (the corpus of ofctl.test.ts) give a result or a FlowSyntaxError — never another
 * exception, never a hang — and what is accepted is canonical: printed back and read again, it
 * is the same Flow.
 */
import { describe, expect, test } from "bun:test";
import {
  type Flow,
  FlowSyntaxError,
  MAX_DUMP_LINE_CHARS,
  MAX_SPEC_CHARS,
  parseDumpFlows,
  parseFlowSpec,
} from "../../src/flows/ofctl.ts";
import { type Prng, fuzzSeed, mutate, prng } from "../helpers/prng.ts";
import { CORPUS, PORT_NAMES, REAL_DUMP, REAL_DUMP_OF13 } from "./ofctl-corpus.ts";

const ITERATIONS = 100_000;
/** About 5 s per test on an idle machine, several times that on a loaded 2-core one. */
const FUZZ_TIMEOUT_MS = 120_000;
/** One parse of an input this small taking longer than this is a hang (backtracking, a loop). */
const SLOW_PARSE_MS = 250;
/** Inputs stay around the size of real ones; the size limits have their own tests. */
const MAX_FUZZ_INPUT_CHARS = 4096;

const PORTS = new Map(PORT_NAMES.map((name, i) => [name, i + 1]));
const DUMP_LINES = [...REAL_DUMP.split("\n"), ...REAL_DUMP_OF13.split("\n")].filter((l) => l.trim() !== "");

// Pieces that sit on the readers' decision points.
const TOKENS = [
  ",", ", ", " ", "=", ":", "(", ")", "[", "]", "..", "/", "->", "0x", "-1", "/-1", "0", "1", "65535", "65536", "4294967296",
  "18446744073709551616", "actions=", " actions=", "priority=", "cookie=", "table=", "idle_timeout=", "reset_counts ",
  "ip", "tcp", "udp6", "arp", "icmp6", "dl_type=0x0806", "nw_proto=", "nw_src=", "ipv6_dst=", "::", "::ffff:", "255.255.255.0",
  "/0", "/33", "/129", "ff:ff:ff:ff:ff:ff", "in_port=", "LOCAL", "vethA", "nosuch", "output:", "NORMAL", "drop", "learn(",
  "resubmit(", "resubmit(,", "load:", "move:", "set_field:", "->eth_src", "NXM_OF_ETH_DST[]", "reg0[0..31]", "[99..1]",
  "tcp_flags=+syn-ack", "ct_state=-trk", "enqueue:", "goto_table:", "\n", "\r\n", "NXST_FLOW reply (xid=0x4):\n", "\t", "é", "\u0000",
];

function mutateString(rng: Prng, input: string): string {
  let out = input;
  switch (rng.int(3)) {
    case 0:
      out = new TextDecoder().decode(mutate(rng, new TextEncoder().encode(input)));
      break;
    case 1: {
      for (let n = 1 + rng.int(3); n > 0; n--) {
        const at = rng.int(out.length + 1);
        const cut = rng.int(4) === 0 ? rng.int(8) : 0;
        out = out.slice(0, at) + rng.pick(TOKENS) + out.slice(at + cut);
      }
      break;
    }
    default: {
      // splice a piece of another input in
      const other = rng.pick([...CORPUS, ...DUMP_LINES]);
      const from = rng.int(other.length + 1);
      const at = rng.int(out.length + 1);
      out = out.slice(0, at) + other.slice(from, from + 1 + rng.int(40)) + out.slice(at);
    }
  }
  return out.slice(0, MAX_FUZZ_INPUT_CHARS);
}

/** Runs `parse`, allowing only a FlowSyntaxError, bounded in time; the result or undefined. */
function attempt<T>(input: string, parse: () => T): T | undefined {
  const start = performance.now();
  try {
    return parse();
  } catch (err) {
    if (!(err instanceof FlowSyntaxError)) throw new Error(`not a FlowSyntaxError for ${JSON.stringify(input)}: ${String(err)}`);
    return undefined;
  } finally {
    const took = performance.now() - start;
    if (took > SLOW_PARSE_MS) throw new Error(`${took.toFixed(0)} ms for ${JSON.stringify(input)}`);
  }
}

/** A Flow written back as a spec (what stoa would send, minus the command word). */
function specOf(f: Flow): string {
  const timeouts = `${f.idleTimeout ? `,idle_timeout=${f.idleTimeout}` : ""}${f.hardTimeout ? `,hard_timeout=${f.hardTimeout}` : ""}`;
  return `cookie=0x${f.cookie.toString(16)},table=${f.table},priority=${f.priority}${timeouts}${f.match ? `,${f.match}` : ""},actions=${f.actions}`;
}

/** A Flow written back as a dump line, the way OVS prints one. */
function dumpLineOf(f: Flow): string {
  const timeouts = `${f.idleTimeout ? `idle_timeout=${f.idleTimeout}, ` : ""}${f.hardTimeout ? `hard_timeout=${f.hardTimeout}, ` : ""}`;
  const match = [f.priority === 32768 ? "" : `priority=${f.priority}`, f.match].filter((s) => s !== "").join(",");
  return ` cookie=0x${f.cookie.toString(16)}, duration=0.5s, table=${f.table}, n_packets=1, n_bytes=2, ${timeouts}idle_age=0, ${match}${match ? " " : ""}actions=${f.actions}`;
}

const flowOnly = ({ cookie, table, priority, idleTimeout, hardTimeout, match, actions }: Flow): Flow => ({
  cookie,
  table,
  priority,
  idleTimeout,
  hardTimeout,
  match,
  actions,
});

describe("parseFlowSpec under fuzzing", () => {
  test(
    `${ITERATIONS} mutated specs: a canonical Flow or a FlowSyntaxError`,
    () => {
      const rng = prng(fuzzSeed(0x0f10_5bec));
      let accepted = 0;
      for (let i = 0; i < ITERATIONS; i++) {
        const input = mutateString(rng, rng.pick(CORPUS));
        const flow = attempt(input, () => parseFlowSpec(input, PORTS));
        if (flow === undefined) continue;
        accepted++;
        const again = specOf(flow);
        expect({ input, again, flow: attempt(again, () => parseFlowSpec(again, PORTS)) }).toEqual({ input, again, flow });
      }
      console.log(`parseFlowSpec: ${accepted} of ${ITERATIONS} mutated specs accepted (seed ${rng.seed})`);
      expect(accepted).toBeGreaterThan(ITERATIONS / 20);
    },
    FUZZ_TIMEOUT_MS,
  );

  test("every corpus spec is a fixed point once canonical", () => {
    for (const spec of CORPUS) {
      const flow = parseFlowSpec(spec, PORTS);
      expect(parseFlowSpec(specOf(flow), PORTS)).toEqual(flow);
      expect(parseFlowSpec(specOf(flow))).toEqual(flow);
    }
  });

  test("a spec over MAX_SPEC_CHARS is refused before it is read", () => {
    const long = `priority=1,${"ip,".repeat(MAX_SPEC_CHARS / 3)}actions=drop`;
    expect(() => parseFlowSpec(long)).toThrow(`longer than ${MAX_SPEC_CHARS}`);
    expect(() => parseFlowSpec(`actions=${"(".repeat(1000)}`)).toThrow(FlowSyntaxError);
  });
});

describe("parseDumpFlows under fuzzing", () => {
  test(
    `${ITERATIONS} mutated dumps: flows or a FlowSyntaxError, and each flow reads back the same`,
    () => {
      const rng = prng(fuzzSeed(0xd0_4f10));
      let flows = 0;
      for (let i = 0; i < ITERATIONS; i++) {
        const header = rng.pick(["NXST_FLOW reply (xid=0x4):", "OFPST_FLOW reply (OF1.3) (xid=0x2):"]);
        const lines = [header];
        for (let n = 1 + rng.int(3); n > 0; n--) lines.push(rng.int(3) === 0 ? rng.pick(DUMP_LINES) : mutateString(rng, rng.pick(DUMP_LINES)));
        const input = lines.join("\n");
        const dumped = attempt(input, () => parseDumpFlows(input));
        if (dumped === undefined) continue;
        flows += dumped.length;
        for (const flow of dumped) {
          const line = `${header}\n${dumpLineOf(flow)}`;
          const [again] = attempt(line, () => parseDumpFlows(line)) ?? [];
          expect({ input, line, flow: again && flowOnly(again) }).toEqual({ input, line, flow: flowOnly(flow) });
        }
      }
      console.log(`parseDumpFlows: ${flows} flows read from ${ITERATIONS} mutated dumps (seed ${rng.seed})`);
      expect(flows).toBeGreaterThan(ITERATIONS / 10);
    },
    FUZZ_TIMEOUT_MS,
  );

  test("random text is a FlowSyntaxError or nothing, never anything else", () => {
    const rng = prng(fuzzSeed(0x7e57));
    for (let i = 0; i < 20_000; i++) {
      let input = "";
      for (let n = rng.int(30); n > 0; n--) input += rng.pick(TOKENS);
      attempt(input, () => parseDumpFlows(input));
      attempt(input, () => parseFlowSpec(input, PORTS));
    }
  });

  test("a line over MAX_DUMP_LINE_CHARS is refused before it is cut out of the text", () => {
    const text = `NXST_FLOW reply (xid=0x4):\n cookie=0x0, table=0 actions=${"drop,".repeat(MAX_DUMP_LINE_CHARS / 5)}\n`;
    expect(() => parseDumpFlows(text)).toThrow(`line 2 is longer than ${MAX_DUMP_LINE_CHARS}`);
  });
});
