/**
 * Typed errors for the whole of stoa.
 *
 * Every failure a user can cause or meet is a `StoaError` with a stable `code` and a message
 * that says what to do. Exit codes are mapped here and nowhere else: usage and configuration
 * errors exit 2, everything else 1.
 */

/** Stable machine-readable error codes. Add new ones here, never inline strings. */
const ERROR_CODES = [
  "usage", // bad command line: unknown command, bad flag, bad flag value
  "config", // bad config file or environment value
  "decode", // a peer sent bytes we cannot decode (CBOR, frame, HLNK, ...)
  "too_large", // a message or frame over its size limit
  "schema", // decoded fine but does not match the zod schema
  "endpoint", // unparsable endpoint string
  "in_use", // a socket path or port owned by a live process
  "io", // a system call failed
  "closed", // the peer or the resource is gone
  "timeout",
  "permission", // the process lacks a privilege or capability (e.g. CAP_NET_ADMIN)
  "not_found", // a named thing does not exist: interface, address, route
  "exists", // the thing to create is already there
  "auth", // a peer failed authentication: bad token, certificate fingerprint not the pinned one
  "internal",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** The code for one received from a peer (a control answer, say); unknown codes become "internal". */
export function errorCodeFromWire(code: string): ErrorCode {
  return ERROR_CODES.find((known) => known === code) ?? "internal";
}

export class StoaError extends Error {
  override readonly name = "StoaError";
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The process exit code for an error: 2 for usage and configuration errors, 1 for the rest. */
export function exitCodeFor(err: unknown): 1 | 2 {
  return err instanceof StoaError && (err.code === "usage" || err.code === "config") ? 2 : 1;
}

/** One line for a user: the message of a StoaError, or the message of anything else. */
export function describeError(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** The `code` a Node or Bun system error carries ("ENOENT", "EADDRINUSE", "ConnectionRefused"), or "". */
export function errnoCode(err: unknown): string {
  if (typeof err !== "object" || err === null || !("code" in err)) return "";
  const code = err.code;
  return typeof code === "string" || typeof code === "number" ? String(code) : "";
}

/**
 * The error for a listener that could not bind `where` (`host:port`): `in_use` with `inUseFix`
 * for EADDRINUSE ("the port is in use; <inUseFix>"), `io` with the system's reason otherwise.
 */
export function listenError(err: unknown, where: string, fix: { inUse: string; other?: string }): StoaError {
  if (errnoCode(err) === "EADDRINUSE") {
    return new StoaError("in_use", `cannot listen on ${where}: the port is in use; ${fix.inUse}`, { cause: err });
  }
  const other = fix.other === undefined ? "" : `; ${fix.other}`;
  return new StoaError("io", `cannot listen on ${where}: ${describeError(err)}${other}`, { cause: err });
}
