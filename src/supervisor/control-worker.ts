/**
 * The control-plane worker process (`stoa supervisor worker --role control`, started by
 * supervisor.ts): it serves the control socket the supervisor bound and passed on (`listen`),
 * so every byte a client sends is read, framed (core/framed-socket.ts, 1 MiB) and checked
 * (protocol.ts's request schema) by an unprivileged process. A request that passes goes to the
 * supervisor as `request` with a number; the `answer` with that number is written back. A frame
 * that is not a request is answered with an error here and never reaches the supervisor.
 *
 * The worker runs on Bun's event loop and reads its stream when the supervisor rings its doorbell
 * (a byte on stdin; stream.ts), and every HEALTH_EVERY_MS anyway. If the supervisor goes away
 * (EOF on the stream or on stdin), the worker stops; if the worker dies, the supervisor starts a
 * new one and passes the same listening socket again, so clients see at most a slower answer.
 */
import { StoaError } from "../core/errors.ts";
import { type FramedServer, serveFramed } from "../core/framed-socket.ts";
import type { Logger } from "../core/log.ts";
import type { OwnedFd } from "../ffi/fdpass.ts";
import { type ControlAnswer, HEALTH_EVERY_MS, MAX_CONTROL_FRAME_BYTES, type ToWorker, codecs } from "./protocol.ts";
import { STREAM_RETRY_MS } from "./stream.ts";
import { dropTo, supervisorStream } from "./worker-common.ts";

/** How long a request may wait for the supervisor's answer. */
const REQUEST_TIMEOUT_MS = 10_000;

export async function runControlWorker(o: { index: number; user: string | undefined; controlPath: string; log: Logger }): Promise<number> {
  const log = o.log;
  const stream = supervisorStream();
  dropTo(o.user);
  const done = Promise.withResolvers<number>();
  const waiting = new Map<number, (answer: ControlAnswer) => void>();
  let nextId = 1;
  let server: FramedServer | undefined;
  const encodeError = (e: StoaError): Uint8Array => codecs.answer.encode({ type: "error", error: { code: e.code, message: e.message.slice(0, 4000) } });

  const answer = async (frame: Uint8Array): Promise<Uint8Array> => {
    const got = codecs.request.safeDecode(frame);
    if (!got.ok) return encodeError(got.error);
    const id = nextId++;
    const reply = Promise.withResolvers<ControlAnswer>();
    waiting.set(id, reply.resolve);
    const timer = setTimeout(() => reply.resolve({ type: "error", error: { code: "timeout", message: `the supervisor did not answer ${got.value.type} within ${REQUEST_TIMEOUT_MS} ms` } }), REQUEST_TIMEOUT_MS);
    if (!stream.send(codecs.fromWorker.encode({ type: "request", id, request: got.value }))) {
      reply.resolve({ type: "error", error: { code: "closed", message: "the supervisor is gone" } });
    }
    flushLater();
    const a = await reply.promise;
    clearTimeout(timer);
    waiting.delete(id);
    return codecs.answer.encode(a);
  };

  const apply = async (m: ToWorker, fds: OwnedFd[]): Promise<void> => {
    switch (m.type) {
      case "listen": {
        const [listener, ...extra] = fds;
        for (const fd of extra) fd.close();
        if (listener === undefined || server !== undefined) {
          listener?.close();
          log.error(server === undefined ? "listen came without the control socket" : "listen came twice");
          return;
        }
        server = await serveFramed(o.controlPath, {
          fd: listener.take(),
          maxRequestBytes: MAX_CONTROL_FRAME_BYTES,
          maxAnswerBytes: MAX_CONTROL_FRAME_BYTES,
          answer,
          refusal: encodeError,
          log,
        });
        log.debug("control socket served", { path: o.controlPath });
        return;
      }
      case "answer":
        waiting.get(m.id)?.(m.answer);
        break;
      case "health":
      case "sync":
        stream.send(codecs.fromWorker.encode({ type: m.type, seq: m.seq }));
        break;
      case "shutdown":
        done.resolve(0);
        break;
      default:
        log.error(`the control worker got a "${m.type}" message, which only data workers take`);
    }
    for (const fd of fds) fd.close();
  };

  let retry: ReturnType<typeof setTimeout> | undefined;
  const flushLater = (): void => {
    if (retry !== undefined || stream.queued === 0) return;
    retry = setTimeout(() => {
      retry = undefined;
      stream.flush();
      flushLater();
    }, STREAM_RETRY_MS);
  };
  const read = (): void => {
    if (stream.queued > 0) stream.flush();
    const state = stream.receive((bytes, fds) => {
      const got = codecs.toWorker.safeDecode(bytes);
      if (!got.ok) {
        for (const fd of fds) fd.close();
        log.error("a message from the supervisor that is not one", { error: got.error.message });
        return;
      }
      apply(got.value, fds).catch((err: unknown) => {
        log.error("cannot serve the control socket", { err });
        done.resolve(1);
      });
    });
    if (state !== "open") {
      log.info("the supervisor is gone; stopping", { problem: stream.problem || undefined });
      done.resolve(0);
    }
    flushLater();
  };
  const poll = setInterval(read, HEALTH_EVERY_MS); // the safety net; the doorbell is what wakes us
  process.stdin.on("data", read);
  process.stdin.on("end", () => done.resolve(0)); // the supervisor is gone

  stream.send(codecs.fromWorker.encode({ type: "hello", role: "control", index: o.index, pid: process.pid }));
  const code = await done.promise;
  clearInterval(poll);
  clearTimeout(retry);
  process.stdin.pause();
  await server?.close();
  for (const reply of waiting.values()) reply({ type: "error", error: { code: "closed", message: "the control worker is stopping" } });
  stream.flush();
  stream.close();
  return code;
}
