/**
 * Reaching what a client needs, waiting for it the way a script needs (core/wait.ts): the
 * gateway of a run dir, a metaserver, a publisher by name. Shared by `stoa pub`, `stoa sub` and
 * `stoa status`; each throws, once `waitMs` has passed, the error it would throw without waiting.
 */
import { StoaError } from "../core/errors.ts";
import type { Logger } from "../core/log.ts";
import { gatewayControlPath } from "../core/paths.ts";
import { waitFor } from "../core/wait.ts";
import { controlRequest } from "../gateway/control.ts";
import type { ResponseFor } from "../gateway/protocol.ts";
import type { MetaClient } from "../meta/client.ts";
import { type Health, MetaApiError, type PublisherInfo } from "../meta/protocol.ts";

/** Nothing answers yet: no socket, a refused connection, a server that has not answered in time. */
function notThereYet(err: unknown): boolean {
  return err instanceof StoaError && (err.code === "closed" || err.code === "io" || err.code === "timeout");
}

/** The gateway's `info`, once its control socket answers. */
export function waitForGateway(runDir: string, waitMs: number, log: Logger): Promise<ResponseFor<"info">> {
  return waitFor(() => controlRequest(runDir, { type: "info" }), {
    what: `the gateway (control socket ${gatewayControlPath(runDir)})`,
    waitMs,
    log,
    retryable: (err) => err instanceof StoaError && err.code === "closed",
  });
}

/**
 * Once the metaserver answers: its health, or null when it answered with an HTTP error (a read
 * token it wants, say) — an answer all the same, which the request that follows will report.
 */
export function waitForMeta(meta: MetaClient, waitMs: number, log: Logger): Promise<Health | null> {
  return waitFor(
    () =>
      meta.health().catch((err: unknown) => {
        if (err instanceof MetaApiError) return null;
        throw err;
      }),
    { what: `the metaserver at ${meta.baseUrl}`, waitMs, log, retryable: notThereYet },
  );
}

/** The publisher named `name`, once the metaserver answers and has it registered. */
export function waitForPublisher(meta: MetaClient, name: string, waitMs: number, log: Logger): Promise<PublisherInfo> {
  return waitFor(() => meta.lookup(name), {
    what: `a publisher named ${name} at ${meta.baseUrl}`,
    waitMs,
    log,
    // "closed": not registered (yet); "io"/"timeout": no metaserver (yet). A directory or a bad
    // name is "usage" and fails at once.
    retryable: (err) => notThereYet(err) && !(err instanceof MetaApiError),
  });
}
