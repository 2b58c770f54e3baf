/**
 * The two identities of a publisher, shared by the publisher, the gateway and the metaserver.
 *
 * - **name**: a hierarchical path that people choose — segments of `[A-Za-z0-9_-]` joined by
 *   `/`, no empty segment (so no leading, trailing or doubled `/`), no `.`/`..` (they cannot
 *   match the segment rule anyway). Names are leaves: a publisher is never registered under
 *   another publisher's name or on a directory node (the metaserver enforces that).
 * - **pub_id**: stable and URL-safe, `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, and never `.`-only
 *   segments like `..` (the first character is alphanumeric). It names a directory in the run
 *   dir and a URL path segment, so nothing that could escape either is valid.
 */
import { z } from "zod";

/** Longest publisher name, in characters: far beyond real use, bounded for storage and URLs. */
export const MAX_NAME_LENGTH = 512;
/** Deepest name: `a/b/c/...` with at most this many segments. */
const MAX_NAME_SEGMENTS = 32;

const SEGMENT = /^[A-Za-z0-9_-]+$/;
const PUB_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Why `name` is not a valid publisher name, or null when it is. */
export function nameProblem(name: string): string | null {
  if (name.length === 0) return "a name cannot be empty";
  if (name.length > MAX_NAME_LENGTH) return `a name is at most ${MAX_NAME_LENGTH} characters`;
  const segments = name.split("/");
  if (segments.length > MAX_NAME_SEGMENTS) return `a name has at most ${MAX_NAME_SEGMENTS} segments`;
  for (const segment of segments) {
    if (segment === "") return "a name has no empty segment (no leading, trailing or double '/')";
    if (!SEGMENT.test(segment)) return `segment '${segment}' may only hold letters, digits, '_' and '-'`;
  }
  return null;
}

export function isValidPubId(id: string): boolean {
  return PUB_ID.test(id);
}

export const PublisherName = z.string().superRefine((name, ctx) => {
  const problem = nameProblem(name);
  if (problem) ctx.addIssue({ code: "custom", message: problem });
});

export const PubId = z
  .string()
  .regex(PUB_ID, "a pub_id is 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit");

/** The three endpoints every publisher serves, in port order: defined with the run dir's layout. */
export { KINDS, type Kind } from "../core/paths.ts";

/** A fresh pub_id: 16 random bytes, base64url (22 characters). */
export function newPubId(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64url").replace(/^[-_]/, "p");
}
