"""The shipped demo pair: it loads, exports and validates; it is far better than uniform on held-out text of
both domains; the adapter helps on its domain; and the recipe that trained it still runs (a few steps)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from shadow_edge.demo_model import DEMO_MODEL, HELDOUT
from shadow_edge.runtime.evaluate import EvalOptions, evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_rt(tmp_path_factory):
    from shadow_edge.export import ExportOptions, export_artifact
    from shadow_edge.runtime import ShadowRuntime

    art = tmp_path_factory.mktemp("demo") / "art"
    manifest = export_artifact(DEMO_MODEL / "base", DEMO_MODEL / "adapter", art,
                               options=ExportOptions(plain_backbone=True), progress=lambda m: None)
    assert manifest.validation  # validated against PyTorch at export
    return ShadowRuntime.load(art, threads=1)


@pytest.mark.parametrize("domain", sorted(HELDOUT))
def test_heldout_perplexity_far_below_uniform(demo_rt, domain):
    report = evaluate(demo_rt, HELDOUT[domain].read_text(encoding="utf-8"),
                      EvalOptions(modes=("shadow_only", "base_shadow", "base_plain"), max_tokens=600))
    ppl = {m: q.perplexity for m, q in report.modes.items()}
    for mode in ("shadow_only", "base_shadow"):
        assert ppl[mode] < demo_rt.vocab_size / 10, ppl  # uniform would be vocab_size
    if domain == "fortunes":  # the adapter was trained on fortunes: it must beat the base alone there
        assert ppl["base_shadow"] < 0.8 * ppl["base_plain"], ppl


def recipe(out, *args):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train_demo_pair.py"), "--out", str(out),
         "--base-text", str(HELDOUT["kjv"]), "--adapter-text", str(HELDOUT["fortunes"]), "--adapter-steps", "2",
         "--adapter-batch", "2", "--injection-hidden-size", "8", "--gate-hidden-size", "4", *args],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_recipe_runs_a_few_steps(tmp_path):
    out = tmp_path / "pair"
    out.mkdir()
    (out / "__init__.py").write_text("# not the script's\n")  # --force replaces only what the script writes
    recipe(out, "--base-text", str(HELDOUT["wordnet"]), "--vocab-size", "300", "--hidden-size", "32", "--num-layers",
           "2", "--intermediate-size", "64", "--context", "32", "--base-steps", "3", "--base-batch", "2",
           "--num-shadow-layers", "1", "--force")
    from shadow_edge.core.checkpoint import load_spec

    spec = load_spec(out / "base", out / "adapter")
    assert spec is not None
    ups = load_file(str(out / "adapter" / "shadow_adapter.safetensors"))["shadow_injection_model.injection_ups"]
    assert abs(ups).max() > 0  # shadow-peft zero-initializes them: nonzero means the adapter was trained
    record = json.loads((out / "recipe.json").read_text())
    assert record["recipe"]["base_steps"] == 3 and record["total_seconds"] > 0
    for name in ("kjv", "wordnet", "adapter"):  # one held-out sample per corpus, named after its --base-text file
        assert (out / "heldout" / f"{name}.txt").read_text().strip()
    assert record["base_corpora"] == ["kjv", "wordnet"] and set(record["base_train_tokens"]) == {"kjv", "wordnet"}
    assert (out / "__init__.py").read_text() == "# not the script's\n" and sorted(p.name for p in out.iterdir()) == [
        "__init__.py", "adapter", "base", "heldout", "recipe.json"]


def test_recipe_reuses_a_base_and_trains_the_same_adapter(tmp_path):
    """--base copies the base unchanged, keeps its knobs, and (the adapter has its own seed) trains the very
    adapter the full run trained on it."""
    full, reused = tmp_path / "full", tmp_path / "reused"
    recipe(full, "--vocab-size", "300", "--hidden-size", "32", "--num-layers", "3", "--intermediate-size", "64",
           "--context", "32", "--base-steps", "2", "--base-batch", "2", "--num-shadow-layers", "2")
    recipe(reused, "--base", str(full / "base"), "--num-shadow-layers", "2")
    for f in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (full / "base" / f).read_bytes() == (reused / "base" / f).read_bytes()
    a, b = (load_file(str(d / "adapter" / "shadow_adapter.safetensors")) for d in (full, reused))
    assert sorted(a) == sorted(b) and all((a[k] == b[k]).all() for k in a)
    rec_full, rec = (json.loads((d / "recipe.json").read_text()) for d in (full, reused))
    assert rec["recipe"] == rec_full["recipe"]  # the base's knobs come from the base's recipe.json
    assert rec["base_reused_from"] == str(full / "base") and rec["base_train_seconds"] == rec_full["base_train_seconds"]


def test_wordnet_reader(tmp_path, monkeypatch):
    """WordNet's data files become "word: gloss. Example." entries, WORDNET_PER_DOC per document."""
    spec = importlib.util.spec_from_file_location("train_demo_pair", REPO / "scripts" / "train_demo_pair.py")
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_demo_pair", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    header = "  1 This software and database is being provided to you | not a synset\n"
    synsets = {"noun": ['02084071 05 n 02 dog 0 domestic_dog 0 000 | a domesticated canid; "the dog barked all night"',
                        "02085374 05 n 01 toy_dog 0 000 | any of several breeds of very small dogs"],
               "verb": ['02539334 34 v 01 oversee 0 000 | watch and direct; "Who is overseeing this project?"'],
               "adj": ["01382086 00 a 01 big(a) 0 000 | above average in size"], "adv": []}
    for pos, lines in synsets.items():
        (tmp_path / f"data.{pos}").write_text(header + "".join(line + "  \n" for line in lines), encoding="utf-8")
    monkeypatch.setattr(script, "WORDNET_DIR", tmp_path)
    monkeypatch.setattr(script, "WORDNET_PER_DOC", 3)
    assert script.wordnet_docs() == [
        "dog: a domesticated canid. The dog barked all night.\ntoy dog: any of several breeds of very small dogs.\n"
        "oversee: watch and direct. Who is overseeing this project?", "big: above average in size."]
