"""Checksums of the files a model version is served from (weights, their meta, the FAISS index).

Each file's SHA-256 is recorded when it is saved or registered and checked
before it is read, so a truncated, overwritten or half-copied file is one
clear error naming the file, the model version and what rebuilds it, never a
traceback from the library that failed to parse it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from hmrec.errors import HmrecError

CHUNK = 1 << 20


class ArtifactError(HmrecError):
    """A saved artifact is missing, damaged or unreadable; the message says which and how to rebuild it."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | Path, expected: str | None, what: str, fix: str) -> None:
    """Raise :class:`ArtifactError` unless ``path`` exists and (when ``expected`` is known) has that SHA-256.

    ``what`` names the artifact (e.g. "the weights of model version 3"),
    ``fix`` says what rebuilds it (e.g. "train again with `hmrec train ...`").
    """
    try:
        got = sha256_file(path)
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} is missing; {fix}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: {what} cannot be read ({exc.strerror or exc}); {fix}") from None
    if expected and got != expected:
        raise ArtifactError(
            f"{path}: {what} is damaged (its SHA-256 is {got[:12]}..., {expected[:12]}... was recorded when it was "
            f"saved); {fix}"
        )


def unreadable(path: str | Path, what: str, fix: str, exc: BaseException) -> ArtifactError:
    """The error for a file that passed (or had no) checksum but that its library cannot parse.

    The library's own text is left out: a parser's advice (such as loading
    weights with pickle enabled) is not for the user to follow.
    """
    return ArtifactError(f"{path}: {what} cannot be read ({type(exc).__name__}); {fix}")
