import { describe, expect, test } from "bun:test";
import { isValue, MAX_VALUE_DEPTH, valueProblem, valueText, valueToJson } from "../../src/stream/value.ts";

describe("stream values", () => {
  test("accepts JSON's data model plus byte strings", () => {
    for (const v of ["", "text", 0, -1.5, 1e300, true, false, null, new Uint8Array(3), Buffer.from("b"), [], {}, { a: [1, { b: null }] }]) {
      expect(valueProblem(v)).toBeNull();
    }
    expect(isValue(Object.create(null))).toBe(true);
  });

  test("refuses what would not survive both encodings, saying where", () => {
    const cases: [unknown, string][] = [
      [undefined, "$ is undefined"],
      [Number.NaN, "$ is NaN"],
      [{ a: Infinity }, "$.a is Infinity"],
      [[1, 2n], "$[1] is a bigint"],
      [{ "odd key": new Date(0) }, '$["odd key"] is a Date'],
      [new Map(), "$ is a Map"],
      [new Uint16Array(2), "$ is a Uint16Array"],
      ["\ud800", "$ is a string with an unpaired UTF-16 surrogate"],
      [JSON.parse('{"__proto__": 1}'), '"__proto__" key'],
      [{ [Symbol("s")]: 1 }, "symbol keys"],
      [() => 1, "$ is a function"],
    ];
    for (const [value, problem] of cases) expect(valueProblem(value)).toContain(problem);
  });

  test("refuses nesting beyond the limit and cycles without overflowing the stack", () => {
    let deep: unknown = 1;
    for (let i = 0; i < MAX_VALUE_DEPTH; i++) deep = [deep];
    expect(valueProblem(deep)).toBeNull();
    expect(valueProblem([deep])).toContain("deeper than");
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(valueProblem(cyclic)).toContain("cyclic");
    let huge: unknown = 1;
    for (let i = 0; i < 100_000; i++) huge = { x: huge };
    expect(valueProblem(huge)).toContain("deeper than");
  });

  test("has a text form: strings as themselves, bytes as UTF-8 or base64, the rest as JSON", () => {
    expect(valueText("a b\n")).toBe("a b\n");
    expect(valueText(new TextEncoder().encode("héllo"))).toBe("héllo");
    expect(valueText(new Uint8Array([0xff, 0x00]))).toBe("/wA=");
    expect(valueText(12.5)).toBe("12.5");
    expect(valueText(null)).toBe("null");
    expect(valueText(false)).toBe("false");
    expect(valueText({ a: [1, "x", new Uint8Array([1])] })).toBe('{"a":[1,"x","AQ=="]}');
    expect(valueToJson({ b: new Uint8Array([0xff]) })).toEqual({ b: "/w==" });
  });
});
