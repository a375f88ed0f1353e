"""Parameter validation: every bad input stops the run with a message naming the parameter and what is allowed."""

import json
from pathlib import Path

import pytest
import yaml

from helpers import config, paths
from helpers.config import ConfigError


def smoke():
    return config.resolve("smoke")


@pytest.mark.parametrize("profile", sorted(p.stem for p in paths.PARAMS.glob("*.yaml")))
def test_every_profile_is_complete_and_valid(profile):
    params = config.resolve(profile)
    assert set(params) == set(config.PARAMETERS)


def test_unknown_parameter_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown parameter 'top_kk'.*did you mean 'top_k'"):
        config.resolve("smoke", ["top_kk=5"])


def test_wrong_type_names_parameter_and_expected_type():
    with pytest.raises(ConfigError, match=r"'epochs' must be an integer, got 'three'"):
        config.resolve("smoke", ["epochs=three"])
    with pytest.raises(ConfigError, match=r"'parallel_train' must be true or false"):
        config.resolve("smoke", ["parallel_train=1"])


def test_language_the_data_lacks_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        config.resolve("smoke", ["fine_tune_languages=[en,xx]"])
    message = str(err.value)
    assert "'fine_tune_languages'" in message and "'xx'" in message and "'ko'" in message


def test_zero_shot_languages_must_be_unseen():
    with pytest.raises(ConfigError, match="overlaps 'fine_tune_languages'"):
        config.resolve("smoke", ["zero_shot_languages=[en]"])


def test_top_k_cannot_exceed_the_training_set():
    params = smoke()
    n = params["train_per_language"] * len(params["fine_tune_languages"])
    with pytest.raises(ConfigError, match=rf"'top_k'.*allowed: 1\.\.{n}"):
        config.resolve("smoke", [f"top_k={n + 1}"])


def test_tracin_subset_spec_is_checked():
    assert config.resolve("smoke", ["tracin_params=last_layers:2"])["tracin_params"] == "last_layers:2"
    with pytest.raises(ConfigError, match="'tracin_params'.*last_layers:N"):
        config.resolve("smoke", ["tracin_params=last_layer"])


def test_overrides_are_read_as_yaml():
    params = config.resolve("smoke", ['fine_tune_languages=["en","de","ru"]', "top_k=5", "learning_rate=1e-4"])
    assert params["fine_tune_languages"] == ["en", "de", "ru"]
    assert params["top_k"] == 5 and params["learning_rate"] == pytest.approx(1e-4)


def test_unknown_profile_lists_available_ones():
    with pytest.raises(ConfigError, match=r"profile 'nope' not found; available: \[.*'smoke'"):
        config.resolve("nope")


def _parameter_cell(notebook: Path) -> dict:
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook.name} must have exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def test_notebook_parameter_cells_declare_their_stage_keys_with_smoke_defaults():
    from helpers.pipeline import NOTEBOOKS

    profile = yaml.safe_load((paths.PARAMS / "smoke.yaml").read_text())
    for stage, name in NOTEBOOKS.items():
        declared = _parameter_cell(paths.NOTEBOOKS / name)
        assert list(declared) == config.stage_keys(stage), name
        for key, value in declared.items():
            assert value == profile[key], f"{name}: default of {key!r} differs from params/smoke.yaml"


def test_string_parameters_stay_strings_and_a_zero_learning_rate_is_refused():
    assert config.resolve("smoke", ["run_name=2024"])["run_name"] == "2024"
    with pytest.raises(ConfigError, match="'learning_rate' is 0"):
        config.resolve("smoke", ["learning_rate=0"])


def test_a_notebook_checks_its_parameters_against_the_earlier_stages(tmp_path, monkeypatch):
    from helpers import artifacts

    monkeypatch.setenv("HELPERS_ARTIFACTS", str(tmp_path))
    params = config.resolve("smoke")
    artifacts.write_json(paths.stage_dir("smoke", "tracin") / "params.json", artifacts.stage_params(params, "tracin"))
    namespace = {"run_name": "smoke", "seed": 0, "top_k": 10, "influence_kind": "proponents"}
    assert config.for_stage("language_shares", namespace, show=False)["top_k"] == 10
    with pytest.raises(ConfigError, match="'top_k' is 1000"):
        config.for_stage("language_shares", {**namespace, "top_k": 1000}, show=False)
