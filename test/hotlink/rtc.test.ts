/**
 * rtc.ts, the one file that touches the WebRTC library: what the ICE rungs rely on of it beyond
 * the sessions' tests (test/hotlink/ice.test.ts).
 */
import { expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { openRtcPeer } from "../../src/hotlink/rtc.ts";
import { eventually } from "../helpers/eventually.ts";

const fds = (): number => readdirSync("/proc/self/fd").length;
const threads = (): number => readdirSync("/proc/self/task").length;

test("closed peer connections give back their threads and descriptors without waiting for the garbage collector to happen by", async () => {
  const before = { fds: fds(), threads: threads() };
  for (let i = 0; i < 24; i++) {
    const peer = openRtcPeer([]);
    await peer.createOffer(); // gathering started: its sockets are open
    peer.close();
  }
  // Each held 8 descriptors and 4 threads until collected (24 → ~190 and ~100).
  await eventually(
    "the closed connections' resources to be released",
    () => fds() <= before.fds + 24 && threads() <= before.threads + 16,
    { timeoutMs: 10_000 },
  );
}, 30_000);
