// Open pages in headless Chromium (puppeteer-core) and print, as one JSON line, what each page ended with:
// window.shadowEdge.lastResult / lastError, the page's shown error and answer, and console errors and uncaught
// exceptions (a page must show its errors, never throw them).
//   node drive.mjs '{"urls": ["http://127.0.0.1:8080/?prompt=Hi"], "timeout_ms": 120000}'
// CHROMIUM (default /usr/bin/chromium) names the browser binary.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

// "again": generations to run after the first on the same page (the form resubmitted), e.g. for timing warm pages.
const { urls, timeout_ms: timeout = 120000, again = 0 } = JSON.parse(process.argv[2]);
const profile = mkdtempSync(join(tmpdir(), "shadow-edge-chromium-"));
// The flags of a closed network: no background connections, no GPU, a fresh profile (as root: no sandbox).
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
const results = [];
try {
  for (const url of urls) {
    const page = await browser.newPage();
    const consoleErrors = [], pageErrors = [];
    page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
    page.on("pageerror", (e) => pageErrors.push(String(e)));
    let ended = true;
    await page.goto(url, { waitUntil: "load", timeout });
    try {
      await page.waitForFunction(
        () => window.shadowEdge && !window.shadowEdge.running && (window.shadowEdge.lastResult || window.shadowEdge.lastError),
        { timeout, polling: 100 });
    } catch {
      ended = false;
    }
    const more = [];
    for (let i = 0; ended && i < again; i++) {
      await page.evaluate(() => { window.shadowEdge.lastResult = null; document.getElementById("go").click(); });
      await page.waitForFunction(() => !window.shadowEdge.running && window.shadowEdge.lastResult, { timeout, polling: 50 });
      more.push(await page.evaluate(() => window.shadowEdge.lastResult));
    }
    results.push({
      url, ended, console_errors: consoleErrors, page_errors: pageErrors, again: more,
      ...(await page.evaluate(() => ({
        last_result: window.shadowEdge?.lastResult ?? null,
        last_error: window.shadowEdge?.lastError ?? null,
        cross_origin_isolated: globalThis.crossOriginIsolated,
        shown_error: document.getElementById("error")?.textContent ?? null,
        shown_answer: document.getElementById("output")?.textContent ?? null,
        shown_answered_by: document.getElementById("answered-by")?.textContent ?? null,
        shown_stats: document.getElementById("stats")?.textContent ?? null,
      }))),
    });
    await page.close();
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(results));
