// transformers.js in Node (onnxruntime-node) on a `shadow-edge web` model folder, as a standard model:
// `pipeline("text-generation", id)` and its model's greedy generate(); prints one JSON line, one entry per prompt.
//   node generate.mjs '{"root": "/path/site/", "model": "model", "prompts": ["Hi"], "max_new_tokens": 12}'
import { env, pipeline } from "@huggingface/transformers";

const { root, model, prompts, max_new_tokens } = JSON.parse(process.argv[2]);
env.allowRemoteModels = false;
env.localModelPath = root;
const generator = await pipeline("text-generation", model); // dtype and device from config.json
const results = [];
for (const prompt of prompts) {
  const inputs = generator.tokenizer(prompt);
  const n = inputs.input_ids.dims[1];
  const out = await generator.model.generate({ ...inputs, max_new_tokens, do_sample: false });
  const [piped] = await generator(prompt, { max_new_tokens, do_sample: false, return_full_text: false });
  results.push({ prompt_ids: Array.from(inputs.input_ids.data, Number), token_ids: Array.from(out.data, Number).slice(n),
                 text: piped.generated_text });
}
console.log(JSON.stringify(results));
