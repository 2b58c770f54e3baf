/**
 * STUN messages (RFC 5389) as `stoa hotlink serve --stun-listen` answers them and hotlink's ICE
 * asks them: the binding method only, over UDP, one message per datagram.
 *
 *   0                   1                   2                   3
 *   |0 0|  type (14 bits: method + class) |   length (bytes after the header, ×4)  |
 *   |                     magic cookie 0x2112A442                                   |
 *   |                     transaction id (96 bits)                                  |
 *   attributes: type (16) | length (16) | value, padded to a multiple of 4
 *
 * `decodeStun` is a state machine over one datagram — HEADER, then ATTRIBUTE_HEADER and
 * ATTRIBUTE_VALUE per attribute, then DONE — with its limits checked before anything is kept:
 * at most `MAX_STUN_BYTES`, `MAX_STUN_ATTRIBUTES` attributes, each at most
 * `MAX_STUN_ATTRIBUTE_BYTES`. Anything else is a `StunDecodeError` naming the state and the rule,
 * never another exception. A FINGERPRINT, when present, must be the last attribute and right.
 * `encodeStun` writes what `decodeStun` reads; addresses go in and out of XOR-MAPPED-ADDRESS
 * with `xorAddress`/`readXorAddress`.
 */
import { isIPv4, isIPv6 } from "node:net";
import { formatIPv6, parseIPv6 } from "../core/ipv6.ts";

export const STUN_MAGIC_COOKIE = 0x2112a442;
export const STUN_HEADER_BYTES = 20;
/** Larger than any STUN message a binding needs (RFC 5389 asks for ≤ 548 bytes without path MTU). */
export const MAX_STUN_BYTES = 1_280;
export const MAX_STUN_ATTRIBUTES = 32;
export const MAX_STUN_ATTRIBUTE_BYTES = 512;

export const STUN_METHOD_BINDING = 0x001;

export const STUN_ATTRIBUTE = {
  MAPPED_ADDRESS: 0x0001,
  ERROR_CODE: 0x0009,
  UNKNOWN_ATTRIBUTES: 0x000a,
  XOR_MAPPED_ADDRESS: 0x0020,
  SOFTWARE: 0x8022,
  FINGERPRINT: 0x8028,
} as const;

export type StunClass = "request" | "indication" | "success" | "error";

export interface StunAttribute {
  type: number;
  value: Uint8Array;
}

export interface StunMessage {
  method: number;
  class: StunClass;
  /** 12 bytes. */
  transactionId: Uint8Array;
  attributes: StunAttribute[];
}

export interface StunAddress {
  family: "IPv4" | "IPv6";
  address: string;
  port: number;
}

type DecodeState = "HEADER" | "ATTRIBUTE_HEADER" | "ATTRIBUTE_VALUE" | "DONE";

/** Why a datagram is not a STUN message stoa reads, and where in it. */
export class StunDecodeError extends Error {
  override readonly name = "StunDecodeError";
  constructor(
    readonly state: DecodeState,
    readonly rule: string,
  ) {
    super(`not a STUN message (${state}): ${rule}`);
  }
}

const CLASS_OF: Record<number, StunClass> = { 0: "request", 1: "indication", 2: "success", 3: "error" };
const CLASS_BITS: Record<StunClass, number> = { request: 0, indication: 1, success: 2, error: 3 };
const FINGERPRINT_XOR = 0x5354554e;

/** Whether a datagram may be STUN at all (RFC 5389 §6: first two bits zero, the cookie): cheap, for demultiplexing. */
export function looksLikeStun(data: Uint8Array): boolean {
  if (data.length < STUN_HEADER_BYTES || (data[0] ?? 0xff) >= 0x40) return false;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return view.getUint32(4) === STUN_MAGIC_COOKIE;
}

export function decodeStun(data: Uint8Array): StunMessage {
  let state: DecodeState = "HEADER";
  const fail = (rule: string): never => {
    throw new StunDecodeError(state, rule);
  };
  if (data.length > MAX_STUN_BYTES) fail(`${data.length} bytes, more than ${MAX_STUN_BYTES}`);
  if (data.length < STUN_HEADER_BYTES) fail(`${data.length} bytes, less than the ${STUN_HEADER_BYTES}-byte header`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const type = view.getUint16(0);
  if (type >> 14 !== 0) fail("the first two bits are not zero");
  const length = view.getUint16(2);
  if (length % 4 !== 0) fail(`length ${length} is not a multiple of 4`);
  if (length !== data.length - STUN_HEADER_BYTES) fail(`length ${length} but ${data.length - STUN_HEADER_BYTES} bytes follow the header`);
  if (view.getUint32(4) !== STUN_MAGIC_COOKIE) fail("no magic cookie");
  const method = (type & 0x000f) | ((type & 0x00e0) >> 1) | ((type & 0x3e00) >> 2);
  const klass = CLASS_OF[((type >> 4) & 0x1) | ((type >> 7) & 0x2)] ?? fail("unknown class");
  const transactionId = data.slice(8, STUN_HEADER_BYTES);
  const attributes: StunAttribute[] = [];
  let at = STUN_HEADER_BYTES;
  state = "ATTRIBUTE_HEADER";
  while (at < data.length) {
    state = "ATTRIBUTE_HEADER";
    if (attributes.length >= MAX_STUN_ATTRIBUTES) fail(`more than ${MAX_STUN_ATTRIBUTES} attributes`);
    if (data.length - at < 4) fail("an attribute header is cut short");
    const attrType = view.getUint16(at);
    const attrLength = view.getUint16(at + 2);
    if (attrLength > MAX_STUN_ATTRIBUTE_BYTES) fail(`attribute 0x${attrType.toString(16)} of ${attrLength} bytes, more than ${MAX_STUN_ATTRIBUTE_BYTES}`);
    state = "ATTRIBUTE_VALUE";
    const padded = (attrLength + 3) & ~3;
    if (data.length - at - 4 < padded) fail(`attribute 0x${attrType.toString(16)} runs past the message`);
    if (attrType === STUN_ATTRIBUTE.FINGERPRINT) {
      if (attrLength !== 4) fail("FINGERPRINT is not 4 bytes");
      if (at + 8 !== data.length) fail("FINGERPRINT is not the last attribute");
      const want = (crc32(data.subarray(0, at)) ^ FINGERPRINT_XOR) >>> 0;
      if (view.getUint32(at + 4) !== want) fail("FINGERPRINT does not match");
    }
    attributes.push({ type: attrType, value: data.slice(at + 4, at + 4 + attrLength) });
    at += 4 + padded;
  }
  state = "DONE";
  return { method, class: klass, transactionId, attributes };
}

/** A message's bytes; with `fingerprint`, a FINGERPRINT attribute last. */
export function encodeStun(message: StunMessage, options: { fingerprint?: boolean } = {}): Uint8Array {
  if (message.transactionId.length !== 12) throw new RangeError("a STUN transaction id is 12 bytes");
  const body = message.attributes.reduce((n, a) => n + 4 + ((a.value.length + 3) & ~3), 0) + (options.fingerprint ? 8 : 0);
  const out = new Uint8Array(STUN_HEADER_BYTES + body);
  const view = new DataView(out.buffer);
  const m = message.method;
  const c = CLASS_BITS[message.class];
  const type = (m & 0x000f) | ((m & 0x0070) << 1) | ((m & 0x0f80) << 2) | ((c & 0x1) << 4) | ((c & 0x2) << 7);
  view.setUint16(0, type);
  view.setUint16(2, body);
  view.setUint32(4, STUN_MAGIC_COOKIE);
  out.set(message.transactionId, 8);
  let at = STUN_HEADER_BYTES;
  for (const attr of message.attributes) {
    view.setUint16(at, attr.type);
    view.setUint16(at + 2, attr.value.length);
    out.set(attr.value, at + 4);
    at += 4 + ((attr.value.length + 3) & ~3);
  }
  if (options.fingerprint) {
    view.setUint16(at, STUN_ATTRIBUTE.FINGERPRINT);
    view.setUint16(at + 2, 4);
    view.setUint32(at + 4, (crc32(out.subarray(0, at)) ^ FINGERPRINT_XOR) >>> 0);
  }
  return out;
}

/**
 * The value of an XOR-MAPPED-ADDRESS for `address` (IPv4-mapped IPv6 goes as IPv4), or with a
 * null `transactionId` of a MAPPED-ADDRESS (the address as it is).
 */
export function xorAddress(address: string, port: number, transactionId: Uint8Array | null): Uint8Array {
  const plain = plainAddress(address);
  const v4 = isIPv4(plain);
  if (!v4 && !isIPv6(plain)) throw new RangeError(`not an IP address: ${address}`);
  const bytes = v4 ? ipv4Bytes(plain) : (parseIPv6(plain) ?? new Uint8Array(16));
  const out = new Uint8Array(4 + bytes.length);
  const view = new DataView(out.buffer);
  out[1] = v4 ? 0x01 : 0x02;
  view.setUint16(2, transactionId === null ? port : port ^ (STUN_MAGIC_COOKIE >>> 16));
  const pad = transactionId === null ? new Uint8Array(16) : xorPad(transactionId);
  for (let i = 0; i < bytes.length; i++) out[4 + i] = (bytes[i] ?? 0) ^ (pad[i] ?? 0);
  return out;
}

/** The address in an XOR-MAPPED-ADDRESS value (`xor`) or a MAPPED-ADDRESS value, or null when malformed. */
export function readXorAddress(value: Uint8Array, transactionId: Uint8Array, xor = true): StunAddress | null {
  if (value.length !== 8 && value.length !== 20) return null;
  const family = value[1];
  if (!((family === 0x01 && value.length === 8) || (family === 0x02 && value.length === 20))) return null;
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const port = xor ? view.getUint16(2) ^ (STUN_MAGIC_COOKIE >>> 16) : view.getUint16(2);
  const pad = xor ? xorPad(transactionId) : new Uint8Array(16);
  const bytes = value.slice(4).map((b, i) => b ^ (pad[i] ?? 0));
  if (family === 0x01) return { family: "IPv4", address: [...bytes].join("."), port };
  return { family: "IPv6", address: formatIPv6(bytes), port };
}

/** An ERROR-CODE value: class and number, and a reason phrase. */
export function errorCodeValue(code: number, reason: string): Uint8Array {
  const text = new TextEncoder().encode(reason.slice(0, 127));
  const out = new Uint8Array(4 + text.length);
  out[2] = Math.floor(code / 100);
  out[3] = code % 100;
  out.set(text, 4);
  return out;
}

/** "::ffff:1.2.3.4" → "1.2.3.4"; anything else as it is. */
export function plainAddress(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped?.[1] ?? address;
}

function xorPad(transactionId: Uint8Array): Uint8Array {
  const pad = new Uint8Array(16);
  new DataView(pad.buffer).setUint32(0, STUN_MAGIC_COOKIE);
  pad.set(transactionId.subarray(0, 12), 4);
  return pad;
}

function ipv4Bytes(address: string): Uint8Array {
  return Uint8Array.from(address.split(".").map(Number));
}

/** CRC-32 (ISO 3309, zlib's), as FINGERPRINT uses it. */
function crc32(data: Uint8Array): number {
  return Bun.hash.crc32(data) >>> 0;
}
