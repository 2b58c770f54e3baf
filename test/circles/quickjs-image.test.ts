import { describe, expect, test } from "bun:test";
import wasmPath from "@jitl/quickjs-wasmfile-release-sync/wasm" with { type: "file" };
import { QuickJSInstance, STACK_BYTES, wasmLayout } from "../../src/circles/quickjs-image.ts";

const binary = await Bun.file(wasmPath).bytes();

/** A wasm binary of sections given as [id, payload bytes]. */
function wasm(...sections: [number, number[]][]): Uint8Array {
  const out = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  for (const [id, payload] of sections) out.push(id, ...uleb(payload.length), ...payload);
  return new Uint8Array(out);
}
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n !== 0) b |= 0x80;
    out.push(b);
  } while (n !== 0);
  return out;
}
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) return [...out, b];
    out.push(b | 0x80);
  }
}
/** One mutable i32 global initialised to `top`. */
const globals = (top: number, count = 1): [number, number[]] => [6, [count, ...Array.from({ length: count }, () => [0x7f, 0x01, 0x41, ...sleb(top), 0x0b]).flat()]];
/** Active data segments at [offset, length]. */
const data = (...segments: [number, number][]): [number, number[]] => [11, [segments.length, ...segments.flatMap(([offset, length]) => [0x00, 0x41, ...sleb(offset), 0x0b, ...uleb(length), ...new Array<number>(length).fill(7)])]];

const TOP = STACK_BYTES + 4096;

describe("wasmLayout: the stack and data of a wasm binary", () => {
  test("the QuickJS variant: one stack pointer, 16-aligned, 5 MiB of stack above every data segment", () => {
    const layout = wasmLayout(binary);
    expect(layout.stackTop % 16).toBe(0);
    expect(layout.staticEnd).toBe(layout.stackTop - STACK_BYTES);
    expect(layout.staticEnd).toBeGreaterThanOrEqual(layout.dataEnd);
    expect(layout.dataEnd).toBeGreaterThan(0);
  });

  test("a hand-made binary is read exactly", () => {
    expect(wasmLayout(wasm(globals(TOP), data([1024, 100], [2048, 30])))).toEqual({ dataEnd: 2078, stackTop: TOP, staticEnd: 4096 });
  });

  test("each shape it cannot vouch for is refused with the reason", () => {
    const refused = (bytes: Uint8Array, why: RegExp): void => {
      expect(() => wasmLayout(bytes)).toThrow(why);
    };
    refused(new Uint8Array([1, 2, 3]), /no wasm header/);
    refused(wasm(data([1024, 4])), /no global section/);
    refused(wasm(globals(TOP, 2), data([1024, 4])), /2 globals/);
    refused(wasm([6, [1, 0x7f, 0x00, 0x41, ...sleb(TOP), 0x0b]]), /not a mutable i32/);
    refused(wasm([6, [1, 0x7f, 0x01, 0x23, 0x00, 0x0b]]), /not an i32.const/);
    refused(wasm(globals(TOP + 8)), /not 16-byte aligned/);
    refused(wasm(globals(TOP), data([8192, 16])), /would overlap data ending at 8208/);
    refused(wasm(globals(TOP), [11, [1, 0x01, 4, 1, 2, 3, 4]]), /passive data segment/);
    refused(wasm(globals(TOP), [11, [1, 0x00, 0x41, 0x00, 0x0b, 50, 1, 2]]), /runs past its section/);
    refused(new Uint8Array([...wasm(globals(TOP)), 11, 0xff, 0xff, 0xff, 0xff, 0x0f]), /runs past the end/);
    refused(new Uint8Array([...wasm(), 6, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]), /longer than 5 bytes/);
  });

  test("fuzz: every prefix, and random bytes changed, either read or refused with the reason, never another error", () => {
    const small = wasm(globals(TOP), data([1024, 100], [2048, 30]));
    const inputs: Uint8Array[] = [];
    for (let n = 0; n < small.length; n++) inputs.push(small.subarray(0, n));
    let seed = 7;
    const next = (): number => (seed = (seed * 1103515245 + 12345) >>> 0);
    for (let i = 0; i < 3000; i++) {
      const base = i % 2 === 0 ? small : binary.subarray(0, 4096);
      const mutated = new Uint8Array(base);
      for (let k = 0; k <= i % 4; k++) mutated[next() % mutated.length] = next() & 0xff;
      inputs.push(mutated);
    }
    for (const input of inputs) {
      try {
        const layout = wasmLayout(input);
        expect(layout.staticEnd).toBeGreaterThanOrEqual(layout.dataEnd);
      } catch (err) {
        expect((err as Error).message).toStartWith("the QuickJS wasm binary is not laid out as the sandbox expects: ");
      }
    }
  });
});

describe("QuickJSInstance: capture and restore", () => {
  test("restore puts back every byte of the image, also after the memory grew, and QuickJS answers as before", async () => {
    const instance = await QuickJSInstance.load();
    const runtime = instance.module.newRuntime();
    runtime.setMemoryLimit(64 * 1024 * 1024);
    runtime.setMaxStackSize(512 * 1024);
    const vm = runtime.newContext();
    void vm.global;
    instance.capture();
    const { staticEnd, stackTop } = instance.layout;
    const before = new Uint8Array(instance.memory.buffer).slice(0, stackTop + instance.imageBytes);
    const grownFrom = instance.memoryBytes;
    const probe = "[Object.getOwnPropertyNames(globalThis).length, typeof leaked, [1, 2, 3].map((x) => x * 2).join()].join(';')";
    const first = vm.dump(vm.unwrapResult(vm.evalCode(probe)));
    vm.unwrapResult(vm.evalCode("globalThis.leaked = 'x'.repeat(30 * 1024 * 1024); Object.prototype.y = 1; let z = 2")).dispose();
    expect(instance.memoryBytes).toBeGreaterThan(grownFrom);
    instance.restore();
    const after = new Uint8Array(instance.memory.buffer);
    expect(Buffer.compare(after.subarray(0, staticEnd), before.subarray(0, staticEnd))).toBe(0);
    expect(Buffer.compare(after.subarray(stackTop, stackTop + instance.imageBytes - staticEnd), before.subarray(stackTop, stackTop + instance.imageBytes - staticEnd))).toBe(0);
    expect(vm.dump(vm.unwrapResult(vm.evalCode(probe)))).toBe(first);
    expect(vm.dump(vm.unwrapResult(vm.evalCode("let z = 3; typeof ({}).y + z")))).toBe("undefined3");
    instance.restore();
  });

  test("the layout holds: no byte in the stack's low part changes, whatever QuickJS runs (no static variable lives there)", async () => {
    const instance = await QuickJSInstance.load();
    const runtime = instance.module.newRuntime();
    runtime.setMemoryLimit(64 * 1024 * 1024);
    runtime.setMaxStackSize(512 * 1024);
    const vm = runtime.newContext();
    const work = [
      "function down(n) { return down(n + 1) + 1 } down(0)",
      "JSON.stringify(JSON.parse(JSON.stringify(Array.from({ length: 1e4 }, (_, i) => ({ i, s: 'v' + i })))).length",
      "'abc'.repeat(1e4).replace(/b(c)/g, '$1').match(/(a)(c)+/g).length",
      "new Date(0).toISOString() + Date.now() + new Date().toString()",
      "Promise.all([1, 2].map(async (x) => x)).then(String)",
      "new Map([[1, 2]]).size + new Set([1]).size + [...new Map([[1, 2]]).entries()].length",
      "let s = ''; for (let i = 0; i < 1e5; i++) s += i; s.length",
      "const a = []; for (;;) a.push({ n: a.length })",
      "BigInt(2) ** 100n",
      "new Uint8Array(1e6).fill(1).reduce((a, b) => a + b)",
      "throw new RangeError('x')",
    ];
    for (const script of work) {
      const result = vm.evalCode(script);
      (result.error ?? result.value).dispose();
      runtime.executePendingJobs().dispose();
    }
    const { staticEnd, stackTop } = instance.layout;
    const low = new Uint8Array(instance.memory.buffer, staticEnd, stackTop - 1024 * 1024 - staticEnd);
    expect(low.findIndex((b) => b !== 0)).toBe(-1);
    vm.dispose();
    runtime.dispose();
  }, 30_000);
});
