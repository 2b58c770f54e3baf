/**
 * Entry point of the splice engine's Worker thread (fdsplice.ts starts it; the loop is in
 * fdsplice-engine.ts). In a compiled binary this file must be a build entrypoint
 * (scripts/build.ts, worker-entry.ts).
 */
import { type FromEngine, SpliceEngine, type ToEngine } from "./fdsplice-engine.ts";
import { describeError } from "./errors.ts";

declare const self: Worker;

const post = (msg: FromEngine): void => self.postMessage(msg);
let engine: SpliceEngine | null = null;

self.onmessage = (event: MessageEvent<ToEngine>) => {
  try {
    engine ??= new SpliceEngine(post);
    engine.onMessage(event.data);
  } catch (err) {
    post({ type: "fatal", message: describeError(err) });
  }
};
