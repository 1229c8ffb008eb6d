"""The runtime drops the mapped weight pages onnxruntime has finished reading (runtime/mapped_pages.py)."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

from shadow_edge.runtime.mapped_pages import file_mappings, release_mapped

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise on /proc/self/smaps: Linux")

MB = 1 << 20


def _mapped(path, writable=False):
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=prot)
    finally:
        os.close(fd)


def _resident(path) -> int:
    return sum(m[3] for m in file_mappings([path]))


def test_release_drops_clean_pages_and_they_read_back_the_same(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 8 * MB, dtype=np.uint8).tobytes()
    a, b = tmp_path / "a.onnx.data", tmp_path / "b.onnx.data"
    a.write_bytes(data)
    b.write_bytes(data)
    ma, mb = _mapped(a), _mapped(b)
    assert sum(ma[i] for i in range(0, len(data), 4096)) == sum(mb[i] for i in range(0, len(data), 4096))
    assert _resident(a) >= 8 * MB and _resident(b) >= 8 * MB
    released = release_mapped([a])
    assert released >= 8 * MB and _resident(a) == 0
    assert _resident(b) >= 8 * MB  # another file's mapping is left alone
    assert ma[:] == data  # read again from the page cache, unchanged
    ma.close()
    mb.close()


def test_release_keeps_a_mapping_with_written_pages(tmp_path):
    path = tmp_path / "w.onnx.data"
    path.write_bytes(bytes(4 * MB))
    m = _mapped(path, writable=True)
    m[4096] = 7  # a private (copy-on-write) page: dropping it would lose the write
    _ = m[2 * MB]
    assert release_mapped([path]) == 0
    assert m[4096] == 7 and path.read_bytes()[4096] == 0
    m.close()


def test_release_of_a_file_that_is_not_mapped_is_nothing(tmp_path):
    path = tmp_path / "x.onnx.data"
    path.write_bytes(bytes(4096))
    assert release_mapped([path, tmp_path / "missing.onnx.data"]) == 0


PROBE = """
import json, sys
from pathlib import Path
import shadow_edge.runtime.session as session
if sys.argv[2] == "keep":
    session.release_mapped = lambda files: 0
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.mapped_pages import file_mappings
art = Path(sys.argv[1])
rt = ShadowRuntime.load(art, threads=1, verify=False)
resident = sum(m[3] for m in file_mappings(art.glob("*.onnx.data")))
out = rt.generate([5, 6, 7, 8, 9], mode="base_shadow", max_new_tokens=6)
print(json.dumps({"resident": resident, "tokens": out.token_ids}))
"""


def test_int4_runtime_keeps_no_weight_file_pages_after_loading(tiny_default, tmp_path):
    """int4: MatMulNBits keeps its scales mapped (and read) beside its packed copy; after loading, no page of
    the artifact's weight files stays resident, and generation is unchanged (subprocesses, RSS from smaps)."""
    from shadow_edge.export import ExportOptions, export_artifact
    from tests.export.test_export_bf16 import _wide_checkpoint

    base, adapter, _ = _wide_checkpoint(tiny_default.base_dir, tmp_path)
    art = tmp_path / "art"
    export_artifact(base, adapter, art, progress=lambda s: None,
                    options=ExportOptions(quantize="int4", validate=False, quant_scheme="symmetric",
                                          vocab_quantize="int4"))  # float32 scales, read from the mapped file
    scales = 0  # float32 scale bytes of the MatMulNBits weights: what stays resident without the release
    for g in art.glob("*.onnx"):
        import onnx

        scales += sum(int({e.key: e.value for e in t.external_data}["length"])
                      for t in onnx.load(str(g), load_external_data=False).graph.initializer
                      if t.name.endswith("scales") and t.external_data)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    runs = {}
    for how in ("release", "keep"):
        done = subprocess.run([sys.executable, str(probe), str(art), how], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
        runs[how] = json.loads(done.stdout.splitlines()[-1])
    assert runs["release"]["tokens"] == runs["keep"]["tokens"]
    assert runs["release"]["resident"] == 0, runs
    assert runs["keep"]["resident"] >= scales / 4 > MB, (runs, scales)  # measured: the scales, all resident
