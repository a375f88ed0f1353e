"""nbval runs every notebook with its stored (smoke) parameters. The chapters read several runs of the smoke study
(seeds, a parallel run, an imbalance run, a control run), so the study is built first, through the runner, into
the temporary artifacts folder the Makefile gives nbval; then each notebook runs top to bottom as stored."""

import os

from helpers import paths, study
from helpers.flow import runner


def pytest_sessionstart(session):
    if "HELPERS_ARTIFACTS" not in os.environ:
        raise RuntimeError("run nbval through `make test` (it points HELPERS_ARTIFACTS at a temporary folder), so "
                           "that your own artifacts/ are left alone")
    if not (paths.study_dir("smoke") / study.MANIFEST).exists():
        runner.run("smoke", build=False, jobs=2)  # its stages are short: two at a time halve the kernels' start-up
