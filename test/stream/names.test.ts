import { describe, expect, test } from "bun:test";
import { MAX_NAME_LENGTH, PubId, PublisherName, isValidPubId, nameProblem, newPubId } from "../../src/stream/names.ts";

describe("publisher names", () => {
  test.each(["a", "sensors/temp", "a-b/c_d/E9", "x/".repeat(31) + "x"])("accepts %p", (name) => {
    expect(nameProblem(name)).toBeNull();
    expect(PublisherName.safeParse(name).success).toBe(true);
  });

  test.each([
    ["", "empty"],
    ["/a", "no empty segment"],
    ["a/", "no empty segment"],
    ["a//b", "no empty segment"],
    ["a/../b", "segment '..'"],
    ["a/./b", "segment '.'"],
    ["a b", "letters, digits"],
    ["a%2Fb", "letters, digits"],
    ["x".repeat(MAX_NAME_LENGTH + 1), "at most"],
    ["x/".repeat(32) + "x", "segments"],
  ])("rejects %p", (name, why) => {
    expect(nameProblem(name)).toContain(why);
  });
});

describe("pub_ids", () => {
  test.each(["a", "A9", "pub.1", "x-y_z", "a".repeat(64)])("accepts %p", (id) => {
    expect(isValidPubId(id)).toBe(true);
  });

  test.each(["", ".", "..", ".hidden", "-a", "_a", "a/b", "a%2e", "a b", "a".repeat(65), "é"])("rejects %p", (id) => {
    expect(isValidPubId(id)).toBe(false);
    expect(PubId.safeParse(id).success).toBe(false);
  });

  test("fresh ids are valid and distinct", () => {
    const ids = new Set(Array.from({ length: 1000 }, newPubId));
    expect(ids.size).toBe(1000);
    for (const id of ids) expect(isValidPubId(id)).toBe(true);
  });
});
