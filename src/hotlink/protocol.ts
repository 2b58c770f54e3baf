/**
 * The hotlink wire formats: the session protocol (what a client daemon and the relay server
 * say to each other) and the daemon's control socket are defined here; every other format
 * hotlink reads or writes is in the one file the index names.
 *
 * Index (format — what it is — where it lives):
 *   relay upgrade     `GET /v1/hotlink`, Bearer auth, 401/426/429  here ("Transport"); HTTP
 *                     answers in server.ts, `Authorization` and tokens in users.ts
 *   session messages  CBOR maps over that WebSocket, Hello…Signal  here (below)
 *   framed relay link the same messages in length-delimited frames  framed-link.ts (offer,
 *                     over TCP: offer, auth and status, close frames  auth, close, idle)
 *   relay streams     a tunnel's bytes on their own TCP connection,   relay-stream.ts
 *                     attached by sid on the framed-link port
 *   HLNK frames       IPC sockets and direct connections           hlnk.ts
 *   direct hello      "HLD1 <sid> <tok>\n", sender → receiver      direct-wire.ts (direct.ts uses it)
 *   direct acks       u64 seqs, receiver → sender                  direct-wire.ts
 *   direct TLS        per-session self-signed X.509 (DER), pinned  cert.ts
 *   control socket    frames of CBOR requests and answers          here ("Control socket");
 *                     at `<run_dir>/hotlink/<user>.sock`           control.ts serves and asks it
 *   channel specs     --tunnel/--ipc forms, also in control specs  specs.ts
 *   users file        JSON, hashed tokens; user names              users.ts
 *   ACL file, paths   JSON rules; the path syntax                  acl.ts
 *   telemetry file    JSON, rewritten every second                 telemetry.ts
 *   marker files      `stream.tcp` JSON under --watch DIR          watch.ts
 *
 * Transport. One connection per client daemon: a WebSocket, or the framed TCP link a relay
 * with `--link-listen` offers (framed-link.ts: the same messages and rules, one per frame, and
 * the same token check and caps before it opens). The WebSocket: `GET /v1/hotlink` (`HOTLINK_WS_PATH`), with
 * `Authorization: Bearer <user>:<token>` (users.ts). A wrong or missing token gets 401 before
 * the upgrade; a user already holding `MAX_CONNECTIONS_PER_USER` (64) connections gets 429.
 * The client sends Hello within `HELLO_TIMEOUT_MS` (5 s) of the upgrade, or the server closes
 * the connection (Error "timeout", WebSocket 1008). Every message is one binary WebSocket
 * frame holding one CBOR map (core/codec.ts data model) whose field `t` is its type; text
 * frames are a protocol error. Unknown fields are ignored (a newer peer may add optional
 * ones); an unknown `t` is a schema error.
 *
 * Message types (the seed's numbers 9–14; 1–5 are new, 6–8 unused):
 *   1  Hello   {v, agt?}                 client → server, first message. `v`: the version the
 *                                        client speaks; `agt`: its software, for logs.
 *   2  Welcome {v, usr, mmb, mpb, ice?, stm?} server → client, reply to Hello. `usr`: who the
 *                                        token authenticated; `mmb`: largest message the server
 *                                        accepts; `mpb`: largest Data `pay` that fits in it;
 *                                        `stm`: true on a framed link whose relay pairs relay
 *                                        streams (relay-stream.ts).
 *   3  Ping    {n}                       either way; the other side answers at once with
 *   4  Pong    {n}                       the same `n` (RTT, liveness of the relay path).
 *   5  Error   {code, msg, sid?}         either way: the peer did something wrong (below).
 *   9  Open    {sid, pth, to?, frm?, stm?} sender opens session `sid` for path `pth`, for
 *                                        user `to` only if given; `stm`: its bytes would go
 *                                        on a relay stream (relay-stream.ts; the server
 *                                        forwards it to framed links only).
 *  10  Accept  {sid, frm?, stm?, stk?}   a receiver takes the session; with `stm` (only for an
 *                                        Open with it) on a relay stream, `stk` the key of its
 *                                        attach (not forwarded): the session's first Accept
 *                                        decides, and a stream has that one receiver.
 *  11  Reject  {sid, rsn}                a receiver (or the server) refuses it.
 *  12  Data    {sid, seq, pth?, etg?, pay} one payload; `pth`/`etg` as in HLNK frames.
 *  13  Close   {sid, rsn?, lst?}         the session (or one receiver's part in it) ends; from the
 *                                        sender, `lst` is the seq of its last Data (0: none).
 *  14  Signal  {sid, knd, ...}           direct-path negotiation, relayed by the server.
 * `frm` is the user a message came from: the server sets it on every Open, Accept and Signal
 * it forwards, overwriting whatever the client put there.
 *
 * Fields. `sid`: 1–`MAX_SID_LENGTH` (64) of [A-Za-z0-9_-], chosen by the opener; make it unguessable and unique
 * (`crypto.randomUUID()`), since the server refuses an Open whose sid is in use. `pth`: a
 * hotlink path (acl.ts: ≤ 4096 UTF-8 bytes, segments joined by "/", no empty, "." or ".."
 * segment, no control characters); its first segment is the owning user. User names: users.ts.
 * `seq`: 1 for a session's first Data, +1 per Data frame, per session; a positive integer up to
 * 2^53-1, so it is a JS number (a u64 in an 8-byte CBOR integer is accepted too and becomes a
 * number). `etg`: ≤ 128 UTF-8 bytes. `pay`: a byte string; decoded payloads are fresh copies.
 * `rsn`, `msg`, `err`: human-readable, ≤ 1024 characters.
 *
 * Session flow (relay):
 *   client                      server                          receiver(s)
 *   Hello{v} ─────────────────>  (token checked at upgrade)
 *            <───────────────── Welcome{v, usr, mmb, mpb}
 *   Open{sid, pth, to?} ──────>  needs write on pth ─── Open{…, frm} ──> every connection of
 *                                                                        users with read on pth
 *                                                                        (only `to` if given),
 *                                                                        never the sender's user
 *            <── Accept{sid, frm} ──── needs read on pth <───── Accept{sid}
 *   Data{sid, seq=1..} ───────>  only from the session's sender ── Data ──> accepted receivers
 *                                                                        still allowed to read
 *   Close{sid} ───────────────>  session ends for everyone ─── Close ───> receivers
 * - No receiver to offer the Open to, no write access, a sid in use, or a session limit
 *   reached: the server answers Reject {sid, rsn} at once ("no receiver", "forbidden", "sid in
 *   use", "too many sessions: …"). A connection has at most `MAX_SESSIONS_PER_CONNECTION` (4,096)
 *   sessions open as sender, a user at most `MAX_SESSIONS_PER_USER` (8,192) across all of its
 *   connections. A receiver that
 *   refuses sends Reject; when no receiver is left pending or accepted, the sender gets the
 *   Reject and the session ends.
 * - The sender sends Data only after an Accept. Data goes to the receivers accepted when it
 *   arrives, so with one receiver (a tunnel names it in `to`) every seq from 1 reaches it. The
 *   server may relay a session's Data out of order: receivers reorder by seq (reorder.ts).
 * - Close from the sender ends the session for everyone. Without `rsn` it is an orderly end
 *   (a tunnel's FIN): it carries `lst`, and a receiver delivers every seq up to `lst` first —
 *   Close and the last Data may travel different paths (relay, direct), so Close can overtake
 *   them. With `rsn` it is an abort: the receiver stops at once. The server forwards a sender's
 *   Close as it came. Close from a receiver removes that
 *   receiver; when none is left, the session ends and the sender gets Close {sid, rsn}.
 * - A connection that goes away closes its sessions: Close {sid, rsn: "peer gone"} to the other
 *   side. The server holds no session whose connections are all gone.
 * - No silent drops. A slow receiver applies backpressure: the server stops reading the
 *   sender's connection while the receiver's send buffer is over its limit, and closes a
 *   receiver still stuck past a deadline with Close {sid, rsn} to both sides.
 *
 * Errors (Error.code, snake_case, ≤ 32 chars; a receiver must accept codes it does not know):
 *   version          Hello.v unsupported; the server closes the connection after the Error.
 *   decode, schema,  a malformed or oversize (over `mmb`) message; the connection is closed
 *   too_large        (WebSocket 1008, or 1009 for size) and its sessions with it.
 *   protocol         a valid message at the wrong time (anything before Hello, a second Hello).
 *   timeout          no Hello within `HELLO_TIMEOUT_MS` of the upgrade; the connection is closed
 *                    (WebSocket 1008).
 *   not_sender       Data or Close-as-sender from a connection that is not the session's sender.
 *   unknown_session  a message for a sid the server does not know (or no longer knows).
 *   forbidden        access lost in the middle of a session (ACL reloaded).
 *   internal         a bug on the side that sends it.
 *
 * Direct upgrade (Signal, `knd`), all relayed by the server like Data: a receiver's Signal goes
 * to the session's sender; the sender's goes to receiver `to`, or to all accepted receivers.
 *   direct_offer  {adr, tok, fpr}  receiver → sender, after it accepted: `adr` lists 1–16
 *                 (`MAX_CANDIDATES`) candidates "host:port" (IPv6 bracketed, each with its
 *                 port), best first, where it
 *                 listens for this session over TLS with a per-session self-signed
 *                 certificate; `fpr` is that certificate's SHA-256 fingerprint, 64 lowercase
 *                 hex digits (Node's `cert.fingerprint256` without ":" and lower-cased);
 *                 `tok` a one-time token (`MIN_DIRECT_TOKEN_LENGTH`–`MAX_DIRECT_TOKEN_LENGTH`,
 *                 16–128, of [A-Za-z0-9_-]). The addresses are the
 *                 receiver's choice, so the sender bounds what it dials for them: only a
 *                 session it opened and that is open with this one receiver (the one that
 *                 accepted), only the first offer of the session, and only its first
 *                 `MAX_DIALED_CANDIDATES` (4) candidates, stopping once the session ends. A
 *                 receiver therefore offers at most 4. Every other offer gets direct_answer
 *                 with `err` and dials nothing.
 *   direct_answer {err?}           sender → receiver: it dialled the candidates (a short
 *                 timeout each), verified the fingerprint (never "accept any certificate"),
 *                 presented the token ("HLD1 <sid> <tok>\n", direct-wire.ts), and now sends
 *                 Data as HLNK frames on that connection, acknowledged by the receiver (also
 *                 direct-wire.ts); with `err`, it failed and the session stays on the relay.
 * On any failure the session stays on, or returns to, the relay; seq numbering is shared by
 * both paths, so nothing is lost or duplicated that the reorder buffer cannot fix.
 * ICE, the next rungs (ice.ts): when the TLS offer failed (direct_answer with `err`), or the
 * receiver makes none (`--direct ice`), a receiver with ICE on offers a WebRTC data channel. The
 * sender takes it under the rules of direct_offer (a session it opened, open with this one
 * receiver, the first sdp_offer) and otherwise answers webrtc_error. `tok` carries JSON
 * (≤ 16 Ki characters):
 *   sdp_offer     {tok}  receiver → sender: {type: "offer", sdp}
 *   sdp_answer    {tok}  sender → receiver: {type: "answer", sdp}
 *   ice_candidate {tok}  both ways, trickled: {candidate, sdpMid, sdpMLineIndex} (RTCIceCandidateInit)
 *   webrtc_error  {err}  either way: this side gave up on ICE; the session stays on the relay.
 * The channel (negotiated, id 0, ordered, reliable) carries HLNK frames sender → receiver,
 * packed into messages of up to 255 KiB (ice.ts: a message may hold several frames or part of
 * one; the receiver reads a stream), and the receiver's acknowledgements (direct-wire.ts, 8 bytes
 * each) back, exactly as on a TLS direct connection; a failure falls back to the relay the same way.
 *
 * Limits: a message is at most `MAX_MESSAGE_BYTES` (8 MiB of payload + `MAX_ENVELOPE_BYTES`)
 * unless both ends agree otherwise (Welcome.mmb); decoders check it before decoding. An HLNK
 * frame larger than Welcome.mpb must be split into several Data messages by the sending daemon.
 * What one user can make the server hold is bounded: `MAX_CONNECTIONS_PER_USER` connections
 * (counted from the upgrade, Hello or not), each for at most `HELLO_TIMEOUT_MS` before Hello,
 * `MAX_SESSIONS_PER_CONNECTION` sessions per connection and `MAX_SESSIONS_PER_USER` in all; and
 * what one peer can make another daemon dial: `MAX_DIALED_CANDIDATES` addresses per session.
 *
 * Control socket: how `stoa hotlink tunnel|ipc|ls|close` (and `stoa status`) talk to a running
 * daemon over its Unix socket (control.ts). core/frame.ts frames (4-byte big-endian length),
 * each holding one CBOR message (core/codec.ts, checked by the zod schemas at the end of this
 * file). The client sends requests; each is answered, in order, by one message:
 *   {type: "tunnel", spec}    → {ok: true, type: "tunnel", tunnel}  spec as --tunnel (specs.ts):
 *                                CHANNEL=HOST:PORT[@PEER]; `tunnel.port` is the bound port
 *   {type: "ipc", spec}       → {ok: true, type: "ipc", ipc}        spec as --ipc: CHANNEL=unix:PATH
 *   {type: "ls"}              → {ok: true, type: "ls", status}      the daemon's status
 *                                (`DaemonStatus`): user, server, connected, tunnels, ipc,
 *                                sessions, counters {relay, direct, ice, turn, latency_us},
 *                                rungs, ice_servers, link
 *   {type: "close", channel}  → {ok: true, type: "close", channel, kind: "tunnel" | "ipc"}
 * or {ok: false, code, message}, code a StoaError code: "usage" (bad spec), "exists",
 * "in_use" (port or socket taken), "not_found" (close of an unknown channel), "too_large",
 * "decode"/"schema" (not a request), "internal". A client takes a code it does not know (a
 * newer daemon's) as it comes; fields it does not know are dropped.
 * Limits (core/framed-socket.ts's, the same for every control socket): requests ≤
 * `MAX_CONTROL_REQUEST_BYTES`, answers ≤ `MAX_CONTROL_ANSWER_BYTES`, at most
 * `MAX_CONTROL_PIPELINED` unanswered requests per connection and `MAX_CONTROL_CONNECTIONS`
 * connections; idle connections close after `CONTROL_IDLE_TIMEOUT_MS`; a daemon serves at most
 * `MAX_CHANNELS` tunnels and channels. A request that does not decode is answered with an error and the connection stays usable; a
 * frame header over the limit is answered with an error and the connection closed (no frame
 * boundaries are left to trust).
 */
import { Buffer } from "node:buffer";
import { z } from "zod";
import { copyInto, copyRange, putU32BE, uninitializedBytes } from "../core/bytes.ts";
import { type CodecOptions, type DecodeResult, createCodec, encode, safeDecodeMessage } from "../core/codec.ts";
import { parseEndpoint } from "../core/endpoint.ts";
import { StoaError, describeError } from "../core/errors.ts";
import { FRAME_HEADER_BYTES, writeFrameHeader } from "../core/frame.ts";
import { MAX_CONTROL_ANSWER_BYTES, MAX_CONTROL_REQUEST_BYTES } from "../core/framed-socket.ts";
import { MAX_PATH_BYTES, pathProblem } from "./acl.ts";
import { MAX_HLNK_ETAG_BYTES } from "./hlnk.ts";
import { MAX_ICE_SERVER_LENGTH, MAX_ICE_SERVERS } from "./ice-servers.ts";
import { UserName } from "./users.ts";

/** Protocol version in Hello and Welcome; changes only incompatibly. */
export const PROTOCOL_VERSION = 1;

/** The WebSocket request path of the relay server. */
export const HOTLINK_WS_PATH = "/v1/hotlink";

/** Largest Data payload by default (8 MiB, the spec's message limit): big enough that a bulk
 * transfer is a few messages, small enough that one message does not stall a connection. */
export const MAX_DATA_PAYLOAD_BYTES = 8 * 1024 * 1024;

/** What a message may hold besides a payload: a Data envelope is under 4.5 KiB (sid 64,
 * path 4096, etag 128, keys and headers), a Signal under 64 KiB (token 16 Ki characters of
 * at most 3 UTF-8 bytes each, 16 candidates, reason). */
export const MAX_ENVELOPE_BYTES = 64 * 1024;

/** Default largest message, in encoded bytes. */
export const MAX_MESSAGE_BYTES = MAX_DATA_PAYLOAD_BYTES + MAX_ENVELOPE_BYTES;

/** Longest session id: a `crypto.randomUUID()` (36) fits with room. */
export const MAX_SID_LENGTH = 64;

/** Shortest and longest one-time token of a direct offer (`tok`); a receiver sends 32
 * characters (24 random bytes in base64url, direct.ts). */
export const MIN_DIRECT_TOKEN_LENGTH = 16;
export const MAX_DIRECT_TOKEN_LENGTH = 128;

/** Longest direct-path candidate, "host:port": a DNS name (at most 253) with its port fits. */
export const MAX_CANDIDATE_LENGTH = 300;

/** Longest Hello `agt` (the client's software, for logs). */
export const MAX_AGENT_LENGTH = 128;

/** Longest Error `code`, snake_case. */
export const MAX_ERROR_CODE_LENGTH = 32;

/** Longest `rsn`, `msg` and `err`, in characters. */
export const MAX_REASON_LENGTH = 1024;

/** Most direct-path candidates in one offer on the wire (a peer that sends more breaks the schema). */
export const MAX_CANDIDATES = 16;

/** Most candidates of one offer a sender dials, the first ones: an offer's addresses are the
 * receiver's choice, so this bounds the connections one peer can make another daemon attempt
 * (at most this many per session, one offer per session). A receiver offers at most this many,
 * best first. */
export const MAX_DIALED_CANDIDATES = 4;

/** How long a client has, from the upgrade, to send Hello; then the server closes the
 * connection (Error "timeout", WebSocket 1008). A daemon sends Hello as soon as it is open. */
export const HELLO_TIMEOUT_MS = 5_000;

/** Connections one user may hold on the relay at once, Hello or not: a daemon holds one, so
 * this leaves room for many hosts per user; past it the upgrade is refused with 429. */
export const MAX_CONNECTIONS_PER_USER = 64;

/** Sessions one user may have open as sender, across all of its connections: two daemons at
 * their per-connection limit (`MAX_SESSIONS_PER_CONNECTION`); bounds what one user can make the
 * server hold, however many connections it opens. */
export const MAX_SESSIONS_PER_USER = 8192;

/** Sessions one connection may have open as sender: far beyond a daemon's tunnels and sockets. */
export const MAX_SESSIONS_PER_CONNECTION = 4096;

/** Longest `tok` of the reserved WebRTC signals, in characters (an SDP is a few KiB). */
const MAX_SIGNAL_TOKEN_LENGTH = 16 * 1024;

/** Message type numbers (`t`). */
export const MessageType = {
  Hello: 1,
  Welcome: 2,
  Ping: 3,
  Pong: 4,
  Error: 5,
  Open: 9,
  Accept: 10,
  Reject: 11,
  Data: 12,
  Close: 13,
  Signal: 14,
} as const;

/** A session id: 1–`MAX_SID_LENGTH` of [A-Za-z0-9_-]. */
const SID_RE = new RegExp(`^[A-Za-z0-9_-]{1,${MAX_SID_LENGTH}}$`);
const SessionId = z.string().regex(SID_RE, `a sid is 1–${MAX_SID_LENGTH} of A-Z a-z 0-9 _ -`);

/** A hotlink path (see acl.ts for the rules). */
const HotlinkPath = z.string().superRefine((path, ctx) => {
  const problem = pathProblem(path);
  if (problem !== null) ctx.addIssue({ code: "custom", message: problem });
});

const Etag = z.string().superRefine((etag, ctx) => {
  if (!etag.isWellFormed()) ctx.addIssue({ code: "custom", message: "an etag must be well-formed Unicode" });
  else if (etag.length * 3 > MAX_HLNK_ETAG_BYTES && Buffer.byteLength(etag, "utf8") > MAX_HLNK_ETAG_BYTES) {
    ctx.addIssue({ code: "custom", message: `an etag is at most ${MAX_HLNK_ETAG_BYTES} bytes of UTF-8` });
  }
});

const Reason = z.string().max(MAX_REASON_LENGTH);
const Count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

/** seq: a number, or a bigint from a peer whose CBOR encoder wrote an 8-byte integer. */
const Seq = z.union([
  z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
  z.bigint().min(1n).max(BigInt(Number.MAX_SAFE_INTEGER)).transform(Number),
]);

/** "host:port" as `tcp:` endpoints write it (core/endpoint.ts), with a port to dial. */
const Candidate = z
  .string()
  .max(MAX_CANDIDATE_LENGTH)
  .superRefine((candidate, ctx) => {
    let port = 0;
    try {
      const endpoint = parseEndpoint(`tcp:${candidate}`);
      if (endpoint.kind === "tcp") port = endpoint.port;
    } catch (err) {
      ctx.addIssue({ code: "custom", message: describeError(err) });
      return;
    }
    if (port === 0) ctx.addIssue({ code: "custom", message: "a candidate needs a port from 1 to 65535" });
  });

const Hello = z.object({
  t: z.literal(MessageType.Hello),
  v: z.number().int().min(1).max(0xffff),
  agt: z.string().max(MAX_AGENT_LENGTH).optional(),
});

const Welcome = z.object({
  t: z.literal(MessageType.Welcome),
  v: z.number().int().min(1).max(0xffff),
  usr: UserName,
  mmb: z.number().int().min(1024).max(0xffff_ffff),
  mpb: z.number().int().min(0).max(0xffff_ffff),
  /** The server's ICE servers (ice-servers.ts form), for daemons not given their own. */
  ice: z.string().max(MAX_ICE_SERVERS * (MAX_ICE_SERVER_LENGTH + 1)).optional(),
  /** The server pairs relay streams on this (framed) link (relay-stream.ts). */
  stm: z.boolean().optional(),
});

const Ping = z.object({ t: z.literal(MessageType.Ping), n: Count });
const Pong = z.object({ t: z.literal(MessageType.Pong), n: Count });

const ErrorMessage = z.object({
  t: z.literal(MessageType.Error),
  code: z
    .string()
    .regex(new RegExp(`^[a-z][a-z0-9_]{0,${MAX_ERROR_CODE_LENGTH - 1}}$`), `an error code is snake_case, at most ${MAX_ERROR_CODE_LENGTH} characters`),
  msg: Reason,
  sid: SessionId.optional(),
});

const Open = z.object({
  t: z.literal(MessageType.Open),
  sid: SessionId,
  pth: HotlinkPath,
  to: UserName.optional(),
  frm: UserName.optional(),
  /** The sender would carry the session's bytes on a relay stream (relay-stream.ts). */
  stm: z.boolean().optional(),
});

const Accept = z.object({
  t: z.literal(MessageType.Accept),
  sid: SessionId,
  frm: UserName.optional(),
  /** The receiver takes the session's bytes on a relay stream: no Data follows (relay-stream.ts). */
  stm: z.boolean().optional(),
  /** With `stm`, from the receiver: the key its attach carries (the server does not forward it). */
  stk: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/, "a stream key is 16–64 of A-Z a-z 0-9 _ -").optional(),
});

const Reject = z.object({ t: z.literal(MessageType.Reject), sid: SessionId, rsn: Reason.min(1) });

const Data = z.object({
  t: z.literal(MessageType.Data),
  sid: SessionId,
  seq: Seq,
  pth: HotlinkPath.optional(),
  etg: Etag.optional(),
  pay: z.custom<Uint8Array>((value) => value instanceof Uint8Array, "pay must be a byte string"),
});

const Close = z.object({ t: z.literal(MessageType.Close), sid: SessionId, rsn: Reason.optional(), lst: Count.optional() });

const signal = {
  t: z.literal(MessageType.Signal),
  sid: SessionId,
  to: UserName.optional(),
  frm: UserName.optional(),
};

const Signal = z.discriminatedUnion("knd", [
  z.object({
    ...signal,
    knd: z.literal("direct_offer"),
    adr: z.array(Candidate).min(1).max(MAX_CANDIDATES),
    tok: z
      .string()
      .regex(
        new RegExp(`^[A-Za-z0-9_-]{${MIN_DIRECT_TOKEN_LENGTH},${MAX_DIRECT_TOKEN_LENGTH}}$`),
        `a direct token is ${MIN_DIRECT_TOKEN_LENGTH}–${MAX_DIRECT_TOKEN_LENGTH} of A-Z a-z 0-9 _ -`,
      ),
    fpr: z.string().regex(/^[0-9a-f]{64}$/, "a fingerprint is 64 lowercase hex digits (SHA-256)"),
  }),
  z.object({ ...signal, knd: z.literal("direct_answer"), err: Reason.optional() }),
  z.object({
    ...signal,
    knd: z.enum(["sdp_offer", "sdp_answer", "ice_candidate", "webrtc_error"]),
    tok: z.string().max(MAX_SIGNAL_TOKEN_LENGTH).optional(),
    err: Reason.optional(),
  }),
]);

/** Every hotlink message, by `t`. */
export const HotlinkMessage = z.discriminatedUnion("t", [
  Hello,
  Welcome,
  Ping,
  Pong,
  ErrorMessage,
  Open,
  Accept,
  Reject,
  Data,
  Close,
  Signal,
]);

/** A decoded message. */
export type HotlinkMessage = z.output<typeof HotlinkMessage>;
/** A message to encode (`seq` may be a bigint). */
export type HotlinkMessageInput = z.input<typeof HotlinkMessage>;

export type WelcomeMessage = z.output<typeof Welcome>;
type ErrorMessage = z.output<typeof ErrorMessage>;
export type OpenMessage = z.output<typeof Open>;
export type AcceptMessage = z.output<typeof Accept>;
export type RejectMessage = z.output<typeof Reject>;
export type DataMessage = z.output<typeof Data>;
export type CloseMessage = z.output<typeof Close>;
export type SignalMessage = z.output<typeof Signal>;

const defaultCodec = createCodec(HotlinkMessage, { maxBytes: MAX_MESSAGE_BYTES });

/**
 * Validates and encodes one message. Data is written straight into its one output buffer, so
 * its payload is copied once. Throws `StoaError` "schema" for an invalid message and
 * "too_large" over `maxBytes` (default `MAX_MESSAGE_BYTES`): the peer would refuse either.
 * @example
 * ws.send(encodeMessage({ t: MessageType.Data, sid, seq: next++, pay: chunk }));
 */
export function encodeMessage(message: HotlinkMessageInput, options: CodecOptions = {}): Uint8Array {
  const parsed = HotlinkMessage.safeParse(message);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue === undefined || issue.path.length === 0 ? "(message)" : issue.path.map(String).join(".");
    throw new StoaError("schema", `invalid hotlink message: ${where}: ${issue?.message ?? "invalid"}`, { cause: parsed.error });
  }
  const value = parsed.data;
  if (value.t === MessageType.Data) return encodeData(value, options.maxBytes ?? MAX_MESSAGE_BYTES);
  return options.maxBytes === undefined ? defaultCodec.encode(value) : encode(value, options);
}

/**
 * Decodes one message from a peer: size limit first (default `MAX_MESSAGE_BYTES`), then CBOR,
 * then the schema. Throws `StoaError` "too_large", "decode" or "schema", nothing else.
 * @example
 * const msg = parseMessage(data);
 * if (msg.t === MessageType.Data) reorder.push(msg.seq, msg.pay);
 */
export function parseMessage(bytes: Uint8Array | ArrayBuffer, options: CodecOptions = {}): HotlinkMessage {
  const result = safeParseMessage(bytes, options);
  if (!result.ok) throw result.error;
  return result.value;
}

/** Like `parseMessage`, but returns the error instead of throwing; never throws on any bytes. */
export function safeParseMessage(bytes: Uint8Array | ArrayBuffer, options: CodecOptions = {}): DecodeResult<HotlinkMessage> {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (options.maxBytes === undefined) return defaultCodec.safeDecode(view);
  return safeDecodeMessage(view, HotlinkMessage, options);
}

/**
 * A Data whose payload is a range of a read it came in — a frame of the framed relay link on
 * the receiving daemon, an application's HLNK frame on the sending one (each the whole read
 * when messages come one at a time): a view of it is made only if `pay` is read. Whoever
 * copies the payload (the encoder, `encodeData`; an IPC channel framing it for its
 * applications) copies the range (core/bytes.ts `copyRange`): no view of the read is made on
 * the way, which would give it an ArrayBuffer of its own (~0.6 µs here, and garbage). On the
 * receiving daemon it is its own sessions.ts `Delivery` too.
 */
export class InPlaceData {
  readonly t = MessageType.Data;
  readonly parts = undefined;
  #view: Uint8Array | null = null;

  constructor(
    readonly sid: string,
    readonly seq: number,
    readonly pth: string | undefined,
    readonly etg: string | undefined,
    readonly src: Uint8Array,
    readonly srcAt: number,
    readonly length: number,
  ) {}

  get byteLength(): number {
    return this.length;
  }

  get pay(): Uint8Array {
    this.#view ??= this.src.subarray(this.srcAt, this.srcAt + this.length);
    return this.#view;
  }
}

/** A Data's payload length, without making a view of an in-place one. */
export function payloadLength(message: DataMessage): number {
  return message instanceof InPlaceData ? message.length : message.pay.byteLength;
}

/**
 * Encodes a Data message the caller built from values it already checked (its own sid and seq,
 * a declared channel's path, an etag from a decoded HLNK frame): `encodeMessage` without the
 * schema pass, for the sending hot path. Throws "too_large" over `maxBytes`. `framed`: the
 * result is the whole length-delimited frame — its 4-byte header, then the message — for the
 * framed relay link (framed-link.ts `RelaySocket.sendFrame`).
 */
export function encodeDataMessage(message: DataMessage, maxBytes = MAX_MESSAGE_BYTES, scratch?: EncodeScratch, framed = false): Uint8Array {
  return encodeData(message, maxBytes, scratch, framed ? FRAME_HEADER_BYTES : 0);
}

/**
 * The framed form of `encodeDataMessage` (`framed` true) up to where its payload begins: the
 * frame header (whose length counts the payload) and every field, into `scratch`. Written with
 * the payload right after it, it is the same frame, without the payload copied into it — for a
 * large payload, which costs more to copy than a second write.
 */
export function encodeDataHead(message: DataMessage, maxBytes: number, scratch: EncodeScratch): Uint8Array {
  return encodeData(message, maxBytes, scratch, FRAME_HEADER_BYTES, true);
}

/**
 * A buffer `encodeDataMessage` may write into instead of allocating one per message; it grows
 * to the largest message seen. The result is then a view of it, valid until the next encode
 * with the same scratch: only for a consumer that copies at once (a WebSocket's send()).
 */
export interface EncodeScratch {
  buffer: Uint8Array;
}

/**
 * Data in CBOR written by hand: cbor-x would encode the payload into its own buffer and the
 * codec would copy it out again. The same data model as the codec (text keys, shortest
 * lengths; a seq over 2^32-1 as an 8-byte integer, which the schema accepts back).
 */
function encodeData(message: DataMessage, maxBytes: number, scratch?: EncodeScratch, room = 0, headOnly = false): Uint8Array {
  const sidLen = message.sid.length; // ASCII, by the schema
  const pthLen = message.pth === undefined ? -1 : Buffer.byteLength(message.pth, "utf8");
  const etgLen = message.etg === undefined ? -1 : Buffer.byteLength(message.etg, "utf8");
  const payLen = payloadLength(message);
  const entries = 4 + (pthLen >= 0 ? 1 : 0) + (etgLen >= 0 ? 1 : 0);
  const size =
    1 +
    (2 + 1) +
    (4 + headSize(sidLen) + sidLen) +
    (4 + headSize(message.seq)) +
    (pthLen >= 0 ? 4 + headSize(pthLen) + pthLen : 0) +
    (etgLen >= 0 ? 4 + headSize(etgLen) + etgLen : 0) +
    (4 + headSize(payLen) + payLen);
  if (size > maxBytes) {
    throw new StoaError(
      "too_large",
      `message is ${size} bytes, over the ${maxBytes}-byte limit; send at most ${Math.max(0, maxBytes - MAX_ENVELOPE_BYTES)} payload bytes per Data message`,
    );
  }
  // Every byte is written below (the size is exact), so no zero fill: that memset was a tenth
  // of a relay sender's CPU time.
  const written = headOnly ? room + size - payLen : room + size;
  let out: Uint8Array;
  if (scratch !== undefined && scratch.buffer.byteLength >= written) {
    out = scratch.buffer;
  } else {
    out = uninitializedBytes(written);
    if (scratch !== undefined) scratch.buffer = out;
  }
  if (room !== 0) writeFrameHeader(out, 0, size);
  // Written at offsets into `out` by module-level helpers: no closures, no views per message.
  let at = writeHead(out, room, MAJOR_MAP, entries);
  at = writeKey(out, at, "t");
  at = writeHead(out, at, MAJOR_UINT, MessageType.Data);
  at = writeKey(out, at, "sid");
  at = writeHead(out, at, MAJOR_TEXT, sidLen);
  for (let i = 0; i < sidLen; i++) out[at++] = message.sid.charCodeAt(i);
  at = writeKey(out, at, "seq");
  at = writeHead(out, at, MAJOR_UINT, message.seq);
  if (message.pth !== undefined) {
    at = writeKey(out, at, "pth");
    at = writeText(out, at, message.pth, pthLen);
  }
  if (message.etg !== undefined) {
    at = writeKey(out, at, "etg");
    at = writeText(out, at, message.etg, etgLen);
  }
  at = writeKey(out, at, "pay");
  at = writeHead(out, at, MAJOR_BYTES, payLen);
  if (headOnly) {
    if (at !== written) throw new Error(`encodeData: wrote a head of ${at} of ${written} bytes`); // a bug, never input
    return out.byteLength === written ? out : out.subarray(0, written);
  }
  if (message instanceof InPlaceData) copyRange(out, at, message.src, message.srcAt, message.srcAt + payLen);
  else copyInto(out, at, message.pay);
  if (at + payLen !== room + size) throw new Error(`encodeData: wrote ${at + payLen - room} of ${size} bytes`); // a bug, never input
  // With room, the result starts at the frame header: the framed link writes it as it is.
  return out.byteLength === room + size ? out : out.subarray(0, room + size);
}

/** An ASCII key at `at`; returns the offset after it. */
function writeKey(out: Uint8Array, at: number, name: string): number {
  let i = writeHead(out, at, MAJOR_TEXT, name.length);
  for (let k = 0; k < name.length; k++) out[i++] = name.charCodeAt(k);
  return i;
}

/** A text of `length` UTF-8 bytes at `at`; returns the offset after it. */
function writeText(out: Uint8Array, at: number, value: string, length: number): number {
  const i = writeHead(out, at, MAJOR_TEXT, length);
  let ascii = true;
  for (let k = 0; k < value.length && ascii; k++) if (value.charCodeAt(k) > 0x7f) ascii = false;
  if (ascii && value.length === length) {
    for (let k = 0; k < length; k++) out[i + k] = value.charCodeAt(k);
  } else {
    encoder.encodeInto(value, out.subarray(i, i + length));
  }
  return i + length;
}

const encoder = new TextEncoder();
const MAJOR_UINT = 0;
const MAJOR_BYTES = 2;
const MAJOR_TEXT = 3;
const MAJOR_MAP = 5;

/** Bytes of a CBOR head carrying `value` in its shortest form. */
function headSize(value: number): number {
  if (value < 24) return 1;
  if (value < 0x100) return 2;
  if (value < 0x1_0000) return 3;
  if (value < 0x1_0000_0000) return 5;
  return 9;
}

function writeHead(out: Uint8Array, at: number, major: number, value: number): number {
  const type = major << 5;
  if (value < 24) {
    out[at] = type | value;
    return at + 1;
  }
  if (value < 0x100) {
    out[at] = type | 24;
    out[at + 1] = value;
    return at + 2;
  }
  if (value < 0x1_0000) {
    out[at] = type | 25;
    out[at + 1] = value >>> 8;
    out[at + 2] = value & 0xff;
    return at + 3;
  }
  if (value < 0x1_0000_0000) {
    out[at] = type | 26;
    putU32BE(out, at + 1, value);
    return at + 5;
  }
  out[at] = type | 27;
  putU32BE(out, at + 1, Math.floor(value / 0x1_0000_0000));
  putU32BE(out, at + 5, value >>> 0);
  return at + 9;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** `pay` of a Data parsed without its payload (`parseDataFast` with `withPay` false). */
const NO_PAY = new Uint8Array(0);
/** The last sid and path `parseDataFast` decoded and checked: a session's Data carries the same ones. */
let lastGoodSid = "";
let lastGoodPath = "";

/** Where `parseDataFast`'s readers are in its buffer (module state, not closures: no allocation per message). */
let cursor = 0;

/**
 * Where the payload of the Data `parseDataFast` last returned lies in the bytes it was given
 * (`at`, `length`; with `total`, `length` is the whole payload's, past the end of those bytes):
 * for a reader that copies it from there instead of taking `pay` (with `withPay` false, empty).
 */
export const lastPayload = { at: 0, length: 0 };

/** A head of `major` at the cursor: its value, or -1 for anything but a definite, shortest head. */
function fastHead(bytes: Uint8Array, n: number, major: number): number {
  const at = cursor;
  const ib = bytes[at];
  if (ib === undefined || ib >> 5 !== major) return -1;
  const ai = ib & 0x1f;
  if (ai < 24) {
    cursor = at + 1;
    return ai;
  }
  if (ai === 24 && at + 1 < n) {
    const v = bytes[at + 1] ?? 0;
    cursor = at + 2;
    return v >= 24 ? v : -1;
  }
  if (ai === 25 && at + 2 < n) {
    const v = ((bytes[at + 1] ?? 0) << 8) | (bytes[at + 2] ?? 0);
    cursor = at + 3;
    return v > 0xff ? v : -1;
  }
  if (ai === 26 && at + 4 < n) {
    const v = (bytes[at + 1] ?? 0) * 0x100_0000 + (((bytes[at + 2] ?? 0) << 16) | ((bytes[at + 3] ?? 0) << 8) | (bytes[at + 4] ?? 0));
    cursor = at + 5;
    return v > 0xffff ? v : -1;
  }
  return -1; // 8-byte heads (a seq over 2^32-1, a giant payload) go the slow way
}

/** Whether the `len` bytes at `at` are the characters of `known` (an ASCII string decoded before). */
function sameAscii(bytes: Uint8Array, at: number, len: number, known: string): boolean {
  if (len !== known.length) return false;
  for (let i = 0; i < len; i++) if (bytes[at + i] !== known.charCodeAt(i)) return false;
  return true;
}

/** A text string of strict UTF-8 at the cursor, or null. */
function fastText(bytes: Uint8Array, n: number): string | null {
  const len = fastHead(bytes, n, MAJOR_TEXT);
  return len < 0 || cursor + len > n ? null : fastTextBody(bytes, len);
}

/** The `len` bytes at the cursor (in bounds) as strict UTF-8, or null. */
function fastTextBody(bytes: Uint8Array, len: number): string | null {
  try {
    const s = strictUtf8.decode(bytes.subarray(cursor, cursor + len));
    cursor += len;
    return s;
  } catch {
    return null;
  }
}

/** The keys of Data, as their bytes: `t`, and the three-letter ones big-endian in 24 bits. */
const KEY_T = 0x74;
const KEY_SID = 0x736964;
const KEY_SEQ = 0x736571;
const KEY_PTH = 0x707468;
const KEY_ETG = 0x657467;
const KEY_PAY = 0x706179;

/**
 * Data without a copy of its payload: the hot path of the server and the daemons. It reads only
 * the plain form stoa's encoder writes (a definite map of at most 6 entries whose text keys are
 * among t, sid, seq, pth, etg, pay, each once, with shortest-form heads) and checks every field
 * as the schema would; anything else returns null and goes to `safeParseMessage`, which gives
 * the full checks and errors. `pay` is a VIEW of `bytes`: use it only when nobody reuses them
 * (a WebSocket message's buffer is fresh per message). The message is `bytes` from `start` on
 * (a framed link's frame with its header in front); `withPay` false: `pay` is empty, for a
 * forwarder that needs the routing fields only (the relay), checked all the same. `total` ≥ 0:
 * `bytes` holds only the message's first bytes (from `start`) and the message is `total` bytes
 * long (a frame that spanned reads); every field but the payload must lie in them, the payload
 * must be the last and run to the message's end, and `pay` is its first piece, up to the end
 * of `bytes`. Else null (the caller joins the pieces and asks again).
 */
export function parseDataFast(bytes: Uint8Array, maxBytes = MAX_MESSAGE_BYTES, start = 0, withPay = true, total = -1): DataMessage | null {
  const n = bytes.byteLength;
  const size = total < 0 ? n - start : total;
  if (size > maxBytes || size < 2 || n - start > size) return null;
  const b0 = bytes[start] ?? 0;
  if (b0 >> 5 !== MAJOR_MAP) return null;
  const entries = b0 & 0x1f;
  if (entries < 4 || entries > 6) return null;
  cursor = start + 1;
  let t = -1;
  let sid: string | null = null;
  let seq = -1;
  let pth: string | undefined;
  let etg: string | undefined;
  let pay: Uint8Array | null = null;
  let payAt = 0;
  let payLength = 0;
  for (let i = 0; i < entries; i++) {
    const klen = fastHead(bytes, n, MAJOR_TEXT);
    const k = cursor;
    if (k + klen > n) return null;
    const key = klen === 1 ? (bytes[k] ?? 0) : klen === 3 ? ((bytes[k] ?? 0) << 16) | ((bytes[k + 1] ?? 0) << 8) | (bytes[k + 2] ?? 0) : -1;
    cursor = k + klen;
    switch (key) {
      case KEY_T:
        if (t !== -1) return null;
        t = fastHead(bytes, n, MAJOR_UINT);
        if (t !== MessageType.Data) return null;
        break;
      case KEY_SID: {
        if (sid !== null) return null;
        const len = fastHead(bytes, n, MAJOR_TEXT);
        if (len < 0 || cursor + len > n) return null;
        if (sameAscii(bytes, cursor, len, lastGoodSid)) {
          sid = lastGoodSid;
          cursor += len;
        } else {
          sid = fastTextBody(bytes, len);
          if (sid === null || !SID_RE.test(sid)) return null;
          lastGoodSid = sid;
        }
        break;
      }
      case KEY_SEQ:
        if (seq !== -1) return null;
        seq = fastHead(bytes, n, MAJOR_UINT);
        if (seq < 1) return null;
        break;
      case KEY_PTH: {
        if (pth !== undefined) return null;
        const len = fastHead(bytes, n, MAJOR_TEXT);
        if (len < 0 || cursor + len > n) return null;
        if (lastGoodPath !== "" && sameAscii(bytes, cursor, len, lastGoodPath)) {
          pth = lastGoodPath;
          cursor += len;
          break;
        }
        const p = fastTextBody(bytes, len);
        if (p === null || pathProblem(p) !== null) return null;
        // Only an ASCII path is compared byte by byte next time (sameAscii).
        if (/^[\x00-\x7f]*$/.test(p)) lastGoodPath = p;
        pth = p;
        break;
      }
      case KEY_ETG: {
        if (etg !== undefined) return null;
        const e = fastText(bytes, n);
        if (e === null || Buffer.byteLength(e, "utf8") > MAX_HLNK_ETAG_BYTES) return null;
        etg = e;
        break;
      }
      case KEY_PAY: {
        if (pay !== null) return null;
        const len = fastHead(bytes, n, MAJOR_BYTES);
        if (len < 0) return null;
        if (total < 0) {
          if (cursor + len > n) return null;
          pay = withPay ? bytes.subarray(cursor, cursor + len) : NO_PAY;
          payAt = cursor;
          payLength = len;
          cursor += len;
          break;
        }
        if (i !== entries - 1 || cursor - start + len !== total) return null;
        pay = withPay ? bytes.subarray(cursor) : NO_PAY;
        payAt = cursor;
        payLength = len;
        cursor = n;
        break;
      }
      default:
        return null;
    }
  }
  if (cursor !== n || t !== MessageType.Data || sid === null || seq < 1 || pay === null) return null;
  lastPayload.at = payAt;
  lastPayload.length = payLength;
  // One shape for every Data (absent fields undefined), as the daemons build theirs: no spread.
  return { t: MessageType.Data, sid, seq, pay, pth, etg };
}

// ---------------------------------------------------------------------------------------------
// The control socket (header: "Control socket"; control.ts serves and asks it)

/** Tunnels plus IPC channels one daemon serves: each holds a port or a socket, and all of them
 * are listed in one control answer (`ls`), which must stay well under its size limit. */
export const MAX_CHANNELS = 4096;

/** The frame limits are core/framed-socket.ts's: a spec (a channel path ≤ 4096 bytes, `=`, an
 * address) is far below `MAX_CONTROL_REQUEST_BYTES`, and `ls` of `MAX_CHANNELS` channels at well
 * under 1 KiB each fits in `MAX_CONTROL_ANSWER_BYTES` with room to spare. */
export { MAX_CONTROL_ANSWER_BYTES, MAX_CONTROL_REQUEST_BYTES };

/** Longest spec: a channel path and an address. */
const MAX_CONTROL_SPEC_LENGTH = MAX_PATH_BYTES + 1024;

/** Longest error answer `message`, in characters. */
export const MAX_CONTROL_ERROR_LENGTH = 4096;

/** Longest error answer `code` (a StoaError code, or a newer daemon's). */
const MAX_CONTROL_CODE_LENGTH = 64;

/** Longest `listen` of a tunnel: a host as --tunnel takes it and a port. */
const MAX_LISTEN_LENGTH = 300;

/** Longest socket path of an IPC channel as a status reports it. */
const MAX_SOCKET_PATH_LENGTH = 4096;

/** Longest `user`, `peer` and `server` as a status reports them. */
const MAX_STATUS_USER_LENGTH = 256;
const MAX_STATUS_SERVER_LENGTH = 4096;

/** Incoming sessions one IPC channel reports (one per sending peer). */
const MAX_STATUS_INCOMING = 100_000;

const ControlSpec = z.string().min(1).max(MAX_CONTROL_SPEC_LENGTH);

/** A request to a daemon's control socket, by `type`. */
export const ControlRequest = z.discriminatedUnion("type", [
  z.object({ type: z.literal("tunnel"), spec: ControlSpec }),
  z.object({ type: z.literal("ipc"), spec: ControlSpec }),
  z.object({ type: z.literal("ls") }),
  z.object({ type: z.literal("close"), channel: z.string().min(1).max(MAX_PATH_BYTES) }),
]);
export type ControlRequest = z.output<typeof ControlRequest>;

const Channel = z.string().max(MAX_PATH_BYTES);
const Port = z.number().int().min(0).max(65535);
/** Microseconds: averages have fractions. */
const Micros = z.number().min(0);

/** Who declared a channel: a command-line flag, the control socket, or a marker file (watch.ts). */
const ChannelOrigin = z.enum(["flag", "control", "watch"]);
export type ChannelOrigin = z.output<typeof ChannelOrigin>;

/** Rung failures in a session's status, at most, and the characters of each. */
export const MAX_RUNG_FAILURES = 4;
export const MAX_RUNG_FAILURE_LENGTH = 200;
/** The characters of a session's `via`: what carries it, e.g. "10.0.0.2:4000 (srflx) -> 10.0.1.2:5000 (srflx)". */
export const MAX_PATH_VIA_LENGTH = 200;

/** A rung of the ladder (transport.ts `Rung`). */
const Rung = z.enum(["tls", "ice", "turn", "relay"]);

/** Why a rung above the one in use did not carry the session (or stopped carrying it). */
const RungFailure = z.object({ rung: Rung, error: z.string().max(MAX_RUNG_FAILURE_LENGTH) });
export type RungFailure = z.output<typeof RungFailure>;

/**
 * A channel's outgoing session (sessions.ts `Outgoing`): its state, last seq, bytes sent, the
 * rung that carries its Data now and why the rungs above it failed, in the order tried.
 */
const OutgoingStatus = z.object({
  sid: SessionId,
  state: z.enum(["opening", "open", "closed"]),
  seq: Count,
  bytes: Count,
  rung: Rung,
  /** On a rung above the relay: the address dialled (tls) or the ICE candidate pair, with their types. */
  via: z.string().max(MAX_PATH_VIA_LENGTH).optional(),
  failed: z.array(RungFailure).max(MAX_RUNG_FAILURES),
});
export type OutgoingStatus = z.output<typeof OutgoingStatus>;

/** An incoming session (sessions.ts `Incoming`): seqs and bytes delivered, duplicates dropped, the rung its Data comes on now. */
const IncomingStatus = z.object({ sid: SessionId, delivered: Count, bytes: Count, duplicates: Count, rung: Rung });
export type IncomingStatus = z.output<typeof IncomingStatus>;

/** A tunnel as `Tunnel.status()` reports it (tunnel.ts); `held`: bytes held for its application. */
export const TunnelStatus = z.object({
  channel: Channel,
  listen: z.string().max(MAX_LISTEN_LENGTH),
  peer: z.string().max(MAX_STATUS_USER_LENGTH).nullable(),
  app: z.boolean(),
  out: OutgoingStatus.nullable(),
  in: IncomingStatus.nullable(),
  held: Count,
  /** The application connection rides a relay stream (relay-stream.ts): attaching, or spliced. */
  stream: z.enum(["attaching", "spliced"]).optional(),
});
export type TunnelStatus = z.output<typeof TunnelStatus>;

/** An IPC channel as `IpcChannel.status()` reports it (ipc.ts): one incoming session per sender. */
export const IpcStatus = z.object({
  channel: Channel,
  path: z.string().max(MAX_SOCKET_PATH_LENGTH),
  apps: Count,
  out: OutgoingStatus.nullable(),
  in: z.array(IncomingStatus.extend({ from: z.string().max(MAX_STATUS_USER_LENGTH).optional() })).max(MAX_STATUS_INCOMING),
  held: Count,
});
export type IpcStatus = z.output<typeof IpcStatus>;

/** A tunnel in `ls`: with the port it listens on (the bound one when PORT was 0) and its origin. */
const TunnelEntry = TunnelStatus.extend({ port: Port, origin: ChannelOrigin });
const IpcEntry = IpcStatus.extend({ origin: ChannelOrigin });

/** Packets and bytes of one path (telemetry.ts `DaemonCounters.relay`). */
const RelayCounters = z.object({ txPackets: Count, txBytes: Count, rxPackets: Count, rxBytes: Count });

/** The direct path's packets and bytes, and its upgrades (telemetry.ts `DaemonCounters.direct`). */
const DirectCounters = RelayCounters.extend({ offers: Count, answers: Count, failures: Count, fallbacks: Count });

/** Sending one Data and writing one delivery (telemetry.ts `LatencyStat`). */
const LatencyCounters = z.object({ send_avg: Micros, send_max: Micros, write_avg: Micros, write_max: Micros });

/** Messages and bytes on the relay link (link.ts `RelayLink.messages`). */
const LinkCounters = z.object({ tx: Count, txBytes: Count, rx: Count, rxBytes: Count });

/** What a daemon reports (`HotlinkDaemon.status()`, the `ls` answer). */
export const DaemonStatus = z.object({
  user: z.string().max(MAX_STATUS_USER_LENGTH),
  server: z.string().max(MAX_STATUS_SERVER_LENGTH),
  connected: z.boolean(),
  /** What carries the relay link: "tcp" (the framed link, framed-link.ts), "ws", "" while down. Optional: older daemons. */
  relay_link: z.enum(["", "tcp", "ws"]).optional(),
  tunnels: z.array(TunnelEntry).max(MAX_CHANNELS),
  ipc: z.array(IpcEntry).max(MAX_CHANNELS),
  /** Sessions open on the relay link now. */
  sessions: z.object({ outgoing: Count, incoming: Count }),
  counters: z.object({
    relay: RelayCounters,
    direct: DirectCounters,
    ice: DirectCounters,
    turn: RelayCounters,
    latency_us: LatencyCounters,
    /** Tunnel connections carried on relay streams (relay-stream.ts), and their bytes so far. Optional: older daemons. */
    stream: z.object({ connections: Count, txBytes: Count, rxBytes: Count }).optional(),
  }),
  /** The rungs on (`--direct`), and the STUN/TURN servers ICE uses now, passwords hidden (ice-servers.ts `shownIceServer`). */
  rungs: z.array(z.enum(["tls", "ice"])).max(2),
  ice_servers: z.array(z.string().max(MAX_ICE_SERVER_LENGTH)).max(MAX_ICE_SERVERS),
  link: LinkCounters,
});
export type DaemonStatus = z.output<typeof DaemonStatus>;

const OkAnswer = z.discriminatedUnion("type", [
  z.object({ ok: z.literal(true), type: z.literal("tunnel"), tunnel: TunnelEntry }),
  z.object({ ok: z.literal(true), type: z.literal("ipc"), ipc: IpcEntry }),
  z.object({ ok: z.literal(true), type: z.literal("ls"), status: DaemonStatus }),
  z.object({ ok: z.literal(true), type: z.literal("close"), channel: Channel, kind: z.enum(["tunnel", "ipc"]) }),
]);
type OkAnswer = z.output<typeof OkAnswer>;
/** The answer to a request of type `T`. */
export type AnswerFor<T extends ControlRequest["type"]> = Extract<OkAnswer, { type: T }>;

// A string, not an enum: a newer daemon may send a code this client does not know.
const ErrorAnswer = z.object({ ok: z.literal(false), code: z.string().max(MAX_CONTROL_CODE_LENGTH), message: z.string().max(MAX_CONTROL_ERROR_LENGTH) });

/** An answer from a daemon's control socket. */
export const ControlAnswer = z.union([OkAnswer, ErrorAnswer]);
export type ControlAnswer = z.output<typeof ControlAnswer>;

/** Requests and answers as frame payloads: size limit, CBOR, schema (core/codec.ts). */
export const controlRequestCodec = createCodec(ControlRequest, { maxBytes: MAX_CONTROL_REQUEST_BYTES });
export const controlAnswerCodec = createCodec(ControlAnswer, { maxBytes: MAX_CONTROL_ANSWER_BYTES });
