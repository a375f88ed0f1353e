"""Small study profiles shared by several test modules."""

#: A one-run study of the tiny model (study name "one" when written to one.yaml); ``conftest.built`` runs it once per
#: session.
ONE_RUN = {"parameters": {"model": "tiny-random", "train_per_language": 12, "test_per_language": 6, "max_length": 48,
                          "epochs": 2, "batch_size": 8, "learning_rate": 0.001, "top_k": 10, "n_bootstrap": 100,
                          "attribution_test_per_language": 2, "examples_per_language": 1,
                          "attribution_groups": ["last_layers:1", "classifier"]},
           "runs": {"main": {}}}
