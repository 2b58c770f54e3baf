/**
 * The control API's client side (`stoa supervisor add-rule|remove-rule|list-rules|stats|workers|
 * ping`): one request, one answer over the control socket (core/framed-socket.ts, 1 MiB frames).
 */
import { StoaError, describeError, errorCodeFromWire } from "../core/errors.ts";
import { connectErrorCode, framedRequest } from "../core/framed-socket.ts";
import { type ControlAnswer, type ControlRequest, MAX_CONTROL_FRAME_BYTES, codecs } from "./protocol.ts";

/** How long a CLI waits for an answer (get_stats asks every data worker, up to 1 s). */
const CLIENT_TIMEOUT_MS = 15_000;

type AnswerFor<T extends ControlRequest["type"]> = Extract<ControlAnswer, { type: T }>;

/**
 * Sends `request` to the supervisor at `path` and returns its answer; the supervisor's error
 * answers are thrown as StoaError with their code. No supervisor there: "closed", with the fix.
 * @example
 * const { rule_id } = await supervisorRequest("/run/stoa/supervisor/control.sock", { type: "add_rule", rule });
 */
export async function supervisorRequest<R extends ControlRequest>(path: string, request: R, timeoutMs = CLIENT_TIMEOUT_MS): Promise<AnswerFor<R["type"]>> {
  const bytes = await framedRequest(path, codecs.request.encode(request), {
    maxRequestBytes: MAX_CONTROL_FRAME_BYTES,
    maxAnswerBytes: MAX_CONTROL_FRAME_BYTES,
    timeoutMs,
    peer: `the supervisor at ${path}`,
    what: request.type,
    noServer: (err) => {
      const code = connectErrorCode(err);
      if (code === "ENOENT" || code === "ECONNREFUSED") {
        return new StoaError("closed", `no supervisor is running with control socket ${path}: start one with stoa supervisor run (or give its --control)`, { cause: err });
      }
      return new StoaError("io", `cannot connect to the supervisor's control socket ${path}: ${code || describeError(err)}`, { cause: err });
    },
  });
  const answer = codecs.answer.decode(bytes);
  if (answer.type === "error") throw new StoaError(errorCodeFromWire(answer.error.code), answer.error.message);
  if (answer.type !== request.type) throw new StoaError("decode", `the supervisor answered "${answer.type}" to "${request.type}"; is it a compatible version?`);
  return answer as AnswerFor<R["type"]>;
}
