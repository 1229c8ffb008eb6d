"""Adapter packs in the server: each pack is one more served model that shares its base artifact's runtime.

`shadow-edge serve BASE_ART --adapter support=PACK` serves `BASE_ART`'s name and `support`,
each in every mode (`GET /v1/models` lists `support:base_shadow` ...). As in vLLM's and
PEFT-style LoRA serving, a request picks the adapter by its `model` field; the pack's model
entry names its base under `parent`. A pack is attached to the served base artifact whose
identity it was exported against (adapter_pack.base_identity), so with several artifacts
nothing else needs to be said; a pack that fits none of them is one clear error at load.
"""

from __future__ import annotations

from pathlib import Path

from shadow_edge.adapter_pack import base_identity, read_pack_manifest
from shadow_edge.errors import ArtifactError
from shadow_edge.runtime import ShadowRuntime
from shadow_edge.runtime.inputs import artifact_dir


def attach_packs(runtimes: dict[str, ShadowRuntime], packs: tuple[tuple[str, str], ...],
                 verify: bool = True) -> dict[str, str]:
    """Load each (name, PACK) into the served base artifact it was exported against; returns name -> base name."""
    identities = {name: base_identity(rt.manifest) for name, rt in runtimes.items()
                  if rt.manifest.adapter_slots.get("params")}
    parents: dict[str, str] = {}
    for name, pack_dir in packs:
        pack = read_pack_manifest(artifact_dir(pack_dir))
        fits = [base for base, identity in identities.items() if identity == pack.base_identity]
        if not fits:
            served = ", ".join(f"{n} ({'identity ' + i[:12] + '...' if i else 'not a base artifact'})"
                               for n, i in ((n, identities.get(n)) for n in runtimes))
            raise ArtifactError(f"--adapter {name}={pack_dir}: the pack was exported against a base artifact with "
                                f"identity {pack.base_identity[:12]}..., which is not served here (served: {served}); "
                                "serve its base artifact too, or export the pack again with --against one of them")
        runtimes[fits[0]].load_adapter(name, Path(pack_dir), verify)
        parents[name] = fits[0]
    return parents
