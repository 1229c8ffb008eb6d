// Open pages in headless Chromium (puppeteer-core) and print, as one JSON line, what each page ended with:
// window.shadowEdge.lastResult / lastError, the page's shown error and answer, and console errors and uncaught
// exceptions (a page must show its errors, never throw them).
//   node drive.mjs '{"urls": ["http://127.0.0.1:8080/?prompt=Hi"], "timeout_ms": 120000}'
// Without an argument it keeps one browser for many requests: one such JSON request per stdin line, one JSON
// line of results per request on stdout, until stdin closes (the tests drive all their pages through one browser).
// CHROMIUM (default /usr/bin/chromium) names the browser binary.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import puppeteer from "puppeteer-core";

// What the page shows and holds now.
const snapshot = () => ({
  last_result: window.shadowEdge?.lastResult ?? null,
  last_error: window.shadowEdge?.lastError ?? null,
  cross_origin_isolated: globalThis.crossOriginIsolated,
  shown_error: document.getElementById("error")?.textContent ?? null,
  shown_answer: document.getElementById("output")?.textContent ?? null,
  shown_answered_by: document.getElementById("answered-by")?.textContent ?? null,
  shown_stats: document.getElementById("stats")?.textContent ?? null,
});

// "again": generations to run after the first on the same page (the form resubmitted), e.g. for timing warm pages.
// "prompts": after the first generation, each typed into the page's form and submitted in turn; what the page
// showed after each is in its "next" (the model is loaded once per page).
async function drive(browser, { urls, timeout_ms: timeout = 120000, again = 0, prompts = [] }) {
  const results = [];
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
    const first = await page.evaluate(snapshot);
    const next = [];
    for (const prompt of ended ? prompts : []) {
      await page.evaluate((text) => {
        Object.assign(window.shadowEdge, { lastResult: null, lastError: null });
        document.getElementById("prompt").value = text;
        document.getElementById("go").click();
      }, prompt);
      await page.waitForFunction(
        () => !window.shadowEdge.running && (window.shadowEdge.lastResult || window.shadowEdge.lastError),
        { timeout, polling: 50 });
      next.push({ prompt, ...(await page.evaluate(snapshot)) });
    }
    results.push({ url, ended, console_errors: consoleErrors, page_errors: pageErrors, again: more, next, ...first });
    await page.close();
  }
  return results;
}

const profile = mkdtempSync(join(tmpdir(), "shadow-edge-chromium-"));
// The flags of a closed network: no background connections, no GPU, a fresh profile (as root: no sandbox).
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  userDataDir: profile,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"],
});
try {
  if (process.argv[2] !== undefined) {
    console.log(JSON.stringify(await drive(browser, JSON.parse(process.argv[2]))));
  } else {
    for await (const line of createInterface({ input: process.stdin })) {
      if (line.trim()) console.log(JSON.stringify(await drive(browser, JSON.parse(line))));
    }
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
