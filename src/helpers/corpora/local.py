"""Local copies of the hub corpora: where a split's file is (:func:`find`) and reading it at a bounded cost
(:func:`read`), with errors that name the file and, for text formats, the line.

A split of a language is found under ``<corpus_dir>/<language>/`` in one of the layouts that the usual ways of saving
a hub dataset write (:data:`LAYOUTS`)::

    <split>.jsonl  <split>.json  <split>.parquet  <split>.csv  <split>.tsv     one file
    <split>-00000-of-00001.parquet (or .jsonl, .json, .csv, .tsv)             a hub download (huggingface-cli)
    <split>/*.parquet                                                         parquet shards
    <split>/ (dataset_info.json, state.json, *.arrow)                         Dataset.save_to_disk
    dataset_dict.json + <split>/                                              DatasetDict.save_to_disk

More than one layout for the same split is refused (which one was meant is not guessed). Before anything is read,
each file must be a regular file (not a FIFO, device or folder) of at most :data:`MAX_FILE_BYTES`, and text files
must decode as UTF-8 line by line. CSV is read quoted (as pandas and ``datasets`` write it); TSV unquoted, as PAWS-X's
own files are (a leading quote is text). Text cells are kept as written: no value is read as missing except an
absent JSON key or a JSON ``null`` (``NS``, ``NA``, ``None`` stay text).
"""

from __future__ import annotations

import csv
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import CorpusFormatError

#: A local file (or a save_to_disk folder's arrow files together) larger than this is refused before it is read.
#: The largest split of the three corpora, one language's machine-translated XNLI training set (392,702 pairs), is a
#: small fraction of it in every format. Raise it here for a larger corpus.
MAX_FILE_BYTES = 2 * 1024**3
#: File suffixes read, and how.
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv")
#: The layouts, in words (for messages).
LAYOUTS = ("<split>.jsonl (or .json, .parquet, .csv, .tsv)", "<split>-NNNNN-of-NNNNN.parquet (a hub download)",
           "<split>/*.parquet", "<split>/ written by save_to_disk")


@dataclass(frozen=True)
class Source:
    """Where one split of one language is: ``files`` read in order (``kind``: a suffix without its dot, or
    ``save_to_disk``), ``shown`` is how messages name it."""

    kind: str
    files: tuple[Path, ...]
    shown: str
    line_numbers: bool  # rows are lines (JSON lines, TSV): messages can name the line

    def where(self, row: int) -> str:
        """Row ``row`` (0-based) of the split, in words: the line of a JSON lines or TSV file, else the row."""
        if self.line_numbers and len(self.files) == 1:
            return f"line {row + 1 + (self.kind == 'tsv')}"  # TSV: after the header line
        return f"row {row + 1}"


def find(folder: Path, split: str) -> Source | None:
    """The one source of ``split`` in ``folder`` (a language's folder), None when there is none; several are
    refused."""
    found: list[Source] = []
    for suffix in SUFFIXES:
        path = folder / f"{split}{suffix}"
        if path.exists() or path.is_symlink():
            found.append(_source(suffix[1:], [path], str(path)))
        shards = sorted(folder.glob(f"{split}-[0-9]*-of-[0-9]*{suffix}"))
        if shards:
            found.append(_source(suffix[1:], shards, str(folder / f"{split}-*-of-*{suffix}")))
    sub = folder / split
    if sub.is_dir():
        if any((sub / name).exists() for name in ("state.json", "dataset_info.json", "dataset_dict.json")):
            # (a DatasetDict saved where one split belongs is found too, so that reading it says what to do)
            arrows = sorted(sub.glob("*.arrow")) or sorted(sub.glob("*/*.arrow"))
            found.append(Source("save_to_disk", tuple(arrows), str(sub), False))
        else:
            shards = sorted(sub.glob("*.parquet"))
            if shards:
                found.append(Source("parquet", tuple(shards), str(sub / "*.parquet"), False))
    if len(found) > 1:
        raise CorpusFormatError(f"{folder}: split {split!r} is there in {len(found)} layouts ("
                                f"{', '.join(s.shown for s in found)}); keep one")
    return found[0] if found else None


def _source(kind: str, files: list[Path], shown: str) -> Source:
    return Source(kind, tuple(files), shown, kind in ("jsonl", "tsv"))


def check_files(source: Source) -> None:
    """Every file of ``source`` is a regular file and together they are at most :data:`MAX_FILE_BYTES` (checked
    with ``stat`` before anything is opened: a FIFO would block a reader forever, a huge file would fill memory)."""
    total = 0
    for path in source.files:
        try:
            info = os.stat(path)  # follows a symbolic link to what it names
        except OSError as err:
            raise CorpusFormatError(f"{path}: cannot be read ({err.strerror})") from None
        if not stat.S_ISREG(info.st_mode):
            kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a folder" if stat.S_ISDIR(info.st_mode)
                    else "a device or socket")
            raise CorpusFormatError(f"{path}: is {kind}, not a regular file; a corpus file must be a regular file")
        total += info.st_size
    if total > MAX_FILE_BYTES:
        raise CorpusFormatError(f"{source.shown}: {total:,} bytes, more than the {MAX_FILE_BYTES:,} this loader "
                                f"reads (helpers.corpora.local.MAX_FILE_BYTES); keep only the rows the run needs "
                                f"or raise the limit")


def check_utf8(path: Path) -> None:
    """Every line of a text file decodes as UTF-8; the error names the line and the column (in bytes)."""
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise CorpusFormatError(f"{path}, line {number}: not UTF-8 text (byte 0x{line[err.start]:02x} at "
                                        f"byte {err.start + 1} of the line); save the file as UTF-8") from None


def read(source: Source) -> pd.DataFrame:
    """The rows of ``source`` as a frame, in the file's order (shards in name order), with the columns as written."""
    check_files(source)
    if source.kind == "save_to_disk":
        return _read_saved(Path(source.shown))
    parts = [_read_one(path, source.kind) for path in source.files]
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _read_one(path: Path, kind: str) -> pd.DataFrame:
    if kind == "parquet":
        try:
            return pd.read_parquet(path)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError...
            raise CorpusFormatError(f"{path}: not a readable parquet file ({type(err).__name__}: "
                                    f"{str(err).splitlines()[0][:200]})") from None
    check_utf8(path)
    if kind in ("csv", "tsv"):
        options = dict(sep="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else {}
        try:
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig",
                               **options)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
            raise CorpusFormatError(f"{path}: not readable as {kind.upper()} ({str(err).strip()[:200]})") from None
    return _read_json(path, kind)


def _read_json(path: Path, kind: str) -> pd.DataFrame:
    """JSON lines (``.jsonl``, and ``.json`` as ``datasets``' ``to_json`` writes it) or a JSON array of objects."""
    with open(path, encoding="utf-8-sig") as fh:
        head = fh.read(4096).lstrip()
    if kind == "json" and head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise CorpusFormatError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
        if not all(isinstance(r, dict) for r in rows):
            raise CorpusFormatError(f"{path}: a JSON array must hold one object per row")
        return pd.DataFrame.from_records(rows)
    try:
        return pd.read_json(path, lines=True, dtype=False, precise_float=True, encoding="utf-8")
    except ValueError:
        pass
    with open(path, encoding="utf-8-sig") as fh:  # find the line pandas could not read
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusFormatError(f"{path}, line {number}: not valid JSON ({err.msg}); a JSON lines file holds "
                                        "one object per line") from None
            if not isinstance(value, dict):
                raise CorpusFormatError(f"{path}, line {number}: not a JSON object; a JSON lines file holds one "
                                        "object per line")
    raise CorpusFormatError(f"{path}: not readable as JSON lines")


def _read_saved(folder: Path) -> pd.DataFrame:
    import datasets

    try:
        saved = datasets.load_from_disk(str(folder))
    except Exception as err:  # datasets raises FileNotFoundError, ValueError, ArrowInvalid...
        raise CorpusFormatError(f"{folder}: not readable as a save_to_disk folder ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    if isinstance(saved, datasets.DatasetDict):
        raise CorpusFormatError(f"{folder}: holds a DatasetDict ({list(saved)}); point at one split's folder, laid "
                                "out as <language>/<split>/")
    return saved.to_pandas()
