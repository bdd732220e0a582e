"""The shipped SAE set: sites, folder layout and loading."""

from __future__ import annotations

from pathlib import Path

SITES = tuple(f"blocks.{layer}.hook_resid_post" for layer in (6, 12, 18, 24))
SHIPPED_DIR = Path(__file__).parent / "shipped"


def site_folder(site: str, root: Path | None = None) -> Path:
    return (root or SHIPPED_DIR) / site


def shipped_sites(root: str | Path | None = None) -> list[str]:
    root = Path(root) if root else SHIPPED_DIR
    return [s for s in SITES if (site_folder(s, root) / "cfg.json").is_file()]


def load_shipped_saes(root: str | Path | None = None, device: str = "cpu") -> dict[str, object]:
    """SAELens SAEs keyed by full hook name, loaded as float32 from the shipped 16-bit weights."""
    import torch
    from sae_lens import SAE

    root = Path(root) if root else SHIPPED_DIR
    saes = {}
    for site in shipped_sites(root):
        sae = SAE.load_from_disk(str(site_folder(site, root)), device=device)
        saes[site] = sae.to(torch.float32).eval()
    return saes
