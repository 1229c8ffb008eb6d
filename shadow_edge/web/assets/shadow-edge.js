// shadow-edge's page: the detached shadow answers in the browser (transformers.js on onnxruntime-web, WASM);
// when its confidence is below the threshold, the prompt goes to a `shadow-edge serve` URL (OpenAI API).
//
// URL parameters start a generation on load: prompt, max_new_tokens, temperature (absent or 0: greedy),
// escalate_to (a server's /v1 URL; absent: offline), threshold, threads. When it ends,
// window.shadowEdge.lastResult = {token_ids, text, answered_by, ...}; an error is shown on the page and
// kept in window.shadowEdge.lastError, never thrown. Confidence is the Python runtime's: the geometric
// mean of the chosen tokens' probabilities under the unshaped distribution.
import { AutoModelForCausalLM, AutoTokenizer, env } from "./vendor/transformers.web.min.js";
import { Tensor } from "./vendor/ort.wasm.bundle.min.mjs"; // the onnxruntime-web transformers.js runs on

const SHADOW = "shadow_only", REMOTE = "remote"; // answered_by, named as shadow_edge.runtime.remote names them
const $ = (id) => document.getElementById(id);
const state = { lastResult: null, lastError: null, running: false, site: null };
window.shadowEdge = state;

function showError(message) {
  $("error").textContent = message;
  state.lastError = message;
}

const message = (e) => (e && e.message) || String(e);

// Let the browser paint between decode steps (no 4 ms setTimeout clamp).
const yieldToUI = () => new Promise((resolve) => {
  const channel = new MessageChannel();
  channel.port1.onmessage = () => resolve();
  channel.port2.postMessage(0);
});

const int64 = (values, dims) => new Tensor("int64", BigInt64Array.from(values, (v) => BigInt(v)), dims);

function argmax(row) { // the first maximum, as numpy's argmax
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function logSoftmaxAt(row, token) {
  let max = -Infinity, sum = 0;
  for (const x of row) if (x > max) max = x;
  for (const x of row) sum += Math.exp(x - max);
  return row[token] - max - Math.log(sum);
}

function sample(row, temperature) {
  let max = -Infinity, total = 0;
  for (const x of row) if (x > max) max = x;
  const weights = Float64Array.from(row, (x) => Math.exp((x - max) / temperature));
  for (const w of weights) total += w;
  let r = Math.random() * total;
  for (let i = 0; i < weights.length; i++) if ((r -= weights[i]) <= 0) return i;
  return weights.length - 1;
}

async function loadModel(site, threads) {
  env.allowRemoteModels = false; // everything comes from this site
  env.allowLocalModels = true;
  env.localModelPath = new URL("./", location.href).pathname; // a path: transformers.js reads a URL as remote
  env.useBrowserCache = false; // a re-export at the same URL must not be shadowed by a stale cache entry
  const wasm = env.backends.onnx.wasm;
  // Only the binary: the vendored bundle carries its own loader (a prefix would make it fetch a separate one).
  wasm.wasmPaths = { wasm: new URL("./vendor/ort-wasm-simd-threaded.wasm", location.href).href };
  wasm.numThreads = threads;
  wasm.proxy = false;
  try {
    const tokenizer = await AutoTokenizer.from_pretrained(site.model_dir);
    const model = await AutoModelForCausalLM.from_pretrained(site.model_dir, { dtype: site.dtype, device: "wasm" });
    return { tokenizer, model };
  } catch (e) {
    throw new Error(`could not load the model from ${site.model_dir}/ (${message(e)}); re-create this page with ` +
                    "`shadow-edge web ART --out DIR --force` and serve the whole directory");
  }
}

// The shadow's answer, streamed to onText: {ids, text, finish_reason, confidence, prefill_ms, decode_ms}.
// Steps run the onnxruntime session transformers.js created, fed as transformers.js feeds it (exactly sized
// pasts, present = concat(past, new)): its model() wrapper cost 20-30 ms per decode step in Chromium here,
// the session run 0.3 ms (benchmarks/results/interop.md, "The browser").
async function shadowAnswer({ tokenizer, model }, site, prompt, maxNew, temperature, onText) {
  const session = model.sessions.model;
  const promptIds = tokenizer.encode(prompt);
  if (promptIds.length === 0) throw new Error("the prompt is empty; type some text");
  if (promptIds.length + maxNew > site.context) {
    throw new Error(`the prompt (${promptIds.length} tokens) plus max_new_tokens (${maxNew}) exceed the model's ` +
                    `context of ${site.context} tokens; shorten the prompt or ask for fewer tokens`);
  }
  const eos = new Set(site.eos_token_ids);
  const ids = [], logprobs = [];
  let feed = promptIds, total = 0, finish = "length", text = "";
  let past = {}; // [1, kv_heads, past, head_dim] per layer, empty before the prompt
  for (let i = 0; i < site.num_layers; i++) {
    for (const kind of ["key", "value"]) {
      past[`past_key_values.${i}.${kind}`] = new Tensor("float32", new Float32Array(0), [1, site.kv_heads, 0, site.head_dim]);
    }
  }
  const t0 = performance.now();
  let tFirst = t0;
  for (let step = 0; step < maxNew; step++) {
    const n = feed.length;
    const out = await session.run({
      input_ids: int64(feed, [1, n]),
      attention_mask: int64(new Array(total + n).fill(1), [1, total + n]),
      position_ids: int64(Array.from({ length: n }, (_, i) => total + i), [1, n]),
      ...past,
    });
    past = {};
    for (const [name, value] of Object.entries(out)) {
      if (name.startsWith("present.")) past[`past_key_values.${name.slice("present.".length)}`] = value;
    }
    const vocab = out.logits.dims.at(-1), data = out.logits.data;
    const row = data.subarray(data.length - vocab); // the last position's logits
    const token = temperature > 0 ? sample(row, temperature) : argmax(row);
    ids.push(token);
    logprobs.push(logSoftmaxAt(row, token));
    if (step === 0) tFirst = performance.now();
    total += n;
    feed = [token];
    if (eos.has(token)) { finish = "eos"; break; }
    text = tokenizer.decode(ids, { skip_special_tokens: true });
    onText(text.replace(/\uFFFD+$/, "")); // an incomplete UTF-8 character waits for its next token
    await yieldToUI();
  }
  const tEnd = performance.now();
  const mean = logprobs.reduce((a, b) => a + b, 0) / Math.max(1, logprobs.length);
  return { ids, text, finish_reason: finish, confidence: logprobs.length ? Math.exp(mean) : 0,
           prefill_ms: tFirst - t0, decode_ms: tEnd - tFirst };
}

async function call(url, body, timeoutS) {
  let response;
  try {
    response = await fetch(url, {
      method: body ? "POST" : "GET",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(timeoutS * 1000),
    });
  } catch (e) {
    if (e && e.name === "TimeoutError") throw new Error(`server too slow: no answer from ${url} within ${timeoutS} s`);
    throw new Error(`server unreachable: ${url} (${message(e)}; is it running, started with ` +
                    `--cors-origin ${location.origin}?)`);
  }
  const raw = await response.text();
  let data = null;
  try { data = JSON.parse(raw); } catch { /* reported below */ }
  if (!response.ok) {
    throw new Error(`server error: HTTP ${response.status} from ${url}: ${data?.error?.message ?? raw.slice(0, 200)}`);
  }
  if (data === null) throw new Error(`bad response: ${url} answered ${raw.length} bytes that are not JSON`);
  return data;
}

// The same request the Python runtime's remote cascade sends: /v1/completions on the first *:base_shadow model.
async function escalate(url, prompt, maxNew, temperature, timeoutS) {
  const base = url.replace(/\/+$/, "");
  const v1 = base.endsWith("/v1") ? base : `${base}/v1`;
  const models = (await call(`${v1}/models`, null, timeoutS)).data ?? [];
  const names = models.map((m) => m && m.id).filter((id) => typeof id === "string");
  const model = names.find((id) => id.endsWith(":base_shadow")) ?? names[0];
  if (!model) throw new Error(`bad response: ${v1}/models lists no models`);
  const answer = await call(`${v1}/completions`, { model, prompt, max_tokens: maxNew,
                                                   temperature: temperature > 0 ? temperature : 0, stream: false },
                            timeoutS);
  const choice = answer?.choices?.[0];
  if (typeof choice?.text !== "string") throw new Error(`bad response: no answer text from ${v1}/completions`);
  return { text: choice.text, finish_reason: choice.finish_reason ?? "stop", model,
           token_ids: answer.shadow_edge?.token_ids ?? null };
}

function readNumber(value, name, { min = -Infinity, max = Infinity, integer = false } = {}) {
  const x = Number(value);
  if (value === "" || !Number.isFinite(x) || x < min || x > max || (integer && !Number.isInteger(x))) {
    throw new Error(`${name} is ${JSON.stringify(value)}; it must be ${integer ? "an integer" : "a number"} ` +
                    `in [${min}, ${max === Infinity ? "∞" : max}]`);
  }
  return x;
}

async function generate(rt, site, form) {
  if (state.running) return;
  state.running = true;
  state.lastResult = null;
  state.lastError = null;
  $("error").textContent = "";
  $("output").textContent = "";
  $("answered-by").textContent = "";
  $("stats").textContent = "";
  $("go").disabled = true;
  try {
    const maxNew = readNumber(form.max_new_tokens, "max_new_tokens", { min: 1, integer: true });
    const temperature = form.temperature === "" ? 0 : readNumber(form.temperature, "temperature", { min: 0 });
    const threshold = readNumber(form.threshold, "threshold", { min: 0, max: 1 });
    const escalateTo = form.escalate_to.trim();
    const t0 = performance.now();
    const shadow = await shadowAnswer(rt, site, form.prompt, maxNew, temperature,
                                      (text) => { $("output").textContent = text; });
    const shadowMs = performance.now() - t0;
    const tokensPerS = shadow.ids.length > 1 ? (shadow.ids.length - 1) / (shadow.decode_ms / 1000) : null;
    $("output").textContent = shadow.text;
    const result = { token_ids: shadow.ids, text: shadow.text, answered_by: SHADOW, finish_reason: shadow.finish_reason,
                     reason: "confident", confidence: shadow.confidence, threshold, shadow_token_ids: shadow.ids,
                     shadow_text: shadow.text, prefill_ms: shadow.prefill_ms, tokens_per_s: tokensPerS,
                     shadow_ms: shadowMs, remote_ms: null, remote_model: null, threads: site.threads };
    $("stats").textContent = `${shadow.ids.length} tokens, prefill ${shadow.prefill_ms.toFixed(1)} ms` +
      (tokensPerS ? `, ${tokensPerS.toFixed(1)} tokens/s` : "") +
      ` (WASM, ${site.threads} thread${site.threads > 1 ? "s" : ""}); confidence ${shadow.confidence.toFixed(3)}`;
    if (shadow.confidence < threshold) {
      if (!escalateTo) {
        result.reason = "unsure, but no server to escalate to (offline)";
      } else {
        $("answered-by").textContent = `(the shadow is unsure: asking ${escalateTo}…)`;
        const t1 = performance.now();
        try {
          const remote = await escalate(escalateTo, form.prompt, maxNew, temperature, site.escalate_timeout_s);
          Object.assign(result, { token_ids: remote.token_ids, text: remote.text, answered_by: REMOTE,
                                  finish_reason: remote.finish_reason, reason: "escalated",
                                  remote_model: remote.model });
          $("output").textContent = remote.text;
        } catch (e) {
          result.reason = message(e);
          showError(`${message(e)}; showing the shadow's answer`);
        }
        result.remote_ms = performance.now() - t1;
      }
    }
    $("answered-by").textContent = result.answered_by === REMOTE
      ? `(answered by the server: ${result.remote_model}, ${result.remote_ms.toFixed(0)} ms)`
      : `(answered by the shadow in your browser${result.reason === "confident" ? "" : `: ${result.reason}`})`;
    state.lastResult = result;
  } catch (e) {
    showError(message(e));
  } finally {
    state.running = false;
    $("go").disabled = false;
  }
}

function formValues() {
  return { prompt: $("prompt").value, max_new_tokens: $("max_new_tokens").value, temperature: $("temperature").value,
           escalate_to: $("escalate_to").value, threshold: $("threshold").value };
}

async function main() {
  const params = new URLSearchParams(location.search);
  let site;
  try {
    const response = await fetch("./manifest.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    site = (await response.json()).page;
  } catch (e) {
    throw new Error(`could not read this page's manifest.json (${message(e)}); serve the whole directory that ` +
                    "`shadow-edge web` wrote");
  }
  const threads = params.has("threads")
    ? readNumber(params.get("threads"), "threads", { min: 1, max: 64, integer: true })
    : (globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1);
  site.threads = threads;
  state.site = site;
  for (const [id, value] of [["max_new_tokens", site.max_new_tokens], ["threshold", site.threshold],
                             ["escalate_to", site.escalate_to ?? ""]]) $(id).value = value;
  for (const id of ["prompt", "max_new_tokens", "temperature", "escalate_to", "threshold"]) {
    if (params.has(id)) $(id).value = params.get(id);
  }
  const rt = await loadModel(site, threads);
  $("model-info").textContent = `${site.model_type} detached shadow, ${site.dtype} (${site.model_mb.toFixed(1)} MB), ` +
    `${site.num_layers} layer${site.num_layers > 1 ? "s" : ""}; runs here, offline`;
  $("go").disabled = false;
  $("form").addEventListener("submit", (event) => { event.preventDefault(); generate(rt, site, formValues()); });
  if (params.has("prompt")) await generate(rt, site, formValues());
}

main().catch((e) => {
  showError(message(e));
  $("model-info").textContent = "not loaded";
});
