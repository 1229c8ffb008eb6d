"""`shadow-edge eval` and its API: perplexity against direct computations (runtime and shadow_peft), windows,
agreement, drift, the cascade curve, and one clear error per bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from runtime_fixtures import artifact_of, runtime_once, tiny_artifact, tiny_rt  # noqa: F401  (fixtures)
from shadow_edge.cli import main
from shadow_edge.errors import InputError
from shadow_edge.runtime.evaluate import EvalOptions, evaluate, windows

TEXT = ("The river runs past the old mill, under the stone bridge, and down to the quiet harbour. "
        "Children walk to school along the river, counting boats and talking about the weather.")
REL = 1e-4


def direct_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean NLL of ids[1:] under logits [t, V] of one full pass."""
    z = logits[:-1].astype(np.float64)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    return float(np.mean(lse - z[np.arange(len(ids) - 1), ids[1:]]))


@pytest.mark.parametrize("n,window,stride", [(2, 2, 1), (10, 10, 5), (50, 16, 8), (51, 16, 15), (40, 7, 1)])
def test_windows_score_every_position_once_with_context(n, window, stride):
    seen = []
    for begin, end, first in windows(n, window, stride):
        assert 0 <= begin < first <= end <= n and end - begin <= window
        seen += range(first, end)
    assert seen == list(range(1, n))


def test_perplexity_equals_runtime_forward(tiny_rt):
    ids = np.asarray(tiny_rt.codec.encode(TEXT, add_special_tokens=False))
    report = evaluate(tiny_rt, TEXT, EvalOptions(modes=("shadow_only", "base_shadow")))
    assert report.tokens == len(ids) and report.window == len(ids)  # one window: the whole text
    for mode in ("shadow_only", "base_shadow"):
        nll = direct_nll(tiny_rt.forward(ids[None], mode=mode)[0], ids)
        q = report.modes[mode]
        assert q.tokens == len(ids) - 1
        assert q.perplexity == pytest.approx(math.exp(nll), rel=REL)
    a = tiny_rt.forward(ids[None], mode="shadow_only")[0, :-1].argmax(-1)
    z = tiny_rt.forward(ids[None], mode="base_shadow")[0, :-1].astype(np.float64)
    b = z.argmax(-1)
    assert report.agreement == pytest.approx(float((a == b).mean()))
    # by base_shadow's top-1 probability: every position in one bin, each bin's figures computed directly
    top = 1 / np.exp(z - z.max(-1, keepdims=True)).sum(-1)
    bins = report.agreement_by_confidence
    assert [b_.low for b_ in bins] == [0.0, 0.2, 0.4, 0.6, 0.8] and sum(b_.positions for b_ in bins) == len(ids) - 1
    for bin_ in bins:
        inside = (top >= bin_.low) & ((top < bin_.high) if bin_.high < 1 else (top <= 1))
        assert bin_.positions == inside.sum()
        if inside.any():
            assert bin_.agreement == pytest.approx(float((a == b)[inside].mean()))
            assert bin_.base_shadow_accuracy == pytest.approx(float((b == ids[1:])[inside].mean()))
        else:
            assert bin_.agreement is None and bin_.base_shadow_accuracy is None


def test_windowed_perplexity_scores_each_position_with_its_window(tiny_rt):
    """Windows of 12 every 5 tokens: each position's NLL comes from the window that scores it."""
    ids = np.asarray(tiny_rt.codec.encode(TEXT, add_special_tokens=False))
    report = evaluate(tiny_rt, TEXT, EvalOptions(modes=("base_shadow",), window=12, stride=5))
    nlls = []
    for begin, end, first in windows(len(ids), 12, 5):
        z = tiny_rt.forward(ids[None, begin:end], mode="base_shadow")[0].astype(np.float64)
        for p in range(first, end):
            row = z[p - begin - 1]
            nlls.append(np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[p]])
    assert len(nlls) == len(ids) - 1
    assert report.modes["base_shadow"].perplexity == pytest.approx(math.exp(np.mean(nlls)), rel=REL)


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow"])
def test_perplexity_equals_shadow_peft(artifact_of, mode):
    """The export side's oracle: shadow_peft's own logits on random ids give the same perplexity."""
    case, art = artifact_of("qwen3_implicit")
    rt = runtime_once("qwen3_implicit", art)
    ids = np.random.default_rng(7).integers(0, case.vocab_size, 40)
    with torch.no_grad():
        logits = case.oracle(mode)(input_ids=torch.as_tensor(ids[None])).logits[0].double()
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.as_tensor(ids[1:])).item()
    report = evaluate(rt, ids, EvalOptions(modes=(mode,)))
    assert report.modes[mode].perplexity == pytest.approx(math.exp(nll), rel=REL)


@pytest.mark.parametrize("mode", ["shadow_only", "base_shadow"])
def test_batched_windows_equal_shadow_peft_per_window(artifact_of, mode):
    """Windows batched and left-padded (the last one is shorter): each position's NLL is shadow_peft's on its
    window alone."""
    case, art = artifact_of("qwen3_implicit")
    rt = runtime_once("qwen3_implicit", art)
    ids = np.random.default_rng(8).integers(0, case.vocab_size, 45)
    spans = windows(len(ids), 16, 7)
    assert len({end - begin for begin, end, _ in spans}) > 1  # some window is padded in its batch
    nlls = []
    with torch.no_grad():
        for begin, end, first in spans:
            logits = case.oracle(mode)(input_ids=torch.as_tensor(ids[None, begin:end])).logits[0].double()
            rows = logits[first - begin - 1:end - begin - 1]
            nlls += torch.nn.functional.cross_entropy(rows, torch.as_tensor(ids[first:end]), reduction="none").tolist()
    report = evaluate(rt, ids, EvalOptions(modes=(mode,), window=16, stride=7, batch=4))
    assert report.modes[mode].perplexity == pytest.approx(math.exp(np.mean(nlls)), rel=REL)


def test_batching_changes_no_figure(tiny_rt, monkeypatch):
    """One window per pass, three, all at once, or capped by the logits budget: the same report."""
    import shadow_edge.runtime.evaluate as ev

    def run(batch):
        opts = EvalOptions(modes=("shadow_only", "base_shadow"), window=10, stride=4, batch=batch)
        return evaluate(tiny_rt, TEXT, opts, compare=tiny_rt)

    one = run(1)
    monkeypatch.setattr(ev, "LOGITS_BUDGET", 1)  # smaller than one window's logits: one window per pass
    capped = run(64)
    monkeypatch.undo()
    for other in (run(3), run(64), capped):
        assert other.agreement == one.agreement
        for mode, q in one.modes.items():
            assert other.modes[mode].tokens == q.tokens
            assert other.modes[mode].perplexity == pytest.approx(q.perplexity, rel=1e-5)
            assert other.modes[mode].top1_accuracy == q.top1_accuracy
            assert other.drift[mode].kl == pytest.approx(0, abs=1e-9)


def test_compare_with_itself_has_no_drift(tiny_rt):
    report = evaluate(tiny_rt, TEXT, EvalOptions(modes=("shadow_only", "base_shadow"), window=16), compare=tiny_rt)
    for d in report.drift.values():
        assert d.perplexity_delta == pytest.approx(0, abs=1e-9) and d.kl == pytest.approx(0, abs=1e-9)
        assert d.logits_cosine == pytest.approx(1, abs=1e-6) and d.top1_agreement == 1.0


def test_cascade_curve_matches_the_runtime_cascade(tiny_rt):
    ids = np.asarray(tiny_rt.codec.encode(TEXT, add_special_tokens=False))
    report = evaluate(tiny_rt, TEXT, EvalOptions(modes=("cascade",), prompts=4, prompt_tokens=6,
                                                 answer_tokens=4, thresholds=(0.0, 0.5, 1.0)))
    assert report.modes == {} and [p.threshold for p in report.cascade] == [0.0, 0.5, 1.0]
    assert report.cascade[0].shadow_share == 1.0 and report.cascade[-1].agreement == 1.0
    starts = np.linspace(0, len(ids) - 7, num=4).round().astype(int)
    prompts = [ids[s:s + 6].tolist() for s in starts]
    for point in report.cascade:  # the runtime's own cascade at each threshold gives the same decisions
        r = tiny_rt.generate(prompts, mode="cascade", max_new_tokens=4, cascade_threshold=point.threshold)
        combined = tiny_rt.generate(prompts, mode="base_shadow", max_new_tokens=4)
        assert point.shadow_share == pytest.approx(np.mean([a == "shadow_only" for a in r.answered_by]))
        assert point.agreement == pytest.approx(np.mean([a == b for a, b in zip(r.token_ids, combined.token_ids)]))
        same = [sum(x == y for x, y in zip(a, b)) / max(len(a), len(b))
                for a, b in zip(r.token_ids, combined.token_ids)]
        assert point.token_agreement == pytest.approx(np.mean(same))


def test_cli_eval_json_plot_and_compare(tmp_path, tiny_artifact, capsys):
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    out_json, out_png = tmp_path / "q.json", tmp_path / "c.png"
    rc = main(["eval", str(tiny_artifact), "--text", str(text), "--json", str(out_json), "--plot", str(out_png),
               "--compare", str(tiny_artifact), "--prompts", "3", "--threads", "1", "--window", "16"])
    out = capsys.readouterr().out
    assert rc == 0 and "shadow_only" in out and "agreement" in out and "cascade curve" in out and "drift" in out
    data = json.loads(out_json.read_text())
    assert set(data["modes"]) == {"shadow_only", "base_shadow"} and len(data["cascade"]) == 21
    assert set(data["drift"]) == {"shadow_only", "base_shadow"} and out_png.stat().st_size > 1000


@pytest.mark.parametrize("content,args,expected", [
    (None, [], "no such file"),
    (b"   \n", [], "empty"),
    (b"caf\xe9 au lait", [], "not UTF-8"),
    (b"a", [], "at least 2"),
    (TEXT.encode(), ["--modes", "base_plain"], "no mode 'base_plain'"),
    (TEXT.encode(), ["--modes", "shadow_only", "--plot", "x.png"], "add cascade to --modes"),
    (TEXT.encode(), ["--window", "8", "--stride", "8"], "stride 8 must be smaller"),
    (TEXT.encode(), ["--json", "no/such/dir/q.json"], "does not exist"),
])
def test_cli_eval_bad_input_is_one_clear_line(tmp_path, tiny_artifact, capsys, content, args, expected):
    path = tmp_path / "in.txt"
    if content is not None:
        path.write_bytes(content)
    rc = main(["eval", str(tiny_artifact), "--text", str(path), "--threads", "1", "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_api_rejects_a_compare_artifact_of_another_vocabulary(tiny_rt, artifact_of):
    case, art = artifact_of("qwen3_implicit")
    with pytest.raises(InputError, match="vocab_size"):
        evaluate(tiny_rt, TEXT, EvalOptions(modes=("shadow_only",)), compare=runtime_once("qwen3_implicit", art))


def test_progress_bar_draws_on_stderr_only_when_on(capsys):
    from shadow_edge.commands.eval import ProgressBar

    ProgressBar(False)(1, 2)
    assert capsys.readouterr().err == ""
    bar = ProgressBar(True, width=4)
    bar(1, 2)
    bar(2, 2)
    assert capsys.readouterr().err == "\reval [##  ] 1/2\reval [####] 2/2\n"
