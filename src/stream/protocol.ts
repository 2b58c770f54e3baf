/**
 * The stream protocol: what a publisher serves on its three endpoints, and what a subscriber
 * may expect. Everything on the wire is defined here.
 *
 * Endpoints. A publisher serves three WebSocket servers (RFC 6455) on Unix sockets
 * `<run_dir>/pub/<pub_id>/{service,string,ping}.sock`, or on loopback TCP `[::1]:<ephemeral>` with
 * `internal: "tcp"`. Each accepts the upgrade on any request path: the gateway forwards the
 * client's request line unchanged (`GET /pub/<pub_id> HTTP/1.1`), and local clients use `/`
 * (`ws+unix:///run/stoa/pub/<pub_id>/service.sock:/`). A request that is not an upgrade gets
 * `426 Upgrade Required`. No extensions (no permessage-deflate), no subprotocol. The upgrade's
 * `101` answer carries `X-Stoa-Pub-Id: <pub_id>` (`PUB_ID_HEADER`): a metaserver's confirmation
 * accepts only an answer that names the pub_id it asked for, so a WebSocket server that is not
 * that stoa publisher cannot confirm it.
 *
 * Where a subscription starts (service.sock and string.sock). The upgrade's request target may
 * carry a query (the gateway forwards `GET /pub/<pub_id>?… HTTP/1.1` unchanged):
 *   ?from=latest          the latest value first, then live values (the default, also without
 *                         a query): a subscriber that connects after the last value still sees it
 *   ?from=now             only values published after the connection opened
 *   ?from=oldest          every value the publisher still holds in its history, oldest first,
 *                         then live values
 *   ?from=<seq>[&epoch=E] resume: values from seq on, when E is this publisher instance's epoch
 *                         (or absent); another epoch means another instance, so it starts at
 *                         its oldest. A subscriber reconnects this way (subscriber.ts).
 * Other parameters are ignored (room to grow); `from` or `epoch` given twice, an unknown `from`,
 * a seq that is not 1–2^53-1, an invalid epoch, or a query over `MAX_SUBSCRIBE_QUERY_BYTES` is
 * answered `400 {"error":"bad_query","message":…}` before any upgrade (`parseSubscribeQuery`).
 * History: a publisher keeps its last `history` values (default `DEFAULT_HISTORY` = 1, at most
 * `MAX_HISTORY`), and at most `historyBytes` of them (default and bound `MAX_HISTORY_BYTES`;
 * the latest value is always kept). Values keep their seq: the hello's `next` is the seq of the
 * first value the connection gets, so a subscriber that asked for an older seq than the
 * history still holds sees the hole (`next` beyond what it expected) and reports a gap. The
 * history is replayed to a subscriber at its own pace, outside its queue bounds (the frames are
 * the history's own; they are not copied).
 *
 * Sequence numbers. Every published value gets `seq`: 1 for the first value of a publisher
 * instance, then +1 per value, never reused. A restarted publisher is a new instance, with a new
 * random `epoch` and seq starting again at 1. `ts` is the publish time as an RFC 3339 UTC
 * string with milliseconds (`2026-03-01T12:00:00.123Z`), the form `--json` output and ping
 * replies use too.
 *
 * service.sock — binary frames, each exactly one CBOR map (core/codec.ts data model), keyed
 * by `t`. Publisher → subscriber only:
 *   {t:"hello", v:1, epoch, next}   first frame of every connection. `v` is the protocol version
 *                                   (changes only incompatibly); `epoch` names this publisher
 *                                   instance (1–64 chars); `next` is the seq of the next value
 *                                   this connection will get. A subscriber that reconnects
 *                                   compares them with what it saw: same epoch and a larger
 *                                   `next` than it expected → it missed values; another epoch →
 *                                   the publisher restarted and seq began again at 1.
 *   {t:"v", seq, ts, value}         one published value (`value`: see value.ts).
 *   {t:"gap", next, dropped}        this subscriber was too slow and the publisher dropped its
 *                                   `dropped` oldest queued values (policy drop-oldest); the
 *                                   next value frame has seq `next`. Sent just before that
 *                                   frame, so values and notices stay in seq order.
 * A subscriber sends nothing; messages it sends are ignored, and ones over
 * `MAX_CLIENT_MESSAGE_BYTES` close the connection (1009).
 *
 * string.sock — text frames, one per value: the value's text form (value.ts: a string as
 * itself, valid UTF-8 bytes as text, other bytes as base64, anything else as JSON). No hello,
 * no seq and no gap frames: it is the schema-less stream for any client. Values dropped for a
 * slow string subscriber are counted in the publisher's metrics and stats only.
 *
 * ping.sock — request/response over text frames. The client sends `ping`; the publisher answers
 * one text frame, JSON `{"value": <latest value's text form, or null if none yet>, "seq": <seq
 * of the latest value, 0 if none>, "ts": "<RFC 3339 time of the latest value, or now if
 * none>", "json": <the latest value as JSON (value.ts valueToJson: byte strings as base64),
 * null if none>}` — `json` is the exact value `stoa sub --json` prints, `value` its text. A connection may ping many times; replies come in order, each with the latest
 * value when it is written. A client that sends more than `MAX_PENDING_PINGS` pings while its
 * replies back up is closed (1008); so is any other message (1003 for binary, 1008 for text). The metaserver's confirmation and
 * `stoa sub --latest` use exactly this, through the gateway's ping port.
 *
 * Slow subscribers (service and string). Each subscriber has a queue bounded in messages and
 * bytes (`DEFAULT_QUEUE`); frames wait there while its socket is backed up, and only there: at
 * most one frame (and a gap notice) sits in the socket's own buffer. When a frame would overflow the queue:
 *   drop-oldest (default): the oldest queued frames are dropped until it fits and counted; the
 *     subscriber gets a gap notice before the next value it does receive;
 *   disconnect: the subscriber is closed with `CLOSE_TOO_SLOW` (4000) and a reason.
 * Queued frames are shared between subscribers, so queues cost at most about the byte bound
 * per kind, whatever the number of subscribers.
 *
 * Close codes sent by the publisher: 1001 "going away" when it stops (after flushing what it
 * can for up to `CLOSE_DRAIN_TIMEOUT_MS`), 4000 "too slow" (policy disconnect), 1003/1008 on
 * ping.sock misuse or too many pings in flight, 1009 for an oversized client message.
 *
 * Limits: a value's CBOR encoding is at most `MAX_VALUE_BYTES` and its text form at most
 * `MAX_TEXT_BYTES` (publish refuses bigger ones); a service frame is at most
 * `MAX_SERVICE_FRAME_BYTES`, which decoders enforce before decoding.
 */
import { z } from "zod";
import { encode, safeDecodeMessage } from "../core/codec.ts";
import { StoaError } from "../core/errors.ts";
import { valueProblem, type Value } from "./value.ts";

/** Protocol version in the hello frame. */
/** Header of a publisher's `101` answer naming its pub_id (see the header above). */
export const PUB_ID_HEADER = "X-Stoa-Pub-Id";

export const PROTOCOL_VERSION = 1;

/** Largest CBOR encoding of one value (1 MiB): bulk data should be split into many values. */
export const MAX_VALUE_BYTES = 1024 * 1024;

/** What the envelope of a value frame adds at most: map header, keys `t`, `seq`, `ts`,
 * `value`, a 9-byte seq and a 24-byte timestamp take under 64 bytes; 256 leaves room. */
const ENVELOPE_MAX_BYTES = 256;

/** Largest service frame a decoder accepts. */
export const MAX_SERVICE_FRAME_BYTES = MAX_VALUE_BYTES + ENVELOPE_MAX_BYTES;

/** Largest text form of a value, in UTF-8 bytes (2 MiB): base64 of a full-size byte value
 * (4/3 of it) fits, and JSON of a value is rarely twice its CBOR size. */
export const MAX_TEXT_BYTES = 2 * 1024 * 1024;

/** Largest ping reply: JSON-escaping may multiply the text by 6 (`\u0000`), and `json` holds
 * the value once more (as large as its text form, escaped alike), plus the keys. */
export const MAX_PING_REPLY_BYTES = 12 * MAX_TEXT_BYTES + 1024;

/** Values a publisher keeps by default: the latest, so a late subscriber still sees it. */
export const DEFAULT_HISTORY = 1;
/** Most values a history may hold (`stoa pub --history`): a few minutes of a busy sensor. */
export const MAX_HISTORY = 10_000;
/** Bytes (service frames, plus text frames when built) a history holds at most, and by default. */
export const MAX_HISTORY_BYTES = 64 * 1024 * 1024;
/** Longest subscribe query, `?` excluded: `from=<16 digits>&epoch=<64 chars>` is under 100. */
export const MAX_SUBSCRIBE_QUERY_BYTES = 1024;

/** Largest message a publisher accepts from a client (a ping, or ignored subscriber chatter). */
export const MAX_CLIENT_MESSAGE_BYTES = 1024;

/** Pings a client may send ahead of reading replies the socket could not take: pipelining a
 * few is fine, an unbounded backlog of replies is not. Beyond it the connection is closed. */
export const MAX_PENDING_PINGS = 128;

/** The request a ping client sends. */
export const PING_REQUEST = "ping";

/** Close code for a subscriber that fell too far behind under policy disconnect. */
export const CLOSE_TOO_SLOW = 4000;

/** Close code when the publisher stops (RFC 6455 "going away"). */
export const CLOSE_GOING_AWAY = 1001;

/** How long a stopping publisher lets subscribers drain their queues before closing them. */
export const CLOSE_DRAIN_TIMEOUT_MS = 2_000;

/** Per-subscriber queue bounds; a frame waits here while the subscriber's socket is full. */
export interface QueueLimits {
  /** Frames queued at most (at least 1). */
  maxMessages: number;
  /** Bytes queued at most (at least 1); a single larger frame still gets through alone. */
  maxBytes: number;
}

/** Defaults: a few seconds of a busy stream, and a bound on what one subscriber can pin. */
export const DEFAULT_QUEUE: Readonly<QueueLimits> = { maxMessages: 4096, maxBytes: 8 * 1024 * 1024 };

/** What to do with a subscriber whose queue overflows. */
export const SlowPolicy = z.enum(["drop-oldest", "disconnect"]);
export type SlowPolicy = z.infer<typeof SlowPolicy>;

const Seq = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const Timestamp = z.iso.datetime({ offset: true });

/** A value of the stream data model (value.ts), checked without recursion. */
const StreamValue = z.custom<Value>().superRefine((v, ctx) => {
  const problem = valueProblem(v);
  if (problem !== null) ctx.addIssue({ code: "custom", message: problem });
});

const HelloMessage = z.object({
  t: z.literal("hello"),
  v: z.literal(PROTOCOL_VERSION),
  epoch: z.string().min(1).max(64),
  next: Seq,
});

const ValueMessage = z.object({
  t: z.literal("v"),
  seq: Seq,
  ts: Timestamp,
  value: StreamValue,
});

const GapMessage = z.object({
  t: z.literal("gap"),
  next: Seq,
  dropped: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
});

/** Every frame of service.sock. */
export const ServiceMessage = z.discriminatedUnion("t", [HelloMessage, ValueMessage, GapMessage]);
export type ServiceMessage = z.infer<typeof ServiceMessage>;

/** The reply to a ping (`json` is absent from older publishers). */
export const PingReply = z.object({
  value: z.string().nullable(),
  seq: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  ts: Timestamp,
  json: z.json().optional(),
});
export type PingReply = z.infer<typeof PingReply>;

/** Where a subscription starts (see "Where a subscription starts" above). */
export type From =
  | { at: "latest" }
  | { at: "now" }
  | { at: "oldest" }
  | { at: "seq"; seq: number; epoch: string | undefined };

/** The `from` words a user may pick (`stoa sub --from`). */
export const FROM_WORDS = ["latest", "now", "oldest"] as const;

const EPOCH = /^[A-Za-z0-9_-]{1,64}$/;
const SEQ_DIGITS = /^[1-9][0-9]{0,15}$/;

/**
 * Parses the query of a subscriber's upgrade request (`URL.search`, with or without its `?`).
 * Never throws: a bad query is `{ok: false, message}` (the publisher answers 400 bad_query).
 * @example
 * parseSubscribeQuery("?from=oldest");       // { ok: true, from: { at: "oldest" } }
 * parseSubscribeQuery("");                   // { ok: true, from: { at: "latest" } }
 * parseSubscribeQuery("from=12&epoch=Ab3");  // { ok: true, from: { at: "seq", seq: 12, epoch: "Ab3" } }
 */
export function parseSubscribeQuery(search: string): { ok: true; from: From } | { ok: false; message: string } {
  const query = search.startsWith("?") ? search.slice(1) : search;
  if (query.length > MAX_SUBSCRIBE_QUERY_BYTES) {
    return { ok: false, message: `the query is longer than ${MAX_SUBSCRIBE_QUERY_BYTES} characters` };
  }
  let from: string | undefined;
  let epoch: string | undefined;
  // One pass over `key=value` pairs; the values stoa knows are plain ASCII, so nothing is
  // percent-decoded: an encoded spelling of one is simply not that value.
  for (const pair of query === "" ? [] : query.split("&")) {
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    const value = eq < 0 ? "" : pair.slice(eq + 1);
    if (key === "from") {
      if (from !== undefined) return { ok: false, message: "from is given twice" };
      from = value;
    } else if (key === "epoch") {
      if (epoch !== undefined) return { ok: false, message: "epoch is given twice" };
      if (!EPOCH.test(value)) return { ok: false, message: "epoch must be 1-64 characters of [A-Za-z0-9_-]" };
      epoch = value;
    }
  }
  if (from === undefined) {
    if (epoch !== undefined) return { ok: false, message: "epoch goes with from=<seq>" };
    return { ok: true, from: { at: "latest" } };
  }
  if (from === "latest" || from === "now" || from === "oldest") {
    if (epoch !== undefined) return { ok: false, message: "epoch goes with from=<seq>" };
    return { ok: true, from: { at: from } };
  }
  if (SEQ_DIGITS.test(from)) {
    const seq = Number(from);
    if (Number.isSafeInteger(seq)) return { ok: true, from: { at: "seq", seq, epoch } };
  }
  return { ok: false, message: `from must be latest, now, oldest or a seq 1-${Number.MAX_SAFE_INTEGER}` };
}

/**
 * The query for `from` (with its `?`; "" for the default), what `parseSubscribeQuery` reads back.
 * @example
 * subscribeQuery({ at: "oldest" }); // "?from=oldest"
 */
export function subscribeQuery(from: From): string {
  if (from.at === "latest") return "";
  if (from.at !== "seq") return `?from=${from.at}`;
  return `?from=${from.seq}${from.epoch === undefined ? "" : `&epoch=${from.epoch}`}`;
}

/**
 * Encodes one service frame. Throws `StoaError` "too_large" over `MAX_SERVICE_FRAME_BYTES`.
 * The publisher checks values before it gets here; other callers (tests, other publishers)
 * get the codec's checks.
 */
export function encodeServiceMessage(message: ServiceMessage): Uint8Array {
  return encode(message, { maxBytes: MAX_SERVICE_FRAME_BYTES });
}

/**
 * Encodes the value message `{t: "v", seq, ts, value}` a publisher sends and keeps in its
 * history. Encoded without the codec's frame limit first, so a value over `MAX_VALUE_BYTES` is
 * refused with its own size (the frame's minus the envelope's): `StoaError` "too_large".
 */
export function encodeValueMessage(seq: number, ts: string, value: Value): Uint8Array {
  const data = encode({ t: "v", seq, ts, value }, { maxBytes: Number.MAX_SAFE_INTEGER });
  if (data.byteLength > MAX_VALUE_BYTES) {
    const envelope = encode({ t: "v", seq, ts, value: null }).byteLength - 1;
    if (data.byteLength - envelope > MAX_VALUE_BYTES) {
      throw new StoaError(
        "too_large",
        `cannot publish a value of ${data.byteLength - envelope} bytes (CBOR): the limit is ${MAX_VALUE_BYTES}; split it into smaller values`,
      );
    }
  }
  return data;
}

/**
 * Decodes one service frame: size limit first, then CBOR well-formedness, then the schema.
 * Throws `StoaError` "too_large", "decode" or "schema", and nothing else, whatever the bytes.
 * @example
 * const msg = decodeServiceFrame(new Uint8Array(event.data));
 * if (msg.t === "v") console.log(msg.seq, msg.value);
 */
export function decodeServiceFrame(bytes: Uint8Array | ArrayBuffer): ServiceMessage {
  const result = safeDecodeServiceFrame(bytes);
  if (!result.ok) throw result.error;
  return result.value;
}

/** Like `decodeServiceFrame`, but returns the error instead of throwing it. */
export function safeDecodeServiceFrame(
  bytes: Uint8Array | ArrayBuffer,
): { ok: true; value: ServiceMessage } | { ok: false; error: StoaError } {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  return safeDecodeMessage(view, ServiceMessage, { maxBytes: MAX_SERVICE_FRAME_BYTES });
}
