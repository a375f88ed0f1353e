"""One module per analysis chapter of the book.

Each module declares its stage (``STAGE``: notebook, the runs it reads by role, its own parameters) and a
``compute(...)`` returning a :class:`Result`: the chapter's tables and its claims (:mod:`helpers.claims`). Its
notebook only calls ``compute``, shows the tables and charts, and renders the verdict from the claims. Adding a
chapter: one module here, one notebook, one test, one line in ``_toc.yml`` (a test checks the TOC against the stages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import claims as claims_mod
from ..claims import Claim


@dataclass
class Result:
    """What a chapter computed: named tables (saved as CSV) and its claims (saved as ``claims.csv``)."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)

    @property
    def claims_table(self) -> pd.DataFrame:
        return claims_mod.table(self.claims)

    def verdict(self) -> str:
        """The chapter's closing paragraph, rendered from its claims."""
        return claims_mod.verdict_markdown(self.claims_table)

    def save(self, folder: Path) -> None:
        for name, frame in self.tables.items():
            frame.to_csv(Path(folder) / f"{name}.csv", index=False)
        claims_mod.save(self.claims, folder)
