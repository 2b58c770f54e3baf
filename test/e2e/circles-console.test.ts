/**
 * The browser console at GET / of `stoa circles serve` (dist/stoa, the page and its bundled
 * script as the binary embeds them), driven in headless Chromium through playwright-core and
 * Debian's /usr/bin/chromium (no browser download): generate a key, authenticate, play
 * `40 + 2` and see 42, see a bad script's error rendered, and no console errors on the way.
 * Needs the real task queue (src/circles/queues.ts) for the plays.
 */
import { afterAll, beforeAll, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { type Browser, chromium } from "playwright-core";
import { newPrivateKey, publicKeyHex } from "../fixtures/circles-client.ts";
import { Scope, freePorts, requireBinary } from "../fixtures/e2e-helpers.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.log(`skipping the circles console test: ${CHROMIUM} is missing (apt-get install chromium)`);

const scope = new Scope();
let browser: Browser | undefined;

beforeAll(async () => {
  if (!haveChromium) return;
  requireBinary();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], headless: true });
});

afterAll(async () => {
  await browser?.close();
  await scope.cleanup();
});

test.skipIf(!haveChromium)(
  "the console: generate a key, authenticate, play 40 + 2 → 42, a bad script's error, no console errors",
  async () => {
    const circles = [publicKeyHex(newPrivateKey()), publicKeyHex(newPrivateKey())];
    const [port] = freePorts(1);
    const server = scope.stoa("circles serve", ["circles", "serve", "--port", String(port), "-k", circles.join(","), "--enable-auth"]);
    const http = (await server.waitFor("out", /console (http:\/\/\S+)\/\)$/m))[1];
    const page = await (browser as Browser).newPage();
    const problems: string[] = [];
    page.on("console", (message) => {
      if (message.type() === "error" || message.type() === "warning") problems.push(`${message.type()}: ${message.text()}`);
    });
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("requestfailed", (request) => problems.push(`request failed: ${request.url()}`));

    await page.goto(`${http}/`);
    // The circles come from the server, the first chosen.
    await page.waitForFunction(`document.querySelectorAll("#circle option").length === 2`);
    expect(await page.locator("#circle").inputValue()).toBe(circles[0] as string);
    await page.selectOption("#circle", circles[1] as string);

    await page.click("#generate");
    const key = await page.locator("#key").inputValue();
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    const pubkey = (await page.locator("#pubkey").textContent()) ?? "";
    expect(pubkey).toBe(publicKeyHex(new Uint8Array(Buffer.from(key, "hex"))));

    await page.click("#authenticate");
    await page.waitForFunction(`document.getElementById("status")?.textContent?.startsWith("authenticated as ")`);
    expect(await page.locator("#status").textContent()).toBe(`authenticated as ${pubkey}`);

    await page.fill("#script", "40 + 2");
    await page.click("#run");
    await page.waitForFunction(`document.getElementById("output")?.textContent === "42"`);
    expect(await page.locator("#output").getAttribute("class")).toBe("");

    await page.fill("#script", "this is not javascript");
    await page.click("#run");
    await page.waitForFunction(`document.getElementById("output")?.className === "error"`);
    expect(await page.locator("#output").textContent()).toMatch(/^error -32000: .*SyntaxError/);

    // A pasted key works as well (a fresh page: nothing carried over).
    const second = await (browser as Browser).newPage();
    second.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    await second.goto(`${http}/`);
    await second.waitForFunction(`document.querySelectorAll("#circle option").length === 2`);
    await second.fill("#key", key);
    await second.fill("#script", "40 + 2");
    await second.click("#run");
    await second.waitForFunction(`document.getElementById("output")?.textContent === "42"`);

    expect(problems).toEqual([]);
  },
  60_000,
);
