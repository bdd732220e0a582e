"""Train one SAE per site with SAELens's trainer and write a SAELens-loadable folder.

Architecture: BatchTopK during training (k latents on average per token), saved by
SAELens as a JumpReLU SAE with one global threshold: the shipped SAEs have an
elementwise activation, so encoder-orthogonal perturbations leave clamped latents
exactly unchanged. Activations are scaled to unit mean squared norm during training
and the scale is folded back into the weights before saving.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class TrainConfig:
    d_sae: int = 2304
    k: int = 40
    lr: float = 2e-3
    batch_size: int = 1024
    epochs: int = 1
    aux_loss_coefficient: float = 1.0
    # steps without firing before the aux-k loss revives a latent; short, or rare latents die
    dead_feature_window: int = 30
    seed: int = 0


def batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled batches over the in-memory activations (a new permutation per epoch)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(acts.shape[0], generator=gen)
        for start in range(0, acts.shape[0] - batch_size + 1, batch_size):
            yield acts[order[start : start + batch_size]]


def train_sae(site: str, acts: np.ndarray, cfg: TrainConfig, model_name: str):
    """Returns the trained inference SAE (JumpReLU, float32) and training stats."""
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(cfg.seed)
    data = torch.from_numpy(np.asarray(acts, dtype=np.float32))
    sae_cfg = BatchTopKTrainingSAEConfig(
        d_in=data.shape[1],
        d_sae=cfg.d_sae,
        k=cfg.k,
        aux_loss_coefficient=cfg.aux_loss_coefficient,
        normalize_activations="expected_average_only_in",
        device="cpu",
    )
    sae_cfg.metadata.hook_name = site
    sae_cfg.metadata.model_name = model_name
    training_sae = BatchTopKTrainingSAE(sae_cfg)
    total = cfg.epochs * (data.shape[0] // cfg.batch_size) * cfg.batch_size
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=50,
        dead_feature_window=cfg.dead_feature_window,
        device="cpu",
        n_batches_for_norm_estimate=min(100, data.shape[0] // cfg.batch_size),
    )
    start = time.perf_counter()
    trainer = SAETrainer(trainer_cfg, training_sae, batches(data, cfg.batch_size, cfg.seed))
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        sae = SAE.load_from_disk(tmp, device="cpu")
    stats = {"train_seconds": seconds, "train_tokens": int(data.shape[0]), "steps": trainer.n_training_steps,
             "dead_in_training_window": int(trainer.dead_neurons.sum())}
    return sae.to(torch.float32).eval(), stats


def save_shipped(sae, folder: Path, card: dict) -> None:
    """Write the SAE as 16-bit weights plus a JSON card; replaces the folder atomically."""
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sae16 = sae.to(torch.float16)
    sae16.cfg.dtype = "float16"
    sae16.save_model(tmp)
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    sae.to(torch.float32)
    sae.cfg.dtype = "float32"
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def config_dict(cfg: TrainConfig) -> dict:
    return {"architecture": "batchtopk (saved as jumprelu)", **asdict(cfg)}
