"""Shared fixtures: the shadow_peft-built test cases (built once per session) and the tiny default model."""

from __future__ import annotations

import os

import pytest
import torch

from factories import CASE_NAMES, Case, make_case
from shadow_edge.core.tiny import TinyDefault, write_tiny_default
from shadow_edge.runtime.session import session_options

# One thread per library and process: the models here are tiny (one thread is faster than two), the xdist workers
# already fill the cores (`-n logical`), and a second thread only contends for them (torch's and onnxruntime's
# pools spin while they wait). torch here and in every subprocess a test starts (the demo, the CLI; through
# OMP_NUM_THREADS), and this process's onnxruntime pool (created now with one thread; a later `threads=2` is
# ignored with a warning). docs/install.md has the figures.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
session_options(1)


def pytest_configure(config):
    """With `--dist loadfile`, files go to the workers in collection order (not xdist's most-tests-first), which
    `pytest_collection_modifyitems` makes heaviest-first: a long file started last would leave a core idle."""
    if getattr(config.option, "dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    """Files with a `slow` test first, then files with an `integration` test, then the rest (each file's tests
    in their order; files in their order within a group)."""
    weight: dict[str, int] = {}
    for item in items:
        w = 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("integration") else 2
        weight[item.nodeid.split("::")[0]] = min(w, weight.get(item.nodeid.split("::")[0], 2))
    items.sort(key=lambda item: weight[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def cases(tmp_path_factory):
    """`cases(name) -> Case`, building each case at most once per session."""
    root, built = tmp_path_factory.mktemp("cases"), {}

    def get(name: str) -> Case:
        if name not in built:
            built[name] = make_case(root, name)
        return built[name]

    return get


@pytest.fixture(params=CASE_NAMES)
def case(request, cases) -> Case:
    return cases(request.param)


@pytest.fixture(scope="session")
def tiny_default(tmp_path_factory) -> TinyDefault:
    return write_tiny_default(tmp_path_factory.mktemp("tiny") / "default")


@pytest.fixture(scope="session")
def peft_cases(tmp_path_factory):
    """`peft_cases(name) -> PeftCase` (tests/peft_factories.py), building each case at most once per session."""
    from peft_factories import make_peft_case

    root, built = tmp_path_factory.mktemp("peft_cases"), {}

    def get(name: str):
        if name not in built:
            built[name] = make_peft_case(root, name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def cls_cases(tmp_path_factory, tiny_default):
    """`cls_cases(name) -> ClsCase` (tests/cls_factories.py): classifiers of both trainers, built once each."""
    from cls_factories import make_cls_case

    root, built = tmp_path_factory.mktemp("cls_cases"), {}

    def get(name: str):
        if name not in built:
            built[name] = make_cls_case(root, name, tiny_default.base_dir)
        return built[name]

    return get


@pytest.fixture(scope="session")
def tiny_artifact_pair(tiny_default, tmp_path_factory):
    """Two tiny artifacts of one model to compare (`shadow-edge bench A B`): float32 (with base_plain) and int8.
    Validation off, as for the runtime tests' artifacts."""
    from shadow_edge.export import ExportOptions, export_artifact

    root = tmp_path_factory.mktemp("pair")
    arts = []
    for name, options in (("fp32", ExportOptions(validate=False, plain_backbone=True)),
                          ("int8", ExportOptions(validate=False, quantize="int8"))):
        export_artifact(tiny_default.base_dir, tiny_default.adapter_dir, root / name, options=options,
                        progress=lambda m: None)
        arts.append(root / name)
    return tuple(arts)
