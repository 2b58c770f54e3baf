/**
 * Endpoints: the one parser and formatter for the addresses stoa listens on and dials.
 *
 * Accepted forms (the scheme is case-insensitive; the canonical form is lower case):
 * - `unix:/absolute/path`: absolute only, so every process resolves it the same way whatever
 *   its working directory; at most 107 bytes of UTF-8 (sun_path, 108 bytes, less a NUL);
 *   not ending in "/". Spaces are allowed, control characters are not.
 * - `tcp:host:port` and `tcp:[ipv6]:port`: port is decimal 0–65535 without leading zeros (0
 *   asks the kernel for a free port when listening). IPv6 must be bracketed and may carry a
 *   zone (`tcp:[fe80::1%eth0]:80`); it is written in its compressed lower-case form. Names are
 *   letters, digits, "-", "_" and ".", lower-cased; a name ending in a numeric label must be a
 *   dotted-quad IPv4 address without leading zeros (no octal or shorthand surprises).
 * - `ws://host[:port]/path?query` and `wss://...`: parsed as a WHATWG URL, so the usual URL
 *   normalization applies; default ports 80/443 are implied and dropped from the canonical
 *   form; no credentials, no #fragment (a WebSocket request cannot carry one).
 *
 * For every accepted string s: parseEndpoint(formatEndpoint(parseEndpoint(s))) equals
 * parseEndpoint(s), and formatEndpoint of a canonical string's parse gives that string back.
 */
import { Buffer } from "node:buffer";
import { StoaError } from "./errors.ts";
import { formatIPv6, parseIPv6 } from "./ipv6.ts";

/** A parsed endpoint. For "ws", `url` is the canonical URL and `path` includes the query. */
export type Endpoint =
  | { kind: "unix"; path: string }
  | { kind: "tcp"; host: string; port: number }
  | { kind: "ws"; url: string; secure: boolean; host: string; port: number; path: string };

/** Longest endpoint string we look at; real ones are far shorter, and it bounds the work. */
export const MAX_ENDPOINT_LENGTH = 4096;

/** Longest Unix socket path in bytes. sun_path is 108 bytes; Linux also takes an unterminated
 * 108-byte path, but most clients (C strncpy, Python, socat) keep room for a NUL, so 107 is
 * the longest path every client can reach. */
export const MAX_UNIX_PATH_BYTES = 107;

const FORMS =
  "Accepted forms: unix:/absolute/path, tcp:host:port, tcp:[ipv6]:port, ws://host[:port]/path, wss://host[:port]/path";

/**
 * Parses an endpoint string. Throws `StoaError` "endpoint" naming the problem and the forms
 * that are accepted.
 * @example
 * parseEndpoint("tcp:[::1]:8081"); // { kind: "tcp", host: "::1", port: 8081 }
 * parseEndpoint("wss://meta.example/v1"); // { kind: "ws", secure: true, port: 443, path: "/v1", ... }
 */
export function parseEndpoint(input: string): Endpoint {
  if (input.length > MAX_ENDPOINT_LENGTH) {
    throw invalid(input, `longer than ${MAX_ENDPOINT_LENGTH} characters`);
  }
  // C0 and C1 controls, NUL included: never part of a path or name we want to handle.
  if (/[\u0000-\u001f\u007f-\u009f]/.test(input)) throw invalid(input, "contains a control character");
  if (!input.isWellFormed()) throw invalid(input, "contains an unpaired UTF-16 surrogate");
  const colon = input.indexOf(":");
  const scheme = colon < 0 ? "" : input.slice(0, colon).toLowerCase();
  const rest = input.slice(colon + 1);
  switch (scheme) {
    case "unix":
      return parseUnix(input, rest);
    case "tcp":
      return parseTcp(input, rest);
    case "ws":
    case "wss":
      return parseWs(input, scheme === "wss", rest);
    default:
      throw invalid(input, colon < 0 ? "no scheme" : `unknown scheme "${input.slice(0, Math.min(colon, 16))}"`);
  }
}

/**
 * The canonical string for an endpoint. Throws `StoaError` "endpoint" if the value could not
 * have come from `parseEndpoint` (a hand-built endpoint with port 70000, say).
 */
export function formatEndpoint(endpoint: Endpoint): string {
  // A host or path that would move URL delimiters around could reparse as some other endpoint.
  if (endpoint.kind === "ws" && (!endpoint.path.startsWith("/") || /[/?#@\\[\]]/.test(endpoint.host))) {
    throw invalid(format(endpoint), `a WebSocket endpoint needs a path starting with "/" and a host without / ? # @ [ ]`);
  }
  return format(parseEndpoint(format(endpoint)));
}

function format(endpoint: Endpoint): string {
  switch (endpoint.kind) {
    case "unix":
      return `unix:${endpoint.path}`;
    case "tcp":
      return `tcp:${urlHost(endpoint.host)}:${endpoint.port}`;
    case "ws": {
      const port = endpoint.port === defaultPort(endpoint.secure) ? "" : `:${endpoint.port}`;
      return `${endpoint.secure ? "wss" : "ws"}://${urlHost(endpoint.host)}${port}${endpoint.path}`;
    }
  }
}

function parseUnix(input: string, path: string): Endpoint {
  if (path === "") throw invalid(input, "empty path");
  if (!path.startsWith("/")) {
    throw invalid(input, "Unix socket paths must be absolute (unix:/run/stoa/x.sock), so every process resolves them alike");
  }
  if (path.endsWith("/")) throw invalid(input, "the path names a directory; name the socket file");
  const bytes = Buffer.byteLength(path, "utf8");
  if (bytes > MAX_UNIX_PATH_BYTES) {
    throw invalid(
      input,
      `the path is ${bytes} bytes but Unix socket paths are limited to ${MAX_UNIX_PATH_BYTES} (the size of sun_path, less its NUL); use a shorter directory`,
    );
  }
  return { kind: "unix", path };
}

function parseTcp(input: string, rest: string): Endpoint {
  let host: string;
  let port: string;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) throw invalid(input, `missing "]" after the IPv6 address`);
    const after = rest.slice(close + 1);
    if (!after.startsWith(":")) throw invalid(input, `expected ":port" after "]"`);
    const address = canonicalIpv6(rest.slice(1, close));
    if (address === null) throw invalid(input, "not a valid IPv6 address between the brackets");
    host = address;
    port = after.slice(1);
  } else {
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw invalid(input, `missing ":port"`);
    const name = rest.slice(0, colon);
    if (name.includes(":")) throw invalid(input, "IPv6 addresses must be in brackets, as in tcp:[::1]:8081");
    if (name === "") throw invalid(input, "empty host (to listen on every interface use 0.0.0.0 or [::])");
    const problem = checkName(name.toLowerCase());
    if (problem !== null) throw invalid(input, problem);
    host = name.toLowerCase();
    port = rest.slice(colon + 1);
  }
  if (!/^(0|[1-9][0-9]{0,4})$/.test(port) || Number(port) > 65535) {
    throw invalid(input, "the port must be a decimal number from 0 to 65535");
  }
  return { kind: "tcp", host, port: Number(port) };
}

function parseWs(input: string, secure: boolean, rest: string): Endpoint {
  // URL would quietly trim spaces, read "\" as "/" and skip extra slashes before the host;
  // an endpoint that needs any of that is a mistake worth reporting.
  if (/[\s\\]/.test(input)) throw invalid(input, "URLs cannot contain spaces or backslashes");
  if (!rest.startsWith("//") || rest.startsWith("///") || rest.length === 2) {
    throw invalid(input, "expected a host after //");
  }
  if (input.includes("#")) throw invalid(input, "WebSocket URLs cannot have a #fragment");
  let url: URL;
  try {
    url = new URL(input);
  } catch {
    throw invalid(input, "not a valid URL");
  }
  if (url.username !== "" || url.password !== "") {
    throw invalid(input, "credentials in the URL are not supported; remove user:password@");
  }
  let host = url.hostname;
  if (host.startsWith("[")) {
    host = host.slice(1, -1);
  } else {
    if (host === "") throw invalid(input, "empty host");
    const problem = checkName(host);
    if (problem !== null) throw invalid(input, problem);
  }
  if (url.search === "") url.search = ""; // drops a lone "?", so "/p?" and "/p" are one path
  const port = url.port === "" ? defaultPort(secure) : Number(url.port);
  return { kind: "ws", url: url.href, secure, host, port, path: url.pathname + url.search };
}

function defaultPort(secure: boolean): number {
  return secure ? 443 : 80;
}

/** `host` as it goes into a URL or a `host:port`: IPv6 in brackets, anything else as is. */
export function urlHost(host: string): string {
  return host.includes(":") ? `[${host}]` : host;
}

/** Compressed lower-case form of an IPv6 address with its optional zone, or null. */
function canonicalIpv6(text: string): string | null {
  const percent = text.indexOf("%");
  const address = percent < 0 ? text : text.slice(0, percent);
  const zone = percent < 0 ? "" : text.slice(percent + 1);
  // Interface names: IFNAMSIZ is 16 bytes with the NUL.
  if (percent >= 0 && !/^[A-Za-z0-9_.-]{1,15}$/.test(zone)) return null;
  const bytes = parseIPv6(address);
  if (bytes === undefined) return null;
  return formatIPv6(bytes) + (zone === "" ? "" : `%${zone}`);
}

/** Checks a lower-case host name or IPv4 address; returns the problem, or null. */
function checkName(host: string): string | null {
  if (host.length > 253) return "host name longer than 253 characters";
  const labels = host.split(".");
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? "")) {
    const octet = /^(0|[1-9][0-9]{0,2})$/;
    const ok = labels.length === 4 && labels.every((l) => octet.test(l) && Number(l) <= 255);
    return ok ? null : `"${host.slice(0, 64)}" is not a dotted-quad IPv4 address (like 192.0.2.1)`;
  }
  for (const label of labels) {
    if (!/^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$/.test(label)) {
      return `"${host.slice(0, 64)}" is not a valid host name (letters, digits, "-", "_", dot-separated labels)`;
    }
  }
  return null;
}

function invalid(input: string, reason: string): StoaError {
  const shown = JSON.stringify(input.length > 80 ? `${input.slice(0, 80)}…` : input);
  return new StoaError("endpoint", `invalid endpoint ${shown}: ${reason}. ${FORMS}`);
}
