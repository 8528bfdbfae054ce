"""Inherit the base model's license: read it from the base's own card, never guess.

Order: the README.md front matter in the base's local snapshot, then the Hub's model_info
(online), then a small table of known Qwen ids (a fallback only). An unknown license stops
publishing. Licenses the Hub does not list (`license: other`) need their text shipped as LICENSE,
taken from the base's snapshot; Qwen's research license also asks for a NOTICE file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from train.errors import ScionError

# Fallback only, for bases whose card cannot be read. Checked against the models' cards.
KNOWN_QWEN_LICENSES = {
    "Qwen/Qwen2.5-0.5B-Instruct": ("apache-2.0", None, None),
    "Qwen/Qwen2.5-1.5B-Instruct": ("apache-2.0", None, None),
    "Qwen/Qwen2.5-3B-Instruct": ("other", "qwen-research", "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"),
    "Qwen/Qwen3-1.7B": ("apache-2.0", None, None),
    "Qwen/Qwen3-4B": ("apache-2.0", None, None),
    "Qwen/Qwen3-4B-Instruct-2507": ("apache-2.0", None, None),
    "Qwen/Qwen3-4B-Thinking-2507": ("apache-2.0", None, None),
    **{f"Qwen/Qwen3.5-{size}{kind}": ("apache-2.0", None, None) for size in ("0.8B", "2B", "4B") for kind in ("", "-Base")},
}
QWEN_RESEARCH_NOTICE = (
    "Qwen is licensed under the Qwen RESEARCH LICENSE AGREEMENT, Copyright (c) Alibaba Cloud. All Rights Reserved.\n"
)


@dataclass
class License:
    license: str
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    source: str = ""  # where it was read, for the plan
    # Files to ship beside the weights: name -> text.
    files: dict[str, str] = field(default_factory=dict)


def _from_card_metadata(meta: dict, source: str) -> Optional[License]:
    value = meta.get("license")
    if not value:
        return None
    if isinstance(value, list):  # a few cards list several; the first is the governing one
        value = value[0]
    return License(str(value), meta.get("license_name"), meta.get("license_link"), source)


def read_base_license(base_dir: Optional[str], hub_id: Optional[str]) -> License:
    """The base's license with the files its terms require, or ScionError when unknown."""
    import yaml

    found: Optional[License] = None
    readme = Path(base_dir) / "README.md" if base_dir else None
    if readme and readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if text.startswith("---"):
            meta = yaml.safe_load(text.split("---", 2)[1]) or {}
            found = _from_card_metadata(meta, f"{readme} front matter")
    if found is None and hub_id:
        try:
            from huggingface_hub import HfApi

            card_data = HfApi().model_info(hub_id).card_data
            found = _from_card_metadata(card_data.to_dict() if card_data else {}, f"Hub card of {hub_id}")
        except Exception:  # offline or private: fall through to the table
            found = None
    if found is None and hub_id in KNOWN_QWEN_LICENSES:
        found = License(*KNOWN_QWEN_LICENSES[hub_id], source="Scion's table of known Qwen licenses")
    if found is None:
        raise ScionError(
            f"license: cannot find the license of the base {hub_id or base_dir}: its README.md has no `license:` and "
            "the Hub cannot be asked; refusing to guess"
        )
    if found.license == "other":
        if not found.license_name:
            raise ScionError(f"license: the base's card says `license: other` without license_name ({found.source})")
        license_file = next((p for p in (Path(base_dir).glob("LICENSE*") if base_dir else []) if p.is_file()), None)
        if license_file is None:
            raise ScionError(
                f"license: {found.license_name} must be shipped with the weights, but the base snapshot "
                f"{base_dir} has no LICENSE file"
            )
        found.files["LICENSE"] = license_file.read_text(encoding="utf-8")
        found.license_link = found.license_link or "LICENSE"  # else point at the copy shipped here
        if found.license_name == "qwen-research":
            found.files["NOTICE"] = QWEN_RESEARCH_NOTICE
    return found
