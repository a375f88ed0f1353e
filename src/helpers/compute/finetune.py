"""The fine-tuning stage: its declaration, the stage's work, and what it leaves for the later stages.

The training itself (initialisation, tokenisation, the loop) is :mod:`helpers.finetune`, loaded only when the stage
runs: the readers of its outputs (:func:`load`, every chapter) need no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from datasets import Dataset, load_from_disk

from .. import artifacts, data
from ..flow.stage import Stage

STAGE = Stage("finetune", "02_finetune.ipynb", "Fine-tuning", scope="run",
              reads=(("data", "same"), ("pretrain", "same")),
              modules=("finetune", "models/__init__"),
              params=("model", "trim_vocabulary", "max_length", "epochs", "checkpoints_per_epoch",
                      "checkpoint_at_start", "batch_size", "learning_rate",
                      "warmup_ratio", "model_dir", "device", "precision", "reinit_top_layers", "pretrain_checkpoint"))
CHECKPOINTS_FILE = "checkpoints.json"


@dataclass
class FinetuneOutputs:
    """What the fine-tuning stage leaves for the later ones."""

    folder: Path
    history: pd.DataFrame  # accuracy per (checkpoint, test language); epoch = epochs done (0: before fine-tuning)
    checkpoints: list[dict]  # name, path (absolute), epoch, learning_rate, learning_rate_at_end, train_loss
    train: Dataset  # tokenised, with uid / language / pair_id / label / label_name
    test: Dataset
    info: dict

    ID_COLUMNS = ("uid", "language", "pair_id", "label", "label_name")

    def ids(self, split: str) -> pd.DataFrame:
        """One row per sample of ``split`` (train or test): what links a TracIn row or column back to it."""
        ds = {"train": self.train, "test": self.test}[split]
        return ds.select_columns(list(self.ID_COLUMNS)).to_pandas()

    def tracin_checkpoints(self) -> list:
        """The checkpoints with the learning rate TracIn weights each by."""
        from ..influence.spec import Checkpoint

        return [Checkpoint(path=c["path"], learning_rate=c["learning_rate"], name=c["name"]) for c in self.checkpoints]


def load(folder: Path) -> FinetuneOutputs:
    """Read a committed (or just written) fine-tuning stage folder."""
    checkpoints = [dict(c, path=str(folder / c["path"])) for c in artifacts.read_json(folder / CHECKPOINTS_FILE)]
    return FinetuneOutputs(folder, pd.read_csv(folder / "accuracy.csv"), checkpoints,
                           load_from_disk(str(folder / "train_tokens")), load_from_disk(str(folder / "test_tokens")),
                           artifacts.read_json(folder / "info.json"))


# pragma: no mutate start (make mutation leaves out what tokenises or fine-tunes: a model build per mutant)
def run(cfg: dict[str, Any], data_params: dict[str, Any], data_folder: Path, out: Path,
        pretrain_folder: Path | None = None) -> FinetuneOutputs:
    """The whole stage: tokenise the data stage's splits, fine-tune, write everything into ``out``.
    ``pretrain_folder``: the pretrain stage's outputs, for model ``inhouse-mlm``."""
    from ..finetune import tokenise_splits, train
    from ..runtime import set_threads

    train_frame, test_frame = data.load_splits(data_folder)
    num_labels = len(data.LABELS[data_params["label"]].names)
    model_dir = cfg.get("model_dir")
    if pretrain_folder is not None:  # inhouse-mlm: the chosen pre-training checkpoint is its local copy
        from ..models.pretrain import load as load_pretraining

        model_dir = str(load_pretraining(pretrain_folder).path(cfg["pretrain_checkpoint"]))
    model, train_ds, test_ds, info = tokenise_splits(cfg["model"], train_frame, test_frame, cfg["max_length"],
                                                     cfg["trim_vocabulary"], cfg["seed"], num_labels, out,
                                                     model_dir=model_dir, reinit_top_layers=cfg["reinit_top_layers"])
    info["threads"] = set_threads()
    history, checkpoints = train(model, train_ds, test_ds, cfg["epochs"], cfg["batch_size"], cfg["learning_rate"],
                                 cfg["warmup_ratio"], cfg["seed"], out, device=cfg.get("device", "auto"),
                                 precision=cfg.get("precision", "auto"),
                                 checkpoints_per_epoch=cfg["checkpoints_per_epoch"],
                                 checkpoint_at_start=cfg["checkpoint_at_start"])
    info["device"] = str(next(model.parameters()).device)
    train_ds.save_to_disk(out / "train_tokens")
    test_ds.save_to_disk(out / "test_tokens")
    history.to_csv(out / "accuracy.csv", index=False)
    artifacts.write_json(out / CHECKPOINTS_FILE, checkpoints)
    artifacts.write_json(out / "info.json", info)
    return load(out)
# pragma: no mutate end


def accuracy_table(history: pd.DataFrame, fine_tune_languages: list[str]) -> pd.DataFrame:
    """Accuracy per test language (rows) and checkpoint (columns: epochs done), with the mean over fine-tuning
    languages."""
    table = history.pivot(index="language", columns="epoch", values="accuracy")
    table = table.reindex(history["language"].unique())
    table.columns = [f"epoch {c:g}" for c in table.columns]
    table.loc["mean (fine-tuning languages)"] = table.loc[fine_tune_languages].mean()
    table.insert(0, "seen in fine-tuning", [lang in fine_tune_languages for lang in table.index[:-1]] + [True])
    return table


def learning_threshold(n_labels: int) -> float:
    """The book's criterion for a model that learned the task: mean test accuracy over the fine-tuning languages at
    least twice chance (the fine-tuning page, the scoreboard's FT1 and the alignment chapter's AL1 all use it)."""
    return 2 / n_labels


def learning_summary(mean_accuracy: float, n_labels: int, epochs: int) -> str:
    """One run's accuracy beside :func:`learning_threshold`, in words. Not a verdict: the claim that the model
    learns the task (FT1) is judged on the scoreboard, with its interval and the runs it rests on."""
    chance = 1 / n_labels
    side = "at or above" if mean_accuracy >= learning_threshold(n_labels) else "**below**"
    return (f"After {epochs} epochs, mean test accuracy over the fine-tuning languages is {mean_accuracy:.0%} "
            f"against a chance level of {chance:.0%}: {side} twice chance, the book's criterion for a model that "
            "learned the task. This is one run's point value; the claim itself (FT1) is judged on the "
            "[claims scoreboard](90_scoreboard.ipynb), with its interval and the runs it rests on.")
