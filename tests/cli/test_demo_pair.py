"""The demo pair: SmolLM2-135M-Instruct + the shipped shadow. The adapter is what was promised (bfloat16, <= 25 MB,
shadow-peft's format), the demo prints sensible answers in every mode, held-out chats show the adapter learned its
task, and the recipe's two scripts still run (a few steps on a tiny base)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from factories import make_base_model, randomize_adapter
from shadow_edge.cli import main
from shadow_edge.core.tiny import VOCAB_SIZE, write_tiny_default
from shadow_edge.demo_model import ADAPTER, HELDOUT_CHATS

REPO = Path(__file__).resolve().parents[2]


def test_shipped_adapter_is_bfloat16_and_small():
    path = ADAPTER / "shadow_adapter.safetensors"
    assert path.stat().st_size <= 25e6
    with safe_open(str(path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    record = json.loads((ADAPTER / "recipe.json").read_text())
    # both phases ran, in this run or (phase 2 run again from a checkpoint between the phases) in the one before it
    distill = record["distill"] if record["distill"]["steps"] else record["init_adapter"]["recipe"]["distill"]
    assert distill["steps"] > 0 and record["task"]["steps"] > 0
    assert distill["seconds"] + record["task"]["seconds"] <= 90 * 60  # the training budget
    assert sum(1 for _ in HELDOUT_CHATS.open()) >= 100


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo's output (it exports fp32 and int4 into a fresh cache dir), and that dir. In this process (the CLI's
    `main`, as `shadow-edge demo` runs it): its two exports and chats share the worker's one-thread torch and
    onnxruntime (tests/conftest.py) instead of a second process's threads contending with the other worker."""
    cache = tmp_path_factory.mktemp("demo")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", "--cache-dir", str(cache), "--threads", "2"])
    assert code == 0, err.getvalue()[-3000:]
    return out.getvalue(), err.getvalue(), cache


@pytest.mark.slow
def test_demo_answers_in_every_mode(demo_run):
    out, err, cache = demo_run
    assert "exporting" in err and out.count("artifact: ") == 2
    assert "SmolLM2-135M-Instruct" in out
    for mode in ("base_plain", "shadow_only", "base_shadow", "speculative"):
        assert out.count(f"  {mode} ") == 2, mode  # fp32 and int4
    assert out.count("same text as base_shadow: True") == 2
    assert "answered by shadow_only" in out and "answered by base_shadow" in out  # one kept, one escalated
    assert "lantern" in out.lower() and "tok/s" in out


@pytest.mark.slow
def test_demo_reuses_its_artifacts(demo_run, capsys):
    _, _, cache = demo_run
    assert main(["demo", "--cache-dir", str(cache), "--max-new-tokens", "3", "--threads", "1"]) == 0
    assert "exporting" not in capsys.readouterr().err


@pytest.mark.slow
def test_demo_reexports_when_the_shipped_adapter_changes(demo_run, tmp_path, monkeypatch):
    from shadow_edge.commands import demo

    _, _, cache = demo_run
    art = next(cache.glob("smollm2-demo-fp32-*"))
    options = dict(demo.VARIANTS)["fp32"]
    assert demo._current(art, options)
    assert not demo._current(art, {**options, "draft_vocab": 16384})  # other export options
    newer = tmp_path / "adapter"
    shutil.copytree(ADAPTER, newer)
    (newer / "shadow_config.json").write_text((ADAPTER / "shadow_config.json").read_text() + "\n")
    monkeypatch.setattr(demo, "ADAPTER", newer)
    assert not demo._current(art, options)  # a cache exported from the former adapter is not reused


@pytest.mark.slow
def test_adapter_learned_its_task_on_heldout_chats(demo_run):
    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.runtime.chat_eval import evaluate_chats

    _, _, cache = demo_run
    art = next(cache.glob("smollm2-demo-fp32-*"))
    report = evaluate_chats(ShadowRuntime.load(art, threads=2), HELDOUT_CHATS, max_chats=24)
    ppl = {m: q.perplexity for m, q in report.modes.items()}
    assert ppl["base_shadow"] < 0.6 * ppl["base_plain"], ppl  # the adapter answers in its task's format
    assert ppl["shadow_only"] < 500, ppl  # uniform over the vocabulary would be 49152
    assert report.agreement > 0.3


@pytest.mark.slow
def test_recipe_scripts_run_a_few_steps(tmp_path):
    base = make_base_model("llama", 3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=VOCAB_SIZE, tie_word_embeddings=True)
    base.save_pretrained(tmp_path / "base")
    tiny = write_tiny_default(tmp_path / "tiny")  # a tokenizer with a chat template
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "base" / name).write_bytes((tiny.base_dir / name).read_bytes())
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Define word {i}."},
                                                      {"role": "assistant", "content": f"word {i}: a thing."}]})
                             + "\n" for i in range(12)))
    out = tmp_path / "adapter"
    cmd = [sys.executable, str(REPO / "scripts" / "train_shadow.py"), "--base", str(tmp_path / "base"),
           "--train", str(chats), "--heldout", str(chats), "--threads", "1", "--batch", "4"]
    proc = subprocess.run([*cmd, "--out", str(out), "--num-shadow-layers", "2", "--init-layers", "0,-1",
                           "--distill-steps", "2", "--task-steps", "2", "--no-bf16"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "recipe.json").read_text())
    assert record["distill"]["steps"] == 2 and record["task"]["steps"] == 2
    assert record["args"]["bucket"] and not record["args"]["bf16"]  # the defaults bucket and autocast; --no-* off
    assert record["heldout_after"]["scored_tokens"] > 0 and record["task_first_chat"] == 8  # after 2 steps of 4
    with safe_open(str(out / "shadow_adapter.safetensors"), "pt") as f:
        ups = f.get_tensor("shadow_injection_model.injection_ups")
        assert str(ups.dtype) == "torch.bfloat16" and ups.abs().max() > 0  # trained (shadow-peft zero-inits it)

    # trained further from that adapter (under bfloat16 autocast): the distill phase skipped, the start is the saved
    # adapter (bfloat16)
    more = tmp_path / "more"
    proc = subprocess.run([*cmd, "--out", str(more), "--init-adapter", str(out), "--distill-steps", "0",
                           "--distill-minutes", "0", "--task-steps", "1", "--no-bucket"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((more / "recipe.json").read_text())
    assert again["distill"] == {"steps": 0, "skipped": True} and again["task"]["steps"] == 1 and again["args"]["bf16"]
    assert not again["args"]["bucket"]
    assert again["init_adapter"]["recipe"]["task"]["steps"] == 2 and not (tmp_path / "more-distill").exists()
    assert again["task_first_chat"] == 0  # a trained adapter: its data starts again
    # phase 2 again from the checkpoint between the phases: it reads the chats the whole run read
    proc = subprocess.run([*cmd, "--out", str(tmp_path / "again"), "--init-adapter", str(out) + "-distill",
                           "--distill-steps", "0", "--distill-minutes", "0", "--task-steps", "1", "--no-bf16"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "again" / "recipe.json").read_text())["task_first_chat"] == 8
    # a starting adapter whose recipe.json is not what this script writes: one error naming it, nothing written
    broken = tmp_path / "broken"
    shutil.copytree(str(out) + "-distill", broken)
    for text, says in (("[1]", "expected a JSON object"), ("{not json", "not readable JSON"),
                       ('{"distill": {"steps": "two"}, "args": {}}', "distill.steps and args.batch")):
        (broken / "recipe.json").write_text(text)
        proc = subprocess.run([*cmd, "--out", str(tmp_path / "y"), "--init-adapter", str(broken), "--distill-steps",
                               "0", "--distill-minutes", "0", "--task-steps", "1"], capture_output=True, text=True,
                              timeout=600, cwd=REPO)
        assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert str(broken / "recipe.json") in proc.stderr and not (tmp_path / "y").exists()
    start, end = again["heldout_after_distill"], record["heldout_after"]
    assert abs(start["shadow_only_cross_entropy"] - end["shadow_only_cross_entropy"]) < 0.05, (start, end)
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "x"), "--init-adapter", str(tmp_path / "base")],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert bad.returncode != 0 and "--init-adapter" in bad.stderr and "shadow_config.json" in bad.stderr
    assert not (tmp_path / "x").exists()
    same = subprocess.run([*cmd, "--out", str(out), "--init-adapter", str(out)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert same.returncode != 0 and "is the --init-adapter directory" in same.stderr


def test_shadow_from_task_off_detaches_only_the_injected_state():
    """--no-shadow-from-task: the same logits, but base_shadow's loss reaches the injection and update only."""
    import torch
    import torch.nn.functional as F
    from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model

    script = _train_shadow_script()
    base = make_base_model("llama", 5, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=VOCAB_SIZE, tie_word_embeddings=True)
    peft = get_shadow_model(base, ShadowConfig(num_shadow_layers=1, injection_hidden_size=8, gate_hidden_size=8,
                                               dropout=0.0))
    randomize_adapter(peft, 6)  # shadow-peft zero-initializes the injection's up-projection
    model = ShadowForCausalLM(peft, shadow_loss_weight=0.0)
    ids = torch.randint(0, VOCAB_SIZE, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    mask = torch.ones_like(ids)
    grads, outs = {}, {}
    for from_task in (True, False):
        model.zero_grad(set_to_none=True)
        teacher, student, target = script.forward(model, ids, labels, mask, with_base_grad=True,
                                                  shadow_from_task=from_task)
        F.cross_entropy(teacher, target).backward()  # base_shadow's loss alone
        outs[from_task] = (teacher.detach(), student.detach())
        grads[from_task] = {name: p.grad for name, p in peft.named_parameters() if p.requires_grad}
    torch.testing.assert_close(outs[True], outs[False])
    reached = lambda g: g is not None and bool(g.any())
    for name, g in grads[False].items():
        if name.startswith("shadow_model."):
            assert not reached(g), name
        else:  # the injection and update: as before (the last layer's update feeds nothing, in both)
            assert reached(g) == reached(grads[True][name]), name
    assert any(reached(g) for n, g in grads[False].items() if not n.startswith("shadow_model."))
    assert any(reached(g) for n, g in grads[True].items() if n.startswith("shadow_model."))


def _train_shadow_script():
    """scripts/train_shadow.py as a module (it is a script, not a package module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shadow", REPO / "scripts" / "train_shadow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bucketed_batches_keep_every_chat_and_pad_less():
    import random

    train_shadow = _train_shadow_script()
    rng = random.Random(0)
    data = [([i] * rng.randint(5, 120), [0]) for i in range(1000)]  # (ids, labels) of random lengths
    out = train_shadow.bucketed(data, batch=16, seed=1)
    assert sorted(out) == sorted(data)
    padded = lambda rows: sum(max(len(r[0]) for r in rows[i:i + 16]) * 16 for i in range(0, len(rows), 16))  # noqa: E731
    assert padded(out) < 0.7 * padded(data)
    assert train_shadow.bucketed(data, batch=16, seed=1) == out  # seeded


def test_wordnet_chats(tmp_path):
    header = "  1 This software and database is being provided to you | not a synset\n"
    synsets = {"noun": ['02084071 05 n 02 dog 0 domestic_dog 0 000 | a domesticated canid; "the dog barked all night"',
                        "02085374 05 n 01 toy_dog 0 000 | any of several breeds of very small dogs"],
               "verb": ['02539334 34 v 01 oversee 0 000 | watch and direct; "Who is overseeing this project?"'],
               "adj": ["01382086 00 a 01 big(a) 0 000 | above average in size"], "adv": []}
    for pos, lines in synsets.items():
        (tmp_path / f"data.{pos}").write_text(header + "".join(line + "  \n" for line in lines), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "wordnet_chat.py"), "--out", str(tmp_path / "o"),
                           "--wordnet-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    train = [json.loads(line)["messages"] for line in (tmp_path / "o" / "train.jsonl").read_text().splitlines()]
    assert [m[1]["content"] for m in train] == [
        'dog (noun): a domesticated canid. For example: "The dog barked all night"',
        "toy dog (noun): any of several breeds of very small dogs.",
        'oversee (verb): watch and direct. For example: "Who is overseeing this project?"',
        "big (adjective): above average in size."]
    assert all('"' in m[0]["content"] and m[0]["role"] == "user" for m in train)


def test_init_layers_count_from_the_end_and_name_the_valid_range():
    """--init-layers 0,-1: the shadow starts as the base's first and last layers; a layer the base lacks is refused."""
    import argparse

    import pytest
    import torch

    script = _train_shadow_script()
    base = make_base_model("llama", 5, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           vocab_size=VOCAB_SIZE, tie_word_embeddings=True)
    args = argparse.Namespace(init_layers="0,-1", num_shadow_layers=2, injection_hidden_size=8, gate_hidden_size=8,
                              alpha=0.1)
    peft = script.from_base_layers(base, args)
    for shadow_layer, base_layer in zip(peft.shadow_model.layers, [base.model.layers[0], base.model.layers[3]]):
        for (name, got), want in zip(shadow_layer.state_dict().items(), base_layer.state_dict().values()):
            assert torch.equal(got, want), name
    with pytest.raises(SystemExit, match=r"the base has 4 layers \(valid: 0..3, or -1..-4\)"):
        script.from_base_layers(base, argparse.Namespace(**{**vars(args), "init_layers": "0,4"}))
    with pytest.raises(SystemExit, match="expected base layer indices separated by commas"):
        script.from_base_layers(base, argparse.Namespace(**{**vars(args), "init_layers": "0,last"}))
