"""Adapter variants and checkpoint formats are declared once: registries refuse duplicates, a spec's
optional update parts must match its variant, and the variant alone changes the update's math."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from shadow_edge.core import ShadowModel, StepInputs, load_spec
from shadow_edge.core.checkpoint import FORMATS, register_format
from shadow_edge.core.variants import SHADOW_PEFT, VARIANTS, AdapterVariant, register_variant
from shadow_edge.errors import MismatchError


def test_variant_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_variant(AdapterVariant("shadow-peft", "silu", True, False, "x"))
    assert VARIANTS["shadow-peft"] is SHADOW_PEFT


def test_format_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_format(FORMATS[0])
    assert len({f.name for f in FORMATS}) == len(FORMATS)


def test_variant_rejects_unknown_activation():
    with pytest.raises(ValueError, match="update_activation"):
        AdapterVariant("x", "relu6", False, False, "x")


@pytest.fixture(scope="module")
def spec(tiny_default):
    return load_spec(tiny_default.base_dir, tiny_default.adapter_dir)


def test_spec_parts_must_match_variant(spec):
    spec.validate()
    with pytest.raises(MismatchError, match="update_norm_weight: missing"):
        replace(spec, update_norm_weight=None).validate()
    biased = AdapterVariant("biased-test", "silu", True, True, "x")
    with pytest.raises(MismatchError, match="gate_in_bias: missing"):
        replace(spec, variant=biased).validate()
    with pytest.raises(MismatchError, match="do not fit"):
        replace(spec, first_adapted_layer=2).validate()


def test_variant_changes_the_update(spec):
    """Same weights, GELU instead of SiLU: base_shadow logits move, shadow_only logits do not."""
    ids = torch.randint(0, spec.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    step = StepInputs.full(ids)
    gelu = replace(spec, variant=replace(SHADOW_PEFT, name="gelu-test", update_activation="gelu"))
    for mode, moves in (("base_shadow", True), ("shadow_only", False)):
        a, _ = ShadowModel(spec).forward(step, mode)
        b, _ = ShadowModel(gelu).forward(step, mode)
        assert (not torch.equal(a, b)) == moves
