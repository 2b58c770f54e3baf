/**
 * rtc.ts, the one file that touches the WebRTC library: what the ICE rungs rely on of it beyond
 * the sessions' tests (test/hotlink/ice.test.ts).
 */
import { expect, test } from "bun:test";
import { readdirSync } from "node:fs";
import { openRtcPeer, pairFromStats } from "../../src/hotlink/rtc.ts";
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

test("the pair a connection's statistics say carries it: the transport's selected pair, else a nominated one that succeeded", () => {
  const candidates = [
    { id: "L1", type: "local-candidate", candidateType: "srflx", address: "10.0.1.2", port: 4000 },
    { id: "R1", type: "remote-candidate", candidateType: "relay", address: "10.0.0.1", port: 5000 },
    { id: "R2", type: "remote-candidate", candidateType: "srflx", address: "10.0.3.2", port: 6000 },
  ];
  const pairs = [
    { id: "P1", type: "candidate-pair", localCandidateId: "L1", remoteCandidateId: "R1", state: "succeeded", nominated: true },
    { id: "P2", type: "candidate-pair", localCandidateId: "L1", remoteCandidateId: "R2", state: "succeeded", nominated: false },
  ];
  expect(pairFromStats([...candidates, ...pairs, { id: "T", type: "transport", selectedCandidatePairId: "P2" }])).toEqual({
    local: { type: "srflx", address: "10.0.1.2", port: 4000 },
    remote: { type: "srflx", address: "10.0.3.2", port: 6000 },
  });
  expect(pairFromStats([...candidates, ...pairs])?.remote).toEqual({ type: "relay", address: "10.0.0.1", port: 5000 });
  expect(pairFromStats(candidates)).toBeNull();
  expect(pairFromStats([...pairs, { id: "T", type: "transport", selectedCandidatePairId: "P2" }])).toBeNull(); // ends unknown
});
