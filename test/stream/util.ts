/** Helpers shared by the stream tests. */
import { afterEach } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { StoaError } from "../../src/core/errors.ts";

/** A short temp dir (Unix socket paths are limited to 107 bytes) and its cleanup. */
export function shortTempDir(): { dir: string; remove(): void } {
  const dir = mkdtempSync("/tmp/st-");
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The StoaError a promise rejects with (fails on success or another error type). */
export async function rejection(p: Promise<unknown>): Promise<StoaError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("expected a rejection");
}

/** The StoaError a call throws. */
export function thrown(fn: () => unknown): StoaError {
  try {
    fn();
  } catch (err) {
    if (err instanceof StoaError) return err;
    throw err;
  }
  throw new Error("expected a throw");
}

/** Opens a plain (Bun global) WebSocket and records what it receives. */
export async function plainClient(url: string): Promise<{
  ws: WebSocket;
  messages: (string | ArrayBuffer)[];
  closed: Promise<{ code: number; reason: string }>;
}> {
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const messages: (string | ArrayBuffer)[] = [];
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason });
  });
  ws.onmessage = (e: MessageEvent) => {
    const data: unknown = e.data;
    if (typeof data === "string" || data instanceof ArrayBuffer) messages.push(data);
  };
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error(`cannot open ${url}`));
  });
  return { ws, messages, closed };
}

/**
 * Per-test cleanups, run after each test in reverse order, and a short temp dir removed with
 * them. Call once at a test file's top level.
 */
export function perTestCleanups(): { cleanups: (() => unknown)[]; tempDir(): string } {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  return {
    cleanups,
    tempDir() {
      const t = shortTempDir();
      cleanups.push(t.remove);
      return t.dir;
    },
  };
}
