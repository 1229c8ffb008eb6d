"""`shadow-edge eval`: perplexity, agreement, cascade curve and drift of an artifact on a text (no torch)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shadow_edge.errors import InputError

EVAL_EPILOG = """\
examples:
  shadow-edge eval ART --text heldout.txt
  shadow-edge eval ART --text heldout.txt --modes shadow_only,base_shadow --max-tokens 2000 --json q.json
  shadow-edge eval ART --text heldout.txt --plot cascade.png
  shadow-edge eval ART --text heldout.txt --compare ART_int8 --quiet     # int8 drift against ART
  shadow-edge eval ART --text heldout.txt --modes base_shadow,speculative --draft-tokens 8
  shadow-edge eval ART --chat heldout.jsonl --compare ART_int4   # assistant turns only

Perplexity: windows of the model's context (--window) every --stride tokens, each position
scored once. agreement: shadow_only's next-token argmax equals base_shadow's (teacher-forced);
also per bin of base_shadow's top-1 probability, beside how often base_shadow's own argmax is the
text's token there (where the combined model is unsure, even the text rarely picks its token).
Cascade curve: prompts cut from the text, answered greedily; per threshold, the share the
shadow answers and how often the cascade's answer equals base_shadow's. --compare: the
second artifact's perplexity delta, mean logits cosine, mean KL and top-1 agreement per mode.
speculative (only when listed in --modes; one draft/verify round per scored position):
teacher-forced acceptance of the shadow's greedy drafts for every k up to --draft-tokens
(left out: 8, the most the adaptive policy drafts),
the accepted-length histogram, acceptance by the shadow's confidence in its draft, and
speculative's own perplexity (scored through its verify pass; equals base_shadow's).
"""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("eval", help="perplexity, agreement, cascade curve and drift on a text (no torch)",
                       description="Measure an artifact's quality on a UTF-8 text with the torch-free runtime.",
                       epilog=EVAL_EPILOG, formatter_class=fmt)
    p.add_argument("artifact", metavar="ART", help="artifact directory written by `shadow-edge export`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", metavar="FILE", help="UTF-8 text file to evaluate on")
    src.add_argument("--chat", metavar="FILE.jsonl",
                     help='chat JSONL ({"messages": [...]} per line) rendered with the chat template; only the '
                          "assistant turns are scored (perplexity, agreement, --compare drift)")
    p.add_argument("--max-chats", type=int, metavar="N", help="--chat: score only the first N chats")
    p.add_argument("--modes", metavar="M,M", help="comma-separated modes (default: all of the artifact's; "
                                                   "cascade adds the cascade curve)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="evaluate only the text's first N tokens")
    p.add_argument("--window", type=int, metavar="N", help="tokens per window (default: the model's context)")
    p.add_argument("--stride", type=int, metavar="N", help="tokens between windows (default: window / 2)")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="windows per forward pass (default 8; fewer when their logits would pass 256 MiB)")
    p.add_argument("--prompts", type=int, default=16, metavar="N", help="cascade curve prompts (default 16)")
    p.add_argument("--compare", metavar="ART2", help="second artifact (e.g. int8): drift against ART")
    p.add_argument("--json", metavar="OUT", help="write every figure as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="plot the cascade curve (needs matplotlib)")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from shadow_edge.commands.strategy_flags import add_flags

    # speculative's own option, from its registration: eval drafts K tokens per position (adaptive: the most
    # the adaptive policy drafts) and reports acceptance for every k <= K
    add_flags(p, modes=("speculative",), title="speculative (in --modes): acceptance for every k up to its option")
    p.set_defaults(handler=run_eval)


class ProgressBar:
    """`eval [#####     ] 12/40` on stderr, redrawn in place; silent when off."""

    def __init__(self, on: bool, label: str = "eval", width: int = 30):
        self.on, self.label, self.width = on, label, width

    def __call__(self, done: int, total: int) -> None:
        if not self.on:
            return
        fill = int(self.width * done / max(total, 1))
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{' ' * (self.width - fill)}] {done}/{total}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def format_report(r) -> str:
    """The human table of an EvalReport."""
    lines = [f"artifact: {r.artifact}", f"tokens: {r.tokens} (window {r.window}, stride {r.stride})", "",
             f"{'mode':<12} {'ppl':>10} {'nll':>8} {'top-1 acc':>10} {'positions':>10}"]
    for q in r.modes.values():
        lines.append(f"{q.mode:<12} {q.perplexity:>10.3f} {q.nll:>8.4f} {q.top1_accuracy:>10.3f} {q.tokens:>10}")
    if r.agreement is not None:
        lines.append(f"\nagreement shadow_only vs base_shadow (top-1, teacher-forced): {r.agreement:.3f}")
        lines.append(f"  by base_shadow's top-1 probability: {'positions':>10} {'agreement':>10} "
                     f"{'base_shadow = text':>19}")
        for b in r.agreement_by_confidence:
            if b.positions:
                lines.append(f"  [{b.low:.1f}, {b.high:.1f}{']' if b.high >= 1 else ')'}{'':<25} {b.positions:>10} "
                             f"{b.agreement:>10.3f} {b.base_shadow_accuracy:>19.3f}")
    if r.drift:
        lines += ["", f"drift of {r.compare_artifact}:",
                  f"{'mode':<12} {'ppl':>10} {'delta':>9} {'rel':>8} {'cosine':>8} {'KL':>9} {'top-1 agr':>10}"]
        for d in r.drift.values():
            lines.append(f"{d.mode:<12} {d.perplexity:>10.3f} {d.perplexity_delta:>+9.3f} "
                         f"{100 * d.perplexity_rel:>+7.2f}% {d.logits_cosine:>8.5f} {d.kl:>9.5f} "
                         f"{d.top1_agreement:>10.3f}")
    if r.speculative:
        lines += ["", *format_speculative(r.speculative)]
    if r.cascade:
        lines += ["", "cascade curve (answers of the cascade vs base_shadow, greedy):",
                  f"{'threshold':>9} {'shadow share':>13} {'agreement':>10} {'token agr':>10}"]
        for p in r.cascade:
            lines.append(f"{p.threshold:>9.2f} {p.shadow_share:>13.3f} {p.agreement:>10.3f} "
                         f"{p.token_agreement:>10.3f}")
    return "\n".join(lines)


def format_speculative(s) -> list[str]:
    """The speculative section of the table: acceptance per k, accepted lengths, acceptance by confidence."""
    lines = ["speculative: the shadow's greedy drafts verified by base_shadow (teacher-forced, every position):",
             f"{'k':>3} {'acceptance':>11} {'accepted/round':>15} {'tokens/verify':>14} {'rounds':>7}"]
    for d in s.per_k:
        lines.append(f"{d.k:>3} {d.acceptance_rate:>11.3f} {d.accepted_per_round:>15.3f} "
                     f"{d.accepted_per_round + 1:>14.3f} {d.rounds:>7}")
    lines.append(f"rounds accepting n = 0..{s.draft_tokens} of {s.draft_tokens} drafts: "
                 + " ".join(map(str, s.accepted_histogram)))
    lines.append("acceptance by the shadow's probability of its draft token: " + ", ".join(
        f"[{b.low:.1f}, {b.high:.1f}{']' if b.high >= 1 else ')'} {b.acceptance_rate:.2f} ({b.drafts})"
        for b in s.by_confidence if b.drafts))
    if s.max_logprob_diff is not None:
        lines.append(f"max |log p speculative - log p base_shadow| of the text's tokens: {s.max_logprob_diff:.2e}")
    return lines


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib; pip install 'shadow-edge[plot]'") from None
    return plt


def plot_curve(report, out: str) -> None:
    """The cascade curve of an EvalReport as a PNG."""
    plt = _pyplot()
    xs = [p.threshold for p in report.cascade]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [p.shadow_share for p in report.cascade], marker="o", label="answered by the shadow")
    ax.plot(xs, [p.agreement for p in report.cascade], marker="s", label="cascade answer == base_shadow")
    ax.plot(xs, [p.token_agreement for p in report.cascade], marker="^", label="answer tokens == base_shadow's")
    ax.set_xlabel("cascade threshold (shadow confidence)")
    ax.set_ylabel("share of prompts")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"cascade curve: {Path(report.artifact).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def writable(flag: str, out: str) -> Path:
    """Check now, before the long work, that `out` can be written: a file in an existing folder that opens for
    writing (a probe file this check creates is removed again; an existing file is left as it is)."""
    path = Path(out)
    if path.is_dir():
        name = "cascade.png" if flag == "--plot" else "eval.json"
        raise InputError(f"{flag} {out}: is a directory; give a file name, e.g. {path / name}")
    if not path.parent.is_dir():
        raise InputError(f"{flag} {out}: the folder {path.parent} does not exist; create it or choose another path")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as e:
        raise InputError(f"{flag} {out}: cannot be written ({e.strerror or e}); choose another path") from None
    if not existed:
        path.unlink()
    return path


def write_output(flag: str, path: Path, write) -> None:
    try:
        write(path)
    except OSError as e:
        raise InputError(f"{flag} {path}: writing it failed ({e.strerror or e}); choose another path") from None


def given_strategy(args) -> dict:
    from shadow_edge.commands.strategy_flags import given

    return given(args)


def eval_draft_tokens(args) -> int:
    """K of the speculative section: speculative's own `draft_tokens` option (checked by its Options), or the
    adaptive policy's maximum when it is left out."""
    from shadow_edge.commands.strategy_flags import given
    from shadow_edge.runtime.strategies.speculative import ADAPTIVE_MAX, SpeculativeOptions

    k = SpeculativeOptions(**given(args)).draft_tokens
    return ADAPTIVE_MAX if k is None else k


def run_eval(args) -> int:
    from shadow_edge.runtime import ShadowRuntime
    from shadow_edge.runtime.classify import check_task
    from shadow_edge.runtime.evaluate import EvalOptions, evaluate

    options = EvalOptions(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()) if args.modes
                          else None, max_tokens=args.max_tokens, window=args.window, stride=args.stride,
                          batch=args.batch, prompts=args.prompts, draft_tokens=eval_draft_tokens(args),
                          full_draft_vocab=bool(given_strategy(args).get("full_draft_vocab", False)))
    outs = {flag: writable(flag, out) for flag, out in (("--json", args.json), ("--plot", args.plot)) if out}
    if args.plot:
        _pyplot()
        if options.modes is not None and "cascade" not in options.modes:
            raise InputError("--plot draws the cascade curve; add cascade to --modes")
    rt = ShadowRuntime.load(args.artifact, threads=args.threads)
    other = ShadowRuntime.load(args.compare, threads=args.threads) if args.compare else None
    for runtime, what in ((rt, "ART"), (other, "--compare")):
        if runtime is not None:
            try:
                check_task(runtime.manifest, "causal_lm")
            except InputError as e:
                raise InputError(f"{what} {runtime.art_dir}: eval scores next-token predictions, but {e}") from None
    progress = ProgressBar(not args.quiet and sys.stderr.isatty())
    if args.chat:
        from shadow_edge.runtime.chat_eval import evaluate_chats

        if args.plot:
            raise InputError("--plot draws the cascade curve, which eval measures on --text, not --chat")
        report = evaluate_chats(rt, Path(args.chat), options.modes, compare=other, batch=args.batch,
                                max_chats=args.max_chats, progress=progress)
    else:  # the file is tokenized in chunks
        report = evaluate(rt, Path(args.text), options, compare=other, progress=progress)
    print(format_report(report))
    if "--json" in outs:
        write_output("--json", outs["--json"], lambda p: p.write_text(json.dumps(report.to_dict(), indent=2) + "\n",
                                                                      encoding="utf-8"))
    if "--plot" in outs:
        write_output("--plot", outs["--plot"], lambda p: plot_curve(report, str(p)))
    return 0
