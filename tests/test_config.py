"""Parameters and study profiles: every bad input stops the run with a message naming it and what is allowed."""

import json
from pathlib import Path

import pytest
import yaml

from helpers import config, paths, study
from helpers.config import ConfigError
from helpers.flow.stage import all_stages


def raw_profile(name):
    """The YAML as written; a profile that ``extends`` another, merged by hand: its seeds if it has them, the base's
    parameters and runs with its own on top (a run both name: key by key)."""
    spec = yaml.safe_load((paths.PARAMS / f"{name}.yaml").read_text())
    if "extends" in spec:
        base = raw_profile(spec["extends"])
        own = spec.get("runs", {})
        runs = {**base["runs"], **{k: {**base["runs"].get(k, {}), **(v or {})} for k, v in own.items()}}
        spec = {"seeds": spec.get("seeds", base.get("seeds", [0])),
                "parameters": {**base.get("parameters", {}), **spec.get("parameters", {})}, "runs": runs}
    return spec


@pytest.mark.parametrize("profile", sorted(p.stem for p in paths.PARAMS.glob("*.yaml")))
def test_every_profile_resolves_to_the_runs_its_yaml_declares(profile, monkeypatch):
    """Each run's parameters, rebuilt from the YAML by hand: declared defaults, then the profile's parameters, then
    the run's own overrides, then its seed; runs named <variant>-s<seed> in the profile's order. (Resolving reads no
    model and no corpus: the runner's feasibility check does, tests/test_paper_smoke.py checks its offline errors.)"""
    spec = raw_profile(profile)
    s = study.resolve(profile)
    expected = {}
    for variant, overrides in spec["runs"].items():
        overrides = dict(overrides or {})
        for seed in overrides.pop("seeds", spec.get("seeds", [0])):
            params = {k: p.default for k, p in config.PARAMETERS.items() if p.scope == "run"}
            params.update({k: v for k, v in spec.get("parameters", {}).items() if config.PARAMETERS[k].scope == "run"})
            expected[f"{variant}-s{seed}"] = {**params, **overrides, "seed": seed}
    assert list(s.runs) == list(expected)
    for name, run in s.runs.items():
        assert run.params == expected[name], name
        assert (run.variant, run.seed) == (name.rsplit("-s", 1)[0], expected[name]["seed"])
    study_params = {k: p.default for k, p in config.PARAMETERS.items() if p.scope == "study"}
    assert s.params == {**study_params, **{k: v for k, v in spec.get("parameters", {}).items() if k in study_params}}


def test_profiles_hold_only_differences_from_the_declared_defaults():
    for path in paths.PARAMS.glob("*.yaml"):
        spec = study.load_profile(path)
        same = {k: v for k, v in spec["parameters"].items() if config.PARAMETERS[k].default == v}
        assert not same, f"{path.name} repeats declared defaults: {same}"
        for variant, overrides in spec["runs"].items():
            redundant = {k: v for k, v in (overrides or {}).items()
                         if k != "seeds" and spec["parameters"].get(k, config.PARAMETERS[k].default) == v}
            assert not redundant, f"{path.name}: run {variant} repeats {redundant}"


def test_unknown_parameter_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown parameter 'top_kk'.*did you mean 'top_k'"):
        study.resolve("smoke", ["top_kk=5"])


def test_wrong_type_names_parameter_and_expected_type():
    with pytest.raises(ConfigError, match=r"'epochs' must be an integer, got 'three'"):
        study.resolve("smoke", ["epochs=three"])
    with pytest.raises(ConfigError, match=r"'parallel_train' must be true or false"):
        study.resolve("smoke", ["parallel_train=1"])
    with pytest.raises(ConfigError, match=r"'learning_rate' must be a finite number"):
        study.resolve("smoke", ["learning_rate=.nan"])


def test_language_the_data_lacks_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        study.resolve("smoke", ["fine_tune_languages=[en,xx]"])
    assert "'fine_tune_languages'" in str(err.value) and "'xx'" in str(err.value) and "'ko'" in str(err.value)


def test_relations_between_parameters():
    with pytest.raises(ConfigError, match="overlaps 'fine_tune_languages'"):
        study.resolve("smoke", ["zero_shot_languages=[en]"])
    with pytest.raises(ConfigError, match=r"'top_k'.*allowed: 1\.\.60"):
        study.resolve("smoke", ["top_k=61"])
    with pytest.raises(ConfigError, match="'imbalance_language' is 'pt', not a fine-tuning language"):
        study.resolve("smoke", ["imbalance4.imbalance_language=pt"])
    with pytest.raises(ConfigError, match="needs 'parallel_train: true'"):
        study.resolve("smoke", ["test_translations_in_train=true"])
    with pytest.raises(ConfigError, match="'learning_rate' is 0"):
        study.resolve("smoke", ["learning_rate=0"])
    with pytest.raises(ConfigError, match="'train_per_language' is 5 but label 'genre' has 6 classes"):
        study.resolve("smoke", ["train_per_language=5"])
    with pytest.raises(ConfigError, match="bad regular expression"):
        study.resolve("smoke", ["tracin_params=re:("])


@pytest.mark.parametrize("override, message", [
    ("learning_rate=-0.0001", "'learning_rate' is -0.0001, below the minimum"),
    ("max_length=513", "'max_length' is 513, above the maximum"),
    ("max_length=7", "'max_length' is 7, below the minimum"),
    ("warmup_ratio=1.5", "'warmup_ratio' is 1.5, above the maximum"),
    ("permuted_share=-0.5", "'permuted_share' is -0.5, below the minimum"),
    ("test_per_language=0", "'test_per_language' is 0, below the minimum"),
    ("fine_tune_languages=[en,fr,en]", "'fine_tune_languages' has duplicates"),
    ("zero_shot_languages=[ko,ko]", "'zero_shot_languages' has duplicates"),
    ("attribution_groups=[all,classifier,all]", "'attribution_groups' has duplicates"),
    ("top_k=10001", "'top_k' is 10001, above the maximum"),
    ("attribution_test_per_language=7", r"'attribution_test_per_language' is 7; allowed: 1\.\.6"),
    ("imbalance_factor=2", "'imbalance_factor' is set but 'imbalance_language' is none"),
    ("planted_share=1.5", "'planted_share' is 1.5, above the maximum"),
    ("main.planted_share=1", "'planted_share' is 1.0 but 'test_translations_in_train' is false"),
])
def test_values_outside_the_declared_range_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        study.resolve("smoke", [override])


@pytest.mark.parametrize("overrides", [
    ["top_k=60"],  # the smoke study's 12 x 5 training samples: k may be all of them
    ["train_per_language=6"],  # as many as the genre task's classes
    ["max_length=512", "pretrain_max_length=512"], ["max_length=8"], ["warmup_ratio=0"], ["warmup_ratio=1"],
    ["control.permuted_share=0"],  # (a share needs a permuted language: the control run has one)
    ["parallel.planted_share=0"], ["parallel.planted_share=1"],  # (the parallel run plants translations)
    ["learning_rate=1e-9"], ["attribution_test_per_language=6"], ["test_per_language=1", "top_k=1",
                                                                   "attribution_test_per_language=1"],
    ["imbalance4.imbalance_factor=20"], ["n_bootstrap=100"], ["confidence=0.999"],
])
def test_values_at_the_bounds_are_accepted(overrides):
    s = study.resolve("smoke", overrides)
    for key, value in map(config.parse_override, overrides):
        variant, _, key = key.rpartition(".")
        run = s.runs[f"{variant}-s0"] if variant else s.first
        assert (s.params if key in config.STUDY_PARAMETERS else run.params)[key] == value


def test_overrides_apply_to_every_run_and_per_variant():
    s = study.resolve("smoke", ["epochs=2", "imbalance4.imbalance_factor=3"])
    assert all(r.params["epochs"] == 2 for r in s.runs.values())
    assert s.runs["imbalance4-s0"].params["imbalance_factor"] == 3
    assert s.runs["main-s0"].params["imbalance_factor"] == 1
    with pytest.raises(ConfigError, match="names run 'nope'"):
        study.resolve("smoke", ["nope.epochs=2"])
    with pytest.raises(ConfigError, match="'seed' is set by the study"):
        study.resolve("smoke", ["seed=3"])


def test_seeds_expand_runs_and_can_be_overridden():
    s = study.resolve("smoke")
    assert [r.name for r in s.role("main")] == ["main-s0", "main-s1"]
    assert [r.name for r in study.resolve("smoke", seeds=[1]).role("main")] == ["main-s1"]
    assert s.first.name == "main-s0"


def test_malformed_profiles_give_one_clear_error(tmp_path):
    cases = {"list.yaml": "- a\n- b\n", "scalar.yaml": "3\n", "bad.yaml": "a: [\n", "keys.yaml": "runs: {}\nfoo: 1\n",
             "nomain.yaml": "runs: {other: {}}\n", "binary.yaml": b"\xff\xfe\x00"}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(ConfigError, match=str(path.name)):
            study.resolve(path)
    with pytest.raises(ConfigError, match=r"profile 'nope' not found.*available: \[.*'smoke'"):
        study.resolve("nope")


def test_analysis_parameters_cannot_be_set_per_run(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("runs: {main: {top_k: 5}}\n")
    with pytest.raises(ConfigError, match="parameter of the analyses"):
        study.resolve(path)


def test_flat_profile_is_one_main_run(tmp_path):
    path = tmp_path / "flat.yaml"
    path.write_text("model: tiny-random\ntrain_per_language: 12\ntest_per_language: 6\n"
                    "attribution_test_per_language: 3\ntop_k: 10\nattribution_groups: [classifier, all]\n")
    s = study.resolve(path)
    assert list(s.runs) == ["main-s0"] and s.runs["main-s0"].params["model"] == "tiny-random"


def test_study_name_cannot_leave_the_artifacts_folder():
    for bad in ("..", ".", "a/b", "../x"):
        with pytest.raises(ConfigError, match="plain folder name"):
            study.resolve("smoke", name=bad)


def _parameter_cell(notebook: Path) -> dict:
    nb = json.loads(notebook.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{notebook.name} must have exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec("".join(cells[0]["source"]), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def test_notebook_parameter_cells_declare_their_stage_parameters_with_smoke_defaults():
    smoke = study.resolve("smoke")
    for stage in all_stages().values():
        declared = _parameter_cell(stage.path)
        expected = ["study", *(["run"] if stage.scope == "run" else []), *stage.params]
        assert list(declared) == expected, stage.notebook
        assert declared["study"] == "smoke" and declared.get("run", smoke.first.name) == smoke.first.name
        for key in stage.params:
            value = smoke.first.params[key] if config.PARAMETERS[key].scope == "run" else smoke.params[key]
            assert declared[key] == value, f"{stage.notebook}: default of {key!r} differs from the smoke study"


def test_override_values_are_typed_by_the_parameter_they_set():
    assert config.parse_override("learning_rate=1e-4") == ("learning_rate", 1e-4)  # YAML 1.1 would read a string
    assert config.parse_override("imbalance4.learning_rate=2e-5") == ("imbalance4.learning_rate", 2e-5)
    assert config.parse_override("control.permuted_language=no") == ("control.permuted_language", "no")  # not False
    assert config.parse_override("tracin_params=re:a=b") == ("tracin_params", "re:a=b")
    assert config.parse_override(" fine_tune_languages = [en, de]") == ("fine_tune_languages", ["en", "de"])
    assert config.parse_override("unknown=1e-4") == ("unknown", 1e-4)  # resolve names it as unknown
    with pytest.raises(ConfigError, match="'top_k5' must look like key=value"):
        config.parse_override("top_k5")
    with pytest.raises(ConfigError, match=r"parameter 'fine_tune_languages': cannot read value '\[en'"):
        config.parse_override("fine_tune_languages=[en")
