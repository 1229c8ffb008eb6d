"""`shadow-edge web`: write the static site that runs an artifact's detached shadow in the browser."""

from __future__ import annotations

from pathlib import Path

EPILOG = """\
examples:
  shadow-edge web art/ --out site/
  shadow-edge web art/ --out site/ --escalate-to http://127.0.0.1:8000/v1 --threshold 0.4 --force
  python -m shadow_edge.web.static_server site/ --port 8080      # then open http://127.0.0.1:8080/

The site is static (index.html, shadow-edge.js, vendor/, model/, manifest.json): no build step and no
CDN; the JavaScript (transformers.js, onnxruntime-web's WASM build) is copied from web/node_modules
(`bash scripts/setup-web.sh`). The page streams the shadow's tokens, shows tokens/s, and escalates to a
`shadow-edge serve ... --cors-origin http://PAGE-ORIGIN` when the shadow's confidence is below the
threshold. URL parameters start a generation on load: ?prompt=...&max_new_tokens=16&temperature=0.7
&escalate_to=http://host:8000/v1&threshold=0.5&threads=2. Threads need a cross-origin isolated page
(the static_server above sends the headers).
"""


def add_parser(sub, fmt) -> None:
    from shadow_edge.web.options import WebOptions

    help_of = {f: WebOptions.__dataclass_fields__[f].metadata["help"] for f in WebOptions.__dataclass_fields__}
    p = sub.add_parser("web", help="a static web page running the detached shadow in the browser",
                       description="Write a static site that runs ART's detached shadow with transformers.js "
                                   "(onnxruntime-web, WASM) and escalates unsure answers to `shadow-edge serve`.",
                       epilog=EPILOG, formatter_class=fmt)
    p.add_argument("artifact", metavar="ART", help="artifact written by `shadow-edge export`")
    p.add_argument("--out", required=True, metavar="DIR", help="the site's directory (written atomically)")
    p.add_argument("--threshold", type=float, default=0.5, help=help_of["threshold"] + " (default 0.5)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help=help_of["max_new_tokens"])
    p.add_argument("--escalate-to", metavar="URL", help=help_of["escalate_to"])
    p.add_argument("--escalate-timeout", type=float, default=30.0, metavar="S", help=help_of["escalate_timeout_s"])
    p.add_argument("--node-modules", metavar="DIR", help=help_of["node_modules"])
    p.add_argument("--force", action="store_true", help=help_of["force"])
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the artifact's files")
    p.set_defaults(handler=run)


def run(args) -> int:
    from shadow_edge.errors import InputError

    try:
        import onnx  # noqa: F401  (inlining the weights needs it)
    except ImportError:
        raise InputError("`shadow-edge web` needs the export extras (onnx is missing); install them with "
                         "pip install 'shadow-edge[export]'") from None
    from shadow_edge.web import WebOptions, write_site

    options = WebOptions(args.threshold, args.max_new_tokens, args.escalate_to, args.escalate_timeout, args.force,
                         not args.no_verify, Path(args.node_modules) if args.node_modules else None)
    write_site(args.artifact, args.out, options)
    return 0
