"""Exported artifacts shared by the runtime and CLI tests: each case is exported at most once per process.

Import the fixtures into a test module (`from runtime_fixtures import artifact_of, tiny_artifact`).
A module-level cache dedupes the export work across modules. Export validation is off here
(the exporter's own tests cover it; these tests compare the runtime against shadow_peft).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

_EXPORTED: dict[str, Path] = {}
_RUNTIMES: dict[str, object] = {}


def export_once(key: str, root: Path, base, adapter, shadow_model=None) -> Path:
    if key not in _EXPORTED:
        from shadow_edge.export import ExportOptions, export_artifact

        out = Path(root) / f"art_{key}"
        export_artifact(base, adapter, out, shadow_model=shadow_model, options=ExportOptions(validate=False),
                        progress=lambda msg: None)
        _EXPORTED[key] = out
    return _EXPORTED[key]


def runtime_once(key: str, art: Path):
    """One loaded ShadowRuntime per artifact (1 thread: the test machine is shared)."""
    if key not in _RUNTIMES:
        from shadow_edge.runtime import ShadowRuntime

        _RUNTIMES[key] = ShadowRuntime.load(art, threads=1)
    return _RUNTIMES[key]


@pytest.fixture(scope="session")
def artifact_of(cases, tmp_path_factory):
    """`artifact_of(case_name) -> (Case, artifact dir)`."""
    root = tmp_path_factory.getbasetemp() / "runtime_artifacts"
    root.mkdir(exist_ok=True)

    def get(name: str):
        case = cases(name)
        return case, export_once(name, root, case.base_dir, case.adapter_dir, case.shadow_model_dir)

    return get


@pytest.fixture(scope="session")
def tiny_artifact(tiny_default, tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "runtime_artifacts"
    root.mkdir(exist_ok=True)
    return export_once("tiny_default", root, tiny_default.base_dir, tiny_default.adapter_dir)


@pytest.fixture(scope="session")
def tiny_rt(tiny_artifact):
    return runtime_once("tiny_default", tiny_artifact)


def copy_artifact(art: Path, dest: Path) -> Path:
    """A private copy to tamper with."""
    shutil.copytree(art, dest)
    return dest
