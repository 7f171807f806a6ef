"""Pretraining text: local .txt, .jsonl (a 'text' field) or .parquet (a 'text' column) files, or a directory of
them, streamed document by document (a corpus larger than memory works), tokenised and packed into fixed-length
rows. Row i goes to data-parallel rank i mod world, so ranks never train on the same row.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from recurlm.errors import UserError
from recurlm.text.tokenizer import BOS, Tokenizer

SUFFIXES = (".txt", ".jsonl", ".parquet")


def corpus_files(spec: str) -> list[Path]:
    """A file, a directory (its corpus files, sorted) or a comma-separated list of either."""
    files = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
        elif path.is_file():
            if path.suffix not in SUFFIXES:
                raise UserError(f"{path}: unsupported corpus file (use {', '.join(SUFFIXES)})")
            files.append(path)
        else:
            raise UserError(f"corpus not found: {path}")
    if not files:
        raise UserError(f"no corpus files in {spec}")
    return files


def _txt(path: Path) -> Iterator[str]:
    """Documents are separated by blank lines."""
    lines = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).strip()
                lines = []
    if lines:
        yield "".join(lines).strip()


def _jsonl(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{path}:{i}: malformed line, expected a JSON object with 'text' ({e})") from None
            if not isinstance(text, str):
                raise UserError(f"{path}:{i}: 'text' must be a string")
            yield text


def _parquet(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    pf = pq.ParquetFile(path)
    if "text" not in pf.schema_arrow.names:
        raise UserError(f"{path}: no 'text' column (columns: {', '.join(pf.schema_arrow.names)})")
    for batch in pf.iter_batches(columns=["text"], batch_size=1024):
        yield from (t for t in batch.column(0).to_pylist() if t)


def iter_documents(spec: str) -> Iterator[str]:
    readers = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
    for path in corpus_files(spec):
        yield from readers[path.suffix](path)


def sample_texts(spec: str, max_chars: int = 5_000_000) -> list[str]:
    """The first few MB of a corpus, to train a tokenizer on."""
    out, total = [], 0
    for doc in iter_documents(spec):
        out.append(doc)
        total += len(doc)
        if total >= max_chars:
            break
    return out


class TextStream:
    """Rows of seq_len + 1 tokens (<|bos|> doc <|bos|> doc ...) for one rank, epoch after epoch. `skip(n)` jumps
    over rows already trained on, so a resumed run continues where it stopped."""

    def __init__(self, spec: str, tok: Tokenizer, seq_len: int, rank: int = 0, world: int = 1):
        self.spec, self.tok, self.T, self.rank, self.world = spec, tok, seq_len, rank, world
        self.bos = tok.token_id(BOS) if tok.token_id(BOS) is not None else tok.eos_id
        self.rows = self._rows()

    def _rows(self) -> Iterator[list[int]]:
        while True:
            buf, index, any_doc = [], 0, False
            for doc in iter_documents(self.spec):
                any_doc = True
                buf += [self.bos] + self.tok.encode(doc)
                while len(buf) >= self.T + 1:
                    row, buf = buf[: self.T + 1], buf[self.T + 1 :]
                    if index % self.world == self.rank:
                        yield row
                    index += 1
            if not any_doc:
                raise UserError(f"corpus is empty: {self.spec}")
            if index < self.world:
                raise UserError(f"corpus {self.spec} holds less than one {self.T + 1}-token row per rank")

    def skip(self, n: int):
        for _ in range(n):
            next(self.rows)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.tensor([next(self.rows) for _ in range(n)], dtype=torch.long)
        return rows[:, :-1], rows[:, 1:]
