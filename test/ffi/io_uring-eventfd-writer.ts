/**
 * Worker for test/ffi/io_uring.test.ts: on a message `{ efd, value }` it adds `value` to the
 * eventfd — a command arriving from another thread while the ring's thread is blocked in
 * io_uring_enter — and answers "written".
 */
import { ptr } from "bun:ffi";
import { libc } from "../../src/ffi/libc.ts";

declare const self: Worker;

self.onmessage = (event: MessageEvent<{ efd: number; value: number }>) => {
  const { efd, value } = event.data;
  const counter = new BigUint64Array([BigInt(value)]);
  libc().write(efd, ptr(counter), 8);
  self.postMessage("written");
};
