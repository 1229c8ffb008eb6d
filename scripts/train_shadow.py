"""Train a shadow-peft adapter on any HF causal-LM base from chat JSONL (assistant turns only), CPU, fixed seeds.

The recipe behind the demo pair (SmolLM2-135M-Instruct + a WordNet "define the word" shadow):

    apt-get install -y wordnet-base
    python scripts/wordnet_chat.py --out data/wordnet-chat
    python scripts/train_shadow.py --train data/wordnet-chat/train.jsonl --heldout data/wordnet-chat/heldout.jsonl \
        --out shadow_edge/demo_model/adapter        # --base DIR for any other HF base (default: SmolLM2, cached)

Chat JSONL: one {"messages": [{"role": ..., "content": ...}, ...]} per line, rendered with the base's chat
template; only assistant turns are scored (prompt masking). The base stays frozen; shadow-peft
(`get_shadow_model` + `ShadowForCausalLM`) holds the adapter. Two phases:

  1. distill: the shadow starts from copies of the base's layers (--init-layers) and final norm, and its
     shadow_only logits are distilled toward the model's own base_shadow logits (KL, assistant positions;
     the teacher runs without gradients, and while the injection is still zero it is the plain base). A
     shadow trained from random init on CPU learns too slowly to draft (tried: loss ~6.9 after 30 min).
  2. task: all adapter weights train on the task with base_shadow's cross-entropy, the same distillation term
     (backpropagating through the frozen base), so the shadow keeps tracking the combined model it drafts for, and
     shadow_only's own cross-entropy on the answers (--shadow-ce-weight), so that it can answer alone.
     base_shadow's cross-entropy trains the shadow's layers too, through the state they inject
     (--no-shadow-from-task: the injection and update only; a 15-minute pilot showed no gain, results/quality.md).

--init-adapter DIR starts from a trained adapter instead (e.g. the shipped one, trained further with
--distill-minutes 0 --task-minutes N); a phase of 0 steps and 0 minutes is skipped.

The defaults are the shipped adapter's recipe: 15 minutes of distillation, 75 of the task, length-bucketed batches
(--bucket) under CPU autocast to bfloat16 (--bf16; --no-bf16 on a CPU without bfloat16 matrix units).

Each phase runs --*-steps steps, or (steps 0) --*-minutes of wall time with the schedule over time (recipe.json
records the steps taken; rerun with them to reproduce on a step schedule). The adapter is saved in bfloat16 with recipe.json (timings, load, losses,
held-out cross-entropy and top-1 agreement of both modes). Export side only: never imported by the runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def render(tok, messages: list[dict], max_len: int) -> tuple[list[int], list[int]] | None:
    """Token ids of the chat and the labels (-100 outside assistant turns); None when it does not fit."""
    ids = list(_ids(tok.apply_chat_template(messages, tokenize=True)))
    labels = [-100] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tok.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=True)))
        end = len(_ids(tok.apply_chat_template(messages[:i + 1], tokenize=True)))
        labels[start:end] = ids[start:end]
    if len(ids) > max_len or all(x == -100 for x in labels):
        return None
    return ids, labels


def _ids(x):
    return x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x


def read_chats(path: str, tok, max_len: int, limit: int, seed: int | None = None) -> list[tuple[list[int], list[int]]]:
    """Up to `limit` rendered chats of the file (shuffled with `seed` first, when given)."""
    with open(path, encoding="utf-8") as f:
        lines = list(enumerate(f, 1))
    if seed is not None:
        random.Random(seed).shuffle(lines)
    out = []
    for n, line in lines:
        if len(out) == limit:
            break
        try:
            messages = json.loads(line)["messages"]
        except (ValueError, KeyError, TypeError):
            sys.exit(f"error: {path}:{n} is not a JSON object with a 'messages' list")
        encoded = render(tok, messages, max_len)
        if encoded is not None:
            out.append(encoded)
    if not out:
        sys.exit(f"error: {path} has no chat with an assistant turn within --max-len tokens")
    return out


def bucketed(data: list, batch: int, seed: int, group_batches: int = 50) -> list:
    """`data` reordered so that consecutive batches of `batch` hold chats of similar length (less right padding, so
    fewer positions per step): per group of `group_batches` batches (in the given, shuffled order), sorted by length,
    cut into batches, and the batches shuffled (seeded) within the group."""
    rng, out, size = random.Random(seed), [], batch * group_batches
    for g in range(0, len(data), size):
        group = sorted(data[g:g + size], key=lambda row: len(row[0]))
        batches = [group[i:i + batch] for i in range(0, len(group), batch)]
        rng.shuffle(batches)
        out += [row for b in batches for row in b]
    return out


def collate(rows, pad_id: int):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (i, l) in enumerate(rows):  # right padding: positions stay 0..n-1
        ids[r, :len(i)], labels[r, :len(l)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(l), 1
    return ids, labels, mask


def forward(model, ids, labels, mask, with_base_grad: bool, shadow_from_task: bool = True):
    """(base_shadow logits, shadow_only logits, targets) at the scored positions (each predicts labels[t+1]).
    shadow_from_task False: base_shadow's loss reaches the injection and update only, not the shadow's layers (the
    shadow state it injects is detached; the shadow learns from its own terms alone)."""
    target = labels[:, 1:]
    where = target != -100  # [b, t-1]
    first = int(where.any(0).nonzero()[0])  # the head runs only from the first scored position on
    keep = torch.arange(first, ids.shape[1] - 1)
    peft = model.peft_model
    run = peft.forward_with_shadow
    if with_base_grad and not shadow_from_task:
        shadow = peft._compute_initial_shadow_hidden(input_ids=ids, attention_mask=mask, position_ids=None,
                                                     inputs_embeds=None)
        peft._shadow_hidden_states = shadow.detach()  # what forward_with_shadow does, without the gradient path
        try:
            out = peft.base_model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
        finally:
            peft._shadow_hidden_states = None
    elif with_base_grad:
        out, shadow = run(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
    else:  # the teacher without gradients; the shadow (the student) with them, when enabled
        with torch.no_grad():
            out, _ = run(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep)
        shadow = model.peft_model._compute_initial_shadow_hidden(input_ids=ids, attention_mask=mask,
                                                                 position_ids=None, inputs_embeds=None)
    teacher = out.logits[where[:, first:]]  # [n, V]
    student = model.shadow_lm_head(shadow[:, :-1][where])  # [n, V]
    return teacher, student, target[where]


def kl(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher.detach(), -1), log_target=True,
                    reduction="batchmean")


def lr_at(progress: float, peak: float) -> float:
    """Linear warmup over the first 5% of the phase, then cosine decay to a tenth."""
    if progress < 0.05:
        return peak * max(progress, 0.005) / 0.05
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (progress - 0.05) / 0.95)))


def run_phase(name, model, params, loss_fn, data, steps, minutes, lr, batch, pad_id, log, record, bf16=False):
    """AdamW, warmup + cosine over `steps` steps, or (steps 0) over `minutes` of wall time, so that a machine
    whose load changes still ends its schedule on time. Appends the phase's figures to `record`. bf16: the forward
    and backward passes under CPU autocast to bfloat16 (weights and optimizer state stay float32)."""
    if not steps and not minutes:  # phase skipped (e.g. --distill-minutes 0 with --init-adapter)
        record[name] = {"steps": 0, "skipped": True}
        return 0
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0, losses, loads, step = time.perf_counter(), [], [], 0
    while True:
        progress = step / steps if steps else (time.perf_counter() - t0) / (minutes * 60)
        if progress >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(progress, lr) * group.get("scale", 1.0)
        rows = [data[(step * batch + i) % len(data)] for i in range(batch)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, parts = loss_fn(*collate(rows, pad_id))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], 1.0)
        opt.step()
        losses.append([round(x, 4) for x in parts])
        step += 1
        if step % 10 == 0:
            loads.append(os.getloadavg()[0])
            log(f"{name} step {step} ({progress:.0%}) " + " ".join(f"{x:.3f}" for x in parts)
                + f" ({time.perf_counter() - t0:.0f}s)")
    seconds = time.perf_counter() - t0
    record[name] = {"steps": step, "seconds": round(seconds, 1), "steps_per_second": round(step / seconds, 3),
                    "first_losses": losses[:3], "last_losses": losses[-3:],
                    "load_average": {"min": min(loads, default=0), "max": max(loads, default=0),
                                     "median": sorted(loads)[len(loads) // 2] if loads else 0}}
    return step


@torch.no_grad()
def heldout_figures(model, data, pad_id, batch=16) -> dict:
    """Cross-entropy per scored token of both modes and the share of positions where their argmax agrees."""
    tot = {"base_shadow": 0.0, "shadow_only": 0.0}
    agree = n = 0
    for i in range(0, len(data), batch):
        teacher, student, target = forward(model, *collate(data[i:i + batch], pad_id), with_base_grad=False)
        tot["base_shadow"] += F.cross_entropy(teacher, target, reduction="sum").item()
        tot["shadow_only"] += F.cross_entropy(student, target, reduction="sum").item()
        agree += int((teacher.argmax(-1) == student.argmax(-1)).sum())
        n += len(target)
    return {f"{k}_cross_entropy": round(v / n, 4) for k, v in tot.items()} | {
        "top1_agreement": round(agree / n, 4), "scored_tokens": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base", help="HF base dir (default: SmolLM2-135M-Instruct, obtained and cached)")
    ap.add_argument("--train", required=True, help="chat JSONL to train on")
    ap.add_argument("--heldout", required=True, help="chat JSONL held out (figures in recipe.json)")
    ap.add_argument("--out", required=True, help="adapter dir to write (shadow-peft format, bfloat16)")
    ap.add_argument("--init-adapter", help="start from this trained adapter (shadow-peft dir; its shadow_config.json "
                    "sets the shapes, --init-layers is not used), e.g. to train the shipped one further with "
                    "--distill-minutes 0, or to run phase 2 again from OUT-distill (the checkpoint between the "
                    "phases; phase 2 then reads the chats a whole run would)")
    ap.add_argument("--num-shadow-layers", type=int, default=3)
    ap.add_argument("--init-layers", default="0,1,-1", help="base layers copied into the shadow's layers, in order "
                    "(negative counts from the last: the default is the first two and the last, which drafted better "
                    "than the first three in the pilots, results/quality.md)")
    ap.add_argument("--injection-hidden-size", type=int, default=16)
    ap.add_argument("--gate-hidden-size", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=128, help="chats longer than this (tokens) are skipped")
    ap.add_argument("--distill-steps", type=int, default=0)
    ap.add_argument("--distill-minutes", type=float, default=15)
    ap.add_argument("--distill-lr", type=float, default=1e-3)
    ap.add_argument("--task-steps", type=int, default=0)
    ap.add_argument("--task-minutes", type=float, default=75)
    ap.add_argument("--task-lr", type=float, default=2e-3, help="injection/update (the shadow: --shadow-lr-scale)")
    ap.add_argument("--kl-weight", type=float, default=1.0, help="weight of the distillation term in phase 2")
    ap.add_argument("--shadow-ce-weight", type=float, default=1.0,
                    help="weight of shadow_only's own cross-entropy on the task in phase 2 (0: distillation only)")
    ap.add_argument("--shadow-lr-scale", type=float, default=1.0,
                    help="the shadow's learning rate in phase 2, as a share of --task-lr")
    ap.add_argument("--shadow-from-task", action=argparse.BooleanOptionalAction, default=True,
                    help="in phase 2, base_shadow's cross-entropy also trains the shadow's layers through the injected "
                    "state (--no-shadow-from-task: only the injection and update; the shadow learns from the "
                    "distillation term and its own cross-entropy)")
    ap.add_argument("--max-train-chats", type=int, default=40000, help="chats read (shuffled) from --train")
    ap.add_argument("--heldout-chats", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bucket", action=argparse.BooleanOptionalAction, default=True,
                    help="batch chats of similar length together (less padding: fewer positions per step)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="forward and backward under CPU autocast to bfloat16 (float32 weights and optimizer state); "
                    "faster where the CPU has bfloat16 matrix units (AMX); --no-bf16 on CPUs without them")
    ap.add_argument("--seed", type=int, default=1611)
    args = ap.parse_args(argv)
    if args.init_adapter:
        check_adapter_dir(Path(args.init_adapter))
        if Path(args.init_adapter).resolve() == Path(args.out).resolve():
            sys.exit(f"error: --out {args.out} is the --init-adapter directory; write the new adapter elsewhere "
                     "(the starting adapter would be overwritten)")

    from shadow_peft import ShadowForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t_start:7.0f}s] {msg}", file=sys.stderr, flush=True)
    if args.base:
        base_dir = Path(args.base)
    else:
        from shadow_edge.core.smollm2 import smollm2_checkpoint
        base_dir = smollm2_checkpoint(log=log)
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    train = read_chats(args.train, tok, args.max_len, args.max_train_chats, seed=args.seed)
    if args.bucket:
        train = bucketed(train, args.batch, args.seed)
    heldout = read_chats(args.heldout, tok, args.max_len, args.heldout_chats)
    log(f"{len(train)} train chats, {len(heldout)} held-out chats")

    record: dict = {"base": str(base_dir), "args": vars(args), "torch": torch.__version__}
    if args.init_adapter:
        peft, record["init_adapter"] = from_adapter(base, Path(args.init_adapter))
    else:
        peft = from_base_layers(base, args)
    model = ShadowForCausalLM(peft, shadow_loss_weight=0.0)
    model.train()
    shadow_params = list(peft.shadow_model.parameters())
    adapter_params = list(peft.shadow_injection_model.parameters()) + list(peft.shadow_update_model.parameters())

    def distill_loss(ids, labels, mask):
        teacher, student, _ = forward(model, ids, labels, mask, with_base_grad=False)
        loss = kl(teacher, student)
        return loss, [loss.item()]

    def task_loss(ids, labels, mask):
        teacher, student, target = forward(model, ids, labels, mask, with_base_grad=True,
                                           shadow_from_task=args.shadow_from_task)
        ce = F.cross_entropy(teacher, target)
        distill = kl(teacher, student)
        own = F.cross_entropy(student, target)
        loss = ce + args.kl_weight * distill + args.shadow_ce_weight * own
        return loss, [ce.item(), distill.item(), own.item()]

    done = run_phase("distill", model, [{"params": shadow_params}], distill_loss, train, args.distill_steps,
                     args.distill_minutes, args.distill_lr, args.batch, pad_id, log, record, args.bf16)
    record["heldout_after_distill"] = heldout_figures(model, heldout, pad_id)
    log(f"held-out after distill: {record['heldout_after_distill']}")
    if done:
        save(model, Path(str(args.out) + "-distill"), record, log)  # a checkpoint between the phases
    first = done * args.batch if done or not args.init_adapter else resumed_first_chat(record["init_adapter"])
    record["task_first_chat"] = first = first % len(train)
    rest = train[first:] + train[:first]
    run_phase("task", model, [{"params": adapter_params}, {"params": shadow_params, "scale": args.shadow_lr_scale}], task_loss,
              rest, args.task_steps, args.task_minutes, args.task_lr, args.batch, pad_id, log, record, args.bf16)
    model.eval()
    record["heldout_after"] = heldout_figures(model, heldout, pad_id)
    log(f"held-out after: {record['heldout_after']}")
    record["total_seconds"] = round(time.perf_counter() - t_start, 1)

    save(model, Path(args.out), record, log)
    return 0


def from_base_layers(base, args):
    """A new adapter whose shadow layers and final norm start as copies of the base's (--init-layers)."""
    from shadow_peft import ShadowConfig, get_shadow_model

    n = len(base.model.layers)
    try:
        init = [int(x) for x in args.init_layers.split(",")]
    except ValueError:
        sys.exit(f"error: --init-layers {args.init_layers!r}: expected base layer indices separated by commas, "
                 "e.g. 0,1,-1")
    if len(init) != args.num_shadow_layers:
        sys.exit(f"error: --init-layers names {len(init)} layers; --num-shadow-layers is {args.num_shadow_layers}")
    if any(not -n <= i < n for i in init):
        sys.exit(f"error: --init-layers {args.init_layers}: the base has {n} layers (valid: 0..{n - 1}, or -1..-{n})")
    copies = [{k: v.clone() for k, v in base.model.layers[i].state_dict().items()} for i in init]
    norm = {k: v.clone() for k, v in base.model.norm.state_dict().items()}
    cfg = ShadowConfig(num_shadow_layers=args.num_shadow_layers, injection_hidden_size=args.injection_hidden_size,
                       gate_hidden_size=args.gate_hidden_size, alpha=args.alpha, dropout=0.0)
    peft = get_shadow_model(base, cfg)
    for layer, state in zip(peft.shadow_model.layers, copies):
        layer.load_state_dict(state)
    peft.shadow_model.norm.load_state_dict(norm)
    return peft


def check_adapter_dir(path: Path) -> None:
    if not (path / "shadow_config.json").is_file() or not (path / "shadow_adapter.safetensors").is_file():
        sys.exit(f"error: --init-adapter {path} needs shadow_config.json and shadow_adapter.safetensors "
                 "(a shadow-peft adapter directory, as this script writes)")


def from_adapter(base, path: Path):
    """(the model with the trained adapter at `path` in float32, what recipe.json records of it)."""
    from safetensors.torch import load_file
    from shadow_peft import ShadowConfig, get_shadow_model

    weights = path / "shadow_adapter.safetensors"
    try:
        peft = get_shadow_model(base, ShadowConfig.from_pretrained(path))
        peft.load_adapter_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    except (RuntimeError, ValueError, TypeError) as e:  # shapes that do not fit, a malformed shadow_config.json
        sys.exit(f"error: --init-adapter {path} does not fit this base (or its shadow_config.json is not valid): "
                 f"{str(e)[:400]}")
    recipe = path / "recipe.json"
    try:
        prior = json.loads(recipe.read_text(encoding="utf-8")) if recipe.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        sys.exit(f"error: --init-adapter {recipe} is not readable JSON ({e}); fix or remove it (it is only a record)")
    if prior is not None and not isinstance(prior, dict):
        sys.exit(f"error: --init-adapter {recipe}: expected a JSON object (a train_shadow.py record), got "
                 f"{type(prior).__name__}; fix or remove it")
    return peft, {"path": str(path), "recipe": prior}


def resumed_first_chat(init_adapter: dict) -> int:
    """Where a whole run's phase 2 starts reading chats, when --init-adapter is the checkpoint between its phases
    (OUT-distill: its recipe has a distillation and no task phase); 0 for any other adapter."""
    prior = init_adapter["recipe"] or {}
    if "task" in prior or not prior.get("distill"):
        return 0
    try:
        return int(prior["distill"]["steps"]) * int(prior["args"]["batch"])
    except (KeyError, TypeError, ValueError):
        sys.exit(f"error: --init-adapter {init_adapter['path']}/recipe.json: a checkpoint between the phases records "
                 "distill.steps and args.batch as integers; fix or remove the file")


def save(model, out: Path, record: dict, log) -> None:
    """The adapter in bfloat16 (shadow-peft's own save_pretrained) and recipe.json."""
    out.mkdir(parents=True, exist_ok=True)
    adapter = model.peft_model
    kept = {name: p.detach().clone() for name, p in adapter.named_parameters() if p.requires_grad}
    for name, p in adapter.named_parameters():
        if name in kept:
            p.data = p.data.to(torch.bfloat16)
    model.save_pretrained(out)
    for name, p in adapter.named_parameters():  # back to float32 (training may go on)
        if name in kept:
            p.data = kept[name]
    (out / "recipe.json").write_text(json.dumps(record, indent=1) + "\n")
    log(f"saved {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
