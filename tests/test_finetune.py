"""Fine-tuning on the smoke model: tokenised splits, checkpoints, learning rates, accuracy history."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset
from transformers import get_linear_schedule_with_warmup

from helpers import data, finetune, study
from helpers.compute import finetune as finetune_stage


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cfg = study.resolve("smoke").first.params
    train, test = data.build_splits(cfg)
    out = tmp_path_factory.mktemp("finetune")
    model, train_ds, test_ds, info = finetune.tokenise_splits("tiny-random", train, test, cfg["max_length"], True,
                                                              0, len(data.LABELS[cfg["label"]].names), out)
    return cfg, model, train_ds, test_ds, info, out


def test_tokenised_splits_keep_ids_and_fit_the_trimmed_vocabulary(prepared):
    cfg, model, train_ds, test_ds, info, _ = prepared
    assert set(train_ds.column_names) >= {"uid", "language", "pair_id", "label", "input_ids"}
    biggest = max(max(x) for ds in (train_ds, test_ds) for x in ds["input_ids"])
    assert biggest < model.config.vocab_size == info["vocab_size"] < info["full_vocab_size"]
    assert max(len(x) for x in train_ds["input_ids"]) <= cfg["max_length"]


def test_collate_pads_right_and_masks_from_lengths():
    batch = finetune.collate([{"input_ids": [0, 5, 2], "label": 1}, {"input_ids": [0, 2], "label": 0}], pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 5, 2], [0, 2, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_predict_gives_each_sample_its_own_logits_in_the_datasets_order(prepared):
    _, model, _, test_ds, _, _ = prepared
    model.eval()
    batched = finetune.predict(model, test_ds, batch_size=4)  # batches of similar length, not in the split's order
    with torch.no_grad():
        alone = np.concatenate([model(input_ids=torch.tensor([x])).logits.numpy() for x in test_ds["input_ids"]])
    assert len(set(len(x) for x in test_ds["input_ids"])) > 1
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_checkpoint_per_epoch_with_the_mean_scheduled_learning_rate(prepared, tmp_path):
    cfg, model, train_ds, test_ds, _, _ = prepared
    epochs, bs, lr = 2, 8, 1e-3
    history, ckpts = finetune.train(model, train_ds, test_ds, epochs, bs, lr, 0.1, 0, tmp_path)
    assert [c["name"] for c in ckpts] == ["epoch1", "epoch2"]
    assert all((tmp_path / c["path"] / "config.json").exists() for c in ckpts)
    # Recompute the schedule independently: the recorded rate is the mean over each epoch's steps.
    steps = int(np.ceil(len(train_ds) / bs))
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps * epochs), steps * epochs)
    rates = []
    for _ in range(steps * epochs):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    for e, c in enumerate(ckpts):
        assert c["learning_rate"] == pytest.approx(np.mean(rates[e * steps:(e + 1) * steps]))
    assert ckpts[-1]["learning_rate_at_end"] == pytest.approx(0.0)
    languages = cfg["fine_tune_languages"] + cfg["zero_shot_languages"]
    assert sorted(history["epoch"].unique()) == [0, 1, 2]
    assert list(history.loc[history["epoch"] == 2, "language"]) == languages
    # The last epoch's accuracy, recomputed from the trained model in one padded batch.
    model.eval()
    with torch.no_grad():
        batch = finetune.collate(test_ds.to_list(), model.config.pad_token_id)
        predicted = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(1)
    frame = test_ds.select_columns(["language", "label"]).to_pandas()
    correct = pd.Series(predicted.numpy() == frame["label"].to_numpy()).groupby(frame["language"])
    last = history[history["epoch"] == 2].set_index("language")
    assert last["accuracy"].to_dict() == pytest.approx(correct.mean().to_dict())
    assert last["n"].to_dict() == correct.size().to_dict()

    # What the TracIn stage gets: each checkpoint with its own epoch's rate (they differ: warm-up, then decay).
    history.to_csv(tmp_path / "accuracy.csv", index=False)
    (tmp_path / finetune_stage.CHECKPOINTS_FILE).write_text(json.dumps(ckpts))
    (tmp_path / "info.json").write_text("{}")
    train_ds.save_to_disk(str(tmp_path / "train_tokens"))
    test_ds.save_to_disk(str(tmp_path / "test_tokens"))
    loaded = finetune_stage.load(tmp_path).tracin_checkpoints()
    assert [(c.name, Path(c.path), c.learning_rate) for c in loaded] == [
        (c["name"], tmp_path / c["path"], c["learning_rate"]) for c in ckpts]
    assert ckpts[0]["learning_rate"] != ckpts[1]["learning_rate"]


def test_accuracy_table_has_a_row_per_language_and_the_mean_over_fine_tuning_languages():
    history = pd.DataFrame({"epoch": [0, 0, 0, 1, 1, 1], "language": ["en", "fr", "ko"] * 2,
                            "accuracy": [0.1, 0.2, 0.3, 0.5, 0.8, 0.9], "n": 6})
    table = finetune_stage.accuracy_table(history, ["en", "fr"])
    assert list(table.index) == ["en", "fr", "ko", "mean (fine-tuning languages)"]
    assert list(table.columns) == ["seen in fine-tuning", "epoch 0", "epoch 1"]
    assert table["epoch 1"].tolist() == pytest.approx([0.5, 0.8, 0.9, 0.65])
    assert table["epoch 0"].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.15])
    assert table["seen in fine-tuning"].tolist() == [True, True, False, True]


def test_learning_summary_threshold_and_where_the_claim_is_judged():
    above, below = finetune_stage.learning_summary(0.34, 6, 3), finetune_stage.learning_summary(0.32, 6, 3)
    assert "34% against a chance level of 17%: at or above twice chance" in above
    assert "**below** twice chance" in below and "(FT1) is judged on the [claims scoreboard]" in below


def test_load_gives_tracin_each_checkpoint_with_its_own_rate_and_an_absolute_path(tmp_path):
    # The files the fine-tuning stage writes, with stand-in datasets (no training).
    rates = [3e-4, 2e-4, 5e-5]
    checkpoints = [{"name": f"epoch{e}", "path": f"checkpoint-epoch{e}", "learning_rate": lr,
                    "learning_rate_at_end": lr / 2, "train_loss": 1.0} for e, lr in enumerate(rates, 1)]
    (tmp_path / finetune_stage.CHECKPOINTS_FILE).write_text(json.dumps(checkpoints))
    (tmp_path / "info.json").write_text(json.dumps({"vocab_size": 7}))
    pd.DataFrame({"epoch": [0], "language": ["en"], "accuracy": [0.5], "n": [2]}).to_csv(tmp_path / "accuracy.csv")
    ids = {"uid": ["a", "b"], "language": ["en", "fr"], "pair_id": ["p", "p"], "label": [0, 1],
           "label_name": ["x", "y"], "input_ids": [[0, 2], [0, 5, 2]]}
    for split in ("train", "test"):
        Dataset.from_dict(ids).save_to_disk(str(tmp_path / f"{split}_tokens"))
    out = finetune_stage.load(tmp_path)
    assert [(c.name, c.path, c.learning_rate) for c in out.tracin_checkpoints()] == [
        (f"epoch{e}", str(tmp_path / f"checkpoint-epoch{e}"), lr) for e, lr in enumerate(rates, 1)]
    assert out.info == {"vocab_size": 7} and out.history["accuracy"].tolist() == [0.5]
    assert out.ids("test").columns.tolist() == list(finetune_stage.FinetuneOutputs.ID_COLUMNS)
    assert out.ids("train")["language"].tolist() == ["en", "fr"]
