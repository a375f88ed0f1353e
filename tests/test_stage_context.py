"""A stage as a notebook drives it (``context.begin`` ... ``ctx.commit()``), without papermill: the fingerprint it
records is the one the runner expects, its inputs are the committed folders, a missing input is named."""

import pytest
import yaml

from helpers import config, paths, study
from helpers.flow import context, fingerprint, graph, store

PROFILE = {"parameters": {"model": "tiny-random", "train_per_language": 12, "test_per_language": 6, "top_k": 10,
                          "attribution_test_per_language": 2, "attribution_groups": ["last_layers:1", "all"]},
           "runs": {"main": {}}}


@pytest.fixture
def mini(tmp_path, monkeypatch):
    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path / "artifacts"))
    profile = tmp_path / "mini.yaml"
    profile.write_text(yaml.safe_dump(PROFILE))
    s = study.resolve(profile)
    s.save()
    return s


def namespace(inst: graph.Instance) -> dict:
    return {"study": "mini", **({"run": inst.run.name} if inst.run else {}), **inst.params}


def test_a_committed_stage_records_the_fingerprint_the_runner_expects_and_feeds_the_next(mini, capsys):
    plan = graph.plan(mini)
    expected = fingerprint.expected(plan)
    data_inst, finetune_inst = plan[0], plan[1]
    assert (data_inst.stage.name, finetune_inst.stage.name) == ("data", "finetune")
    with pytest.raises(store.MissingStageError, match=r"stage 'data' of run 'main-s0' has no complete outputs"):
        context.begin("finetune", namespace(finetune_inst), show=False)

    ctx = context.begin("data", namespace(data_inst))
    assert "Stage 'data', run 'main-s0' of study 'mini'" in capsys.readouterr().out
    (ctx.path / "train.parquet").write_text("stand-in")
    final = ctx.commit()
    assert final == store.folder("mini", data_inst) and (final / "train.parquet").exists()
    record = store.read_record(final)
    assert record["fingerprint"] == expected[data_inst.key] and record["identity"] == data_inst.identity
    assert record["params"] == data_inst.params and record["run"] == "main-s0"

    ctx = context.begin("finetune", namespace(finetune_inst), show=False)
    assert ctx.input("data") == final
    with pytest.raises(KeyError, match="does not read 'tracin'"):
        ctx.input("tracin")
    assert ctx.fingerprint == expected[finetune_inst.key]


def test_begin_refuses_bad_parameters_and_unknown_runs(mini):
    inst = graph.plan(mini)[0]
    with pytest.raises(config.ConfigError, match="'seed' must be an integer"):
        context.begin("data", {**namespace(inst), "seed": "zero"}, show=False)
    with pytest.raises(config.ConfigError, match="parameter 'run' is 'nope'"):
        context.begin("data", {**namespace(inst), "run": "nope"}, show=False)
    with pytest.raises(config.ConfigError, match="needs a 'study' parameter"):
        context.begin("data", {k: v for k, v in namespace(inst).items() if k != "study"}, show=False)
    assert not paths.stage_dir("mini", "data", inst.identity).exists()
