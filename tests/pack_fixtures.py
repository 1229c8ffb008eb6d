"""One base artifact (--as-base) and adapter packs against it, plus each adapter as a full artifact (oracle)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from shadow_peft import ShadowConfig, ShadowForCausalLM, get_shadow_model
from transformers import AutoModelForCausalLM

from factories import Case, randomize_adapter, recipe_of
from shadow_edge.export import ExportOptions, export_artifact, export_pack

QUIET = dict(progress=lambda msg: None)


@dataclass
class Family:
    case: Case
    base_art: Path  # exported --as-base from the case's own adapter
    adapters: dict[str, Path]  # name -> adapter directory (same base, same shadow shape, other random weights)
    packs: dict[str, Path]  # name -> pack against base_art
    fulls: dict[str, Path]  # name -> the same adapter as a full artifact


def make_adapter(case: Case, out: Path, seed: int, shadow: ShadowConfig | None = None) -> Path:
    """Another randomized adapter for the case's base (and explicit shadow model)."""
    return random_adapter(case.base_dir, out, seed, shadow or recipe_of(case.name).shadow, case.shadow_model_dir)


def random_adapter(base_dir: Path, out: Path, seed: int, shadow: ShadowConfig,
                   shadow_model_dir: Path | None = None) -> Path:
    """A shadow-peft adapter with every weight random (the trainer's own save format)."""
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    shadow_model = None if shadow_model_dir is None else AutoModelForCausalLM.from_pretrained(shadow_model_dir)
    model = get_shadow_model(base, shadow, shadow_model=shadow_model)
    randomize_adapter(model, seed)
    ShadowForCausalLM(model).save_pretrained(out)
    return out


def make_family(case: Case, root: Path, names=("two", "three")) -> Family:
    root.mkdir(parents=True, exist_ok=True)
    sm = case.shadow_model_dir
    base_art = root / "base_art"
    export_artifact(case.base_dir, case.adapter_dir, base_art, shadow_model=sm,
                    options=ExportOptions(as_base=True, validate=False), **QUIET)
    fam = Family(case, base_art, {}, {}, {})
    for name in names:
        adapter = make_adapter(case, root / f"adapter_{name}", zlib.crc32(name.encode()))
        fam.adapters[name] = adapter
        fam.packs[name] = root / f"pack_{name}"
        export_pack(case.base_dir, adapter, fam.packs[name], base_art, shadow_model=sm, **QUIET)  # validated
        fam.fulls[name] = root / f"full_{name}"
        export_artifact(case.base_dir, adapter, fam.fulls[name], shadow_model=sm,
                        options=ExportOptions(validate=False), **QUIET)
    return fam


@pytest.fixture(scope="session")
def families(cases, tmp_path_factory):
    """`families(case_name) -> Family`, built once per session."""
    root, built = tmp_path_factory.mktemp("packs"), {}

    def get(name: str) -> Family:
        if name not in built:
            built[name] = make_family(cases(name), root / name)
        return built[name]

    return get


@dataclass
class TinyFamily:
    """The tiny default model (with its tokenizer): a base artifact of its own adapter, and two packs."""

    base_art: Path
    packs: dict[str, Path]  # name -> pack against base_art
    fulls: dict[str, Path]  # name -> the same adapter as a full artifact


@pytest.fixture(scope="session")
def tiny_family(tiny_default, tmp_path_factory) -> TinyFamily:
    from shadow_edge.core.tiny import SHADOW_CONFIG

    root = tmp_path_factory.mktemp("tiny_packs")
    base, adapter = tiny_default.base_dir, tiny_default.adapter_dir
    fam = TinyFamily(root / "base_art", {}, {})
    export_artifact(base, adapter, fam.base_art, options=ExportOptions(as_base=True, validate=False), **QUIET)
    for i, name in enumerate(("support", "sql")):
        other = random_adapter(base, root / f"adapter_{name}", 100 + i, ShadowConfig(**SHADOW_CONFIG))
        fam.packs[name], fam.fulls[name] = root / f"pack_{name}", root / f"full_{name}"
        export_pack(base, other, fam.packs[name], fam.base_art, **QUIET)  # validated
        export_artifact(base, other, fam.fulls[name], options=ExportOptions(validate=False), **QUIET)
    return fam
