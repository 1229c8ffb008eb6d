"""`shadow-edge classify`: label texts (or token ids) with a sequence-classifier artifact; no torch."""

from __future__ import annotations

import argparse
import json

EPILOG = """\
examples:
  shadow-edge classify art-cls/ --text "great phone, terrible battery"
  shadow-edge classify art-cls/ --text "first review" --text "second review" --mode shadow_only --json
  shadow-edge classify art-cls/ --input-ids 12,7,99 --input-ids 5,6
  shadow-edge classify base-cls/ --adapter spam=packs/spam --use-adapter spam --text "win a prize"

The artifact must come from a sequence-classification adapter (shadow-peft's
ShadowForSequenceClassification, or a PEFT Shadow adapter with task_type SEQ_CLS) on a
*ForSequenceClassification base. Inputs are classified together in left-padded batches
(--batch-size); each is labelled from its last real token. Prints one line per input
(label, probability, then every label's probability), or with --json the label ids,
names, probabilities and ms per sequence.
"""


def add_parser(sub, fmt) -> None:
    p = sub.add_parser("classify", help="label texts with a classifier artifact (no torch)",
                       description="Classify inputs with an exported sequence-classification artifact.",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("artifact", metavar="ART", help="artifact exported from a classification adapter")
    p.add_argument("--mode", default="base_shadow", help="base_shadow (default) or shadow_only (detached shadow)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="TEXT", help="text to classify (repeatable)")
    src.add_argument("--input-ids", action="append", metavar="1,2,3",
                     help="token ids to classify, comma-separated (repeatable)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="inputs per forward pass (default 16)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads (default: all cores)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact's files")
    p.add_argument("--adapter", action="append", metavar="NAME=PACK",
                   help="load a classifier adapter pack exported --against ART under NAME (repeatable)")
    p.add_argument("--use-adapter", metavar="NAME", help="classify with the pack loaded as NAME")
    p.set_defaults(handler=classify_command)


def classify_command(args: argparse.Namespace) -> int:
    from shadow_edge.commands.run import parse_adapters, parse_ids
    from shadow_edge.runtime import ShadowRuntime

    inputs = args.text if args.text is not None else [parse_ids(i) for i in args.input_ids]
    rt = ShadowRuntime.load(args.artifact, threads=args.threads, verify=not args.no_verify, modes=(args.mode,),
                            adapters=parse_adapters(args.adapter))
    result = rt.classify(inputs, mode=args.mode, batch_size=args.batch_size, adapter=args.use_adapter)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
        return 0
    names = rt.manifest.model["id2label"]
    for label_id, label, probs in zip(result.label_ids, result.labels, result.probabilities):
        spread = ", ".join(f"{n} {p:.3f}" for n, p in zip(names, probs))
        print(f"{label}\t{probs[label_id]:.3f}\t({spread})")
    return 0
