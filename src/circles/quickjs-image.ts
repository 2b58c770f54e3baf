/**
 * A QuickJS instance whose whole state can be saved once and put back after every play.
 *
 * QuickJS runs in WebAssembly, so everything it knows — runtime, contexts, heap, atoms, the
 * allocator's own bookkeeping, pending jobs, the memory limit's counters — lives in one linear
 * memory. Putting back the bytes of that memory as they were is a fresh engine, exactly: not a
 * context that was cleaned, but the same bytes. A sandbox builds its context once, installs its
 * globals, calls `capture()`, and after every play `restore()` copies the image back (~140 KB,
 * a few µs) instead of building a context (~110-170 µs).
 *
 * Which bytes. The variant's memory (emscripten, `-s STACK_SIZE=5MB`, dlmalloc) is laid out as
 *   [0, staticEnd)            data and bss: C globals, among them the allocator's state
 *   [staticEnd, stackTop)     the C stack, 5 MiB, growing down from stackTop
 *   [stackTop, heapTop)       the heap up to its last used byte when the image was taken
 *   [heapTop, memory end)     free: the allocator hands it out only after writing to it
 * Between two calls into wasm the stack pointer is back at stackTop, so nothing on the stack is
 * live and the stack is not saved. The image is [0, staticEnd) and [stackTop, heapTop). Bytes
 * above heapTop that a play used are left as they are: the restored allocator counts them free
 * (and clears what calloc hands out). Memory that grew stays grown (wasm memory cannot shrink):
 * a sandbox whose play ran out of memory takes a new instance instead.
 *
 * stackTop is the initial value of the module's only global (`__stack_pointer`), read from the
 * wasm binary; staticEnd = stackTop - 5 MiB, checked to lie at or past the end of the last data
 * segment (test/circles/quickjs-image.test.ts also checks that no byte in the stack's low part
 * ever changes, which a static variable placed there would). A binary of another shape is
 * refused at load, with the reason.
 *
 * What stays outside the image, so a user of this class must keep it unchanged across plays:
 * the JS side of quickjs-emscripten — handles (every handle made during a play is disposed
 * before `restore`, or it would free into the restored heap) and host functions (made before
 * `capture` and kept alive by a handle the sandbox holds, so a play that deletes one cannot
 * have QuickJS free it and drop its host reference).
 */
import { newQuickJSWASMModuleFromVariant, newVariant, type QuickJSWASMModule } from "quickjs-emscripten-core";
import variant from "@jitl/quickjs-wasmfile-release-sync";
import wasmPath from "@jitl/quickjs-wasmfile-release-sync/wasm" with { type: "file" };

/** The variant's C stack (its build's `-s STACK_SIZE=5MB`). */
export const STACK_BYTES = 5 * 1024 * 1024;
/** The variant's initial memory (emscripten's INITIAL_MEMORY default), in 64 KiB pages. */
const INITIAL_PAGES = 256;
/** 2 GiB of 64 KiB pages, the most the variant's memory import declares; the runtime's memory limit stops a play long before. */
const MAXIMUM_PAGES = 32768;

export interface WasmLayout {
  /** End of the last data segment. */
  dataEnd: number;
  /** The stack pointer's initial value: the top of the stack and the start of the heap. */
  stackTop: number;
  /** stackTop - STACK_BYTES: everything below is data and bss. */
  staticEnd: number;
}

/**
 * Reads the memory layout out of a wasm binary (the global and data sections; every length is
 * checked against the binary's size). Throws with the reason when it is not the shape above.
 */
export function wasmLayout(bytes: Uint8Array): WasmLayout {
  const fail = (why: string): never => {
    throw new Error(`the QuickJS wasm binary is not laid out as the sandbox expects: ${why}`);
  };
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) fail("no wasm header");
  let at = 8;
  const byte = (): number => {
    if (at >= bytes.length) fail("truncated");
    return bytes[at++]!;
  };
  const leb = (signed: boolean): number => {
    let result = 0;
    let shift = 0;
    let b: number;
    do {
      if (shift > 28) fail("an integer longer than 5 bytes");
      b = byte();
      result |= (b & 0x7f) << shift;
      shift += 7;
    } while (b & 0x80);
    if (signed && shift < 32 && b & 0x40) result |= -1 << shift;
    return signed ? result : result >>> 0;
  };
  /** An offset expression: i32.const N, end. */
  const constExpr = (what: string): number => {
    if (byte() !== 0x41) fail(`${what} is not an i32.const`);
    const value = leb(true);
    if (byte() !== 0x0b) fail(`${what} is not a single i32.const`);
    return value;
  };
  let stackTop: number | undefined;
  let globals = 0;
  let dataEnd = 0;
  while (at < bytes.length) {
    const id = byte();
    const size = leb(false);
    const end = at + size;
    if (end > bytes.length) fail("a section runs past the end");
    if (id === 6) {
      globals = leb(false);
      if (globals < 1) fail("no global");
      const type = byte();
      const mutable = byte();
      if (type !== 0x7f || mutable !== 1) fail("the first global is not a mutable i32");
      stackTop = constExpr("the stack pointer's initial value");
    } else if (id === 11) {
      const count = leb(false);
      for (let i = 0; i < count; i++) {
        const flags = leb(false);
        if (flags === 1) fail("a passive data segment");
        if (flags === 2) leb(false);
        else if (flags !== 0) fail(`a data segment with flags ${flags}`);
        const offset = constExpr("a data segment's offset");
        const length = leb(false);
        at += length;
        if (at > end) fail("a data segment runs past its section");
        dataEnd = Math.max(dataEnd, offset + length);
      }
    }
    at = end;
  }
  if (stackTop === undefined) fail("no global section");
  if (globals !== 1) fail(`${globals} globals where the stack pointer alone was expected`);
  const top = stackTop as number;
  if (top % 16 !== 0) fail(`the stack top ${top} is not 16-byte aligned`);
  const staticEnd = top - STACK_BYTES;
  if (staticEnd < dataEnd) fail(`the stack (${STACK_BYTES} bytes below ${top}) would overlap data ending at ${dataEnd}`);
  return { dataEnd, stackTop: top, staticEnd };
}

/** The compiled binary and its layout, once per thread. */
let compiled: Promise<{ module: WebAssembly.Module; layout: WasmLayout }> | undefined;

function compile(): Promise<{ module: WebAssembly.Module; layout: WasmLayout }> {
  compiled ??= (async () => {
    const bytes = await Bun.file(wasmPath).bytes();
    const layout = wasmLayout(bytes);
    return { module: await WebAssembly.compile(bytes), layout };
  })();
  return compiled;
}

export class QuickJSInstance {
  readonly module: QuickJSWASMModule;
  readonly layout: WasmLayout;
  #memory: WebAssembly.Memory;
  #view: Uint8Array;
  #low: Uint8Array | null = null;
  #high: Uint8Array | null = null;

  private constructor(module: QuickJSWASMModule, memory: WebAssembly.Memory, layout: WasmLayout) {
    this.module = module;
    this.#memory = memory;
    this.#view = new Uint8Array(memory.buffer);
    this.layout = layout;
  }

  /** A new instance with its own memory (the binary is compiled once per thread: later loads take ~1 ms). */
  static async load(): Promise<QuickJSInstance> {
    const { module, layout } = await compile();
    const memory = new WebAssembly.Memory({ initial: INITIAL_PAGES, maximum: MAXIMUM_PAGES });
    const quickjs = await newQuickJSWASMModuleFromVariant(newVariant(variant, { wasmModule: module, wasmMemory: memory }));
    return new QuickJSInstance(quickjs, memory, layout);
  }

  /** The memory now (a play that grows it replaces the buffer). */
  #bytes(): Uint8Array {
    if (this.#view.buffer !== this.#memory.buffer) this.#view = new Uint8Array(this.#memory.buffer);
    return this.#view;
  }

  /** The instance's linear memory (tests read it). */
  get memory(): WebAssembly.Memory {
    return this.#memory;
  }

  /** Bytes of linear memory the instance holds (it grows, never shrinks). */
  get memoryBytes(): number {
    return this.#memory.buffer.byteLength;
  }

  /** Bytes `restore` copies. */
  get imageBytes(): number {
    return (this.#low?.length ?? 0) + (this.#high?.length ?? 0);
  }

  /**
   * Takes the image: call on a new instance, between calls into QuickJS, once the state every
   * play starts from is built (memory past the heap must still be as the instance got it: zero).
   */
  capture(): void {
    const bytes = this.#bytes();
    const { staticEnd, stackTop } = this.layout;
    // The last byte in use: memory past it is as the instance got it, zero (scanned by words).
    const words = new Uint32Array(bytes.buffer, 0, bytes.length >>> 2);
    let word = words.length;
    while (word > stackTop >>> 2 && words[word - 1] === 0) word--;
    let heapTop = word << 2;
    while (heapTop > stackTop && bytes[heapTop - 1] === 0) heapTop--;
    this.#low = bytes.slice(0, staticEnd);
    this.#high = bytes.slice(stackTop, heapTop);
  }

  /** Puts the captured image back: QuickJS is as it was at `capture()`. */
  restore(): void {
    if (this.#low === null || this.#high === null) throw new Error("restore() before capture()");
    const bytes = this.#bytes();
    bytes.set(this.#low, 0);
    bytes.set(this.#high, this.layout.stackTop);
  }
}
