"""Running a docs page's blocks: its working directory, the inputs its `setup` marker names, shell and Python blocks.

`DocInputs` builds the shared inputs once per session (tiny offline models, exported without validation: the
exporter's own tests validate); `PageRun` runs one page's blocks in order in a fresh directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .doc_blocks import REPO, Block, shell_commands

@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


SHELL_META = re.compile(r"[|&;<>$`()]")
BLOCK_TIMEOUT_S = 300


def _chats(corpus: str) -> str:
    lines = [ln for ln in corpus.splitlines() if ln.strip()]
    chats = [{"messages": [{"role": "user", "content": f"Say line {i + 1}."},
                           {"role": "assistant", "content": line}]} for i, line in enumerate(lines[:6])]
    return "".join(json.dumps(c) + "\n" for c in chats)


class DocInputs:
    """The inputs a page may ask for (docs/contributing.md lists them), each built at most once."""

    def __init__(self, root: Path, tiny):
        self.root, self.tiny, self.built = root, tiny, {}

    def _export(self, name: str, base: Path, adapter: Path, **opts) -> Path:
        from shadow_edge.export import ExportOptions, export_artifact

        out = self.root / name
        export_artifact(base, adapter, out, options=ExportOptions(validate=False, **opts), progress=lambda m: None)
        return out

    def _adapters(self) -> Path:
        import torch
        from shadow_edge.core.tiny import SEED, _write_adapter

        out = self.root / "adapters"
        for i, name in enumerate(("sql", "chat")):
            _write_adapter(out / name, self.tiny.base_dir, torch.Generator().manual_seed(SEED + 100 + i))
        return out

    def _classifier(self) -> Path:
        from cls_factories import make_cls_case

        case = make_cls_case(self.root / "cls", "sp_qwen3", self.tiny.base_dir)
        return self._export("art-cls", case.base_dir, case.adapter_dir)

    def get(self, name: str) -> Path:
        if name not in self.built:
            base, adapter = self.tiny.base_dir, self.tiny.adapter_dir
            makers = {
                "art": lambda: self._export("art", base, adapter),
                "art-int4": lambda: self._export("art-int4", base, adapter, quantize="int4", quant_compute="float32"),
                "art-cls": self._classifier,
                "adapters-sql-chat": self._adapters,
            }
            if name not in makers:
                raise KeyError(f"unknown docs-test setup {name!r}; known: {sorted(makers)} (docs/contributing.md)")
            self.built[name] = makers[name]()
        return self.built[name]

    def seed(self, workdir: Path, names: list[str]) -> None:
        from shadow_edge.core.tiny import CORPUS

        shutil.copytree(self.tiny.base_dir, workdir / "base")
        shutil.copytree(self.tiny.adapter_dir, workdir / "adapter")
        (workdir / "heldout.txt").write_text(CORPUS, encoding="utf-8")
        (workdir / "heldout.jsonl").write_text(_chats(CORPUS), encoding="utf-8")
        for name in dict.fromkeys(names):
            src = self.get(name)
            if name == "adapters-sql-chat":
                for sub in src.iterdir():
                    shutil.copytree(sub, workdir / sub.name)
            else:
                shutil.copytree(src, workdir / name, copy_function=os.link)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PageRun:
    """One page's blocks, in order, in `workdir`; background servers are stopped by `close()`."""

    def __init__(self, workdir: Path, blocks: list[Block]):
        self.workdir, self.blocks = workdir, blocks
        self.namespace: dict = {"__name__": "__docs__"}
        self.servers: list[tuple[subprocess.Popen, Path]] = []
        bin_dir = workdir.parent / f".bin-{workdir.name}"
        bin_dir.mkdir()
        for name, target in (("shadow-edge", f'"{sys.executable}" -m shadow_edge.cli'), ("python", f'"{sys.executable}"')):
            (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
            (bin_dir / name).chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        for block in blocks:  # a server's documented port becomes a free one in every block of the page
            if "port" in block.options:
                port = str(_free_port())
                for b in blocks:
                    b.code = re.sub(rf"(?<=[:\s=]){block.options['port']}\b", port, b.code)
                block.options["port"] = port

    def run(self, block: Block) -> None:
        start = time.perf_counter()
        try:
            self._run(block)
        finally:
            if os.environ.get("SHADOW_EDGE_DOCS_TIMES"):
                print(f"{time.perf_counter() - start:7.2f}s {block.where}", file=sys.__stderr__)

    def _run(self, block: Block) -> None:
        if block.lang == "python":
            self._python(block)
        elif "background" in block.options:
            self._background(block)
        else:
            self._shell(block)

    def _python(self, block: Block) -> None:
        code = compile(block.code, block.where, "exec")
        with _chdir(self.workdir), contextlib.redirect_stdout(io.StringIO()):
            exec(code, self.namespace)

    def _shell(self, block: Block) -> None:
        commands = shell_commands(block.code)
        if all(c.startswith("shadow-edge ") and not SHELL_META.search(c.split("#")[0]) for c in commands):
            for c in commands:  # plain CLI calls run in this process (no interpreter start-up per line)
                self._cli(block, shlex.split(c, comments=True)[1:])
            return
        proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + block.code], cwd=self.workdir, env=self.env,
                              capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert proc.returncode == 0, f"{block.where}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    def _cli(self, block: Block, argv: list[str]) -> None:
        from shadow_edge import cli

        out, err = io.StringIO(), io.StringIO()
        with _chdir(self.workdir), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
        assert rc in (0, None), f"{block.where}: `shadow-edge {shlex.join(argv)}` exited {rc}: {err.getvalue()[-3000:]}"

    def _background(self, block: Block) -> None:
        log = self.workdir.parent / f".server-{self.workdir.name}-{block.line}.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(["bash", "-c", block.code], cwd=self.workdir, env=self.env, stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append((proc, log))
        url, deadline = f"http://127.0.0.1:{block.options['port']}/health", time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{block.where}: the server exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{block.where}: {url} not ready after 120 s: {log.read_text()[-3000:]}")

    def close(self) -> None:
        for proc, _ in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group this run started (start_new_session)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
