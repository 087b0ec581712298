"""Hugging Face Hub repo ids where a model path is expected (`--vlm_path Qwen/Qwen3-VL-2B-Instruct`).

`resolve_model_path(value, flag)`:
- an existing local path is returned unchanged;
- a value that looks like a Hub repo id, `org/name` or `org/name@revision` (never one starting with
  `/`, `./`, `../` or `~`), resolves to its snapshot directory in the standard cache
  (`HF_HUB_CACHE`, else `HF_HOME/hub`) through `huggingface_hub.snapshot_download`, which downloads
  it when online; with `HF_HUB_OFFLINE=1` only the cache is read. Any failure is one
  `LatentVLAError` naming the flag, the repo id, the cache directory and the offline state;
- anything else is returned as a `Path`, so the caller's own "not found" error names it.

A repo id always means the whole repo (its snapshot directory). Flags that also take a file
(`--lam_path` a UniVLA `.ckpt`, `--dino_path` a `.pth`) pass `file_suffixes`: a snapshot that is no
model directory itself (no `config.json`, no `checkpoints/`) and holds exactly one such file at its
top level resolves to that file; with several, the error names them (pass one as a local path).

`resolve_model_flags(cfg, {...})` does this in place for several fields of a config and returns
what came from the Hub (recorded by the runs in their config).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latentvla.errors import LatentVLAError

# The Hub's rules: `[\w.-]` names, not starting or ending with `.` / `-`, no `--` or `..`, at most 96.
_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[\w.-]+))?$")


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_repo_id(value: str) -> HubRef | None:
    """`org/name[@revision]` -> HubRef; None for anything that is not shaped like a Hub repo id."""
    m = _REPO_ID.match(str(value))
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        return None
    return HubRef(m["repo"], m["revision"])


def hub_cache_dir() -> Path:
    """The cache `snapshot_download` uses, read from the environment now: huggingface_hub reads its
    constants once at import, which would miss a variable set afterwards (tests, notebooks)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(cache)))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) now, or as huggingface_hub saw it at import."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def resolve_model_path(value: str | Path, flag: str, *, file_suffixes: tuple[str, ...] = ()) -> Path:
    """A local path for `value` (see the module doc); `flag` (e.g. "--vlm_path") names it in errors."""
    return _resolve(str(value), flag, file_suffixes)[0]


def resolve_model_flags(cfg: Any, fields: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """Resolve `cfg.<field>` in place for each field (value: its `file_suffixes`); unset fields are
    skipped. -> {field: {"repo_id", "revision", "local_path"}} for the values that were Hub repo ids."""
    record: dict[str, dict] = {}
    for name, suffixes in fields.items():
        value = getattr(cfg, name)
        if not value:
            continue
        path, ref = _resolve(str(value), f"--{name}", suffixes)
        if ref is not None:
            setattr(cfg, name, str(path))
            record[name] = {"repo_id": ref.repo_id, "revision": ref.revision, "local_path": str(path)}
    return record


def _resolve(value: str, flag: str, file_suffixes: tuple[str, ...]) -> tuple[Path, HubRef | None]:
    if Path(value).exists():
        return Path(value), None
    ref = parse_repo_id(value)
    if ref is None:
        return Path(value), None
    snapshot = _snapshot(ref, flag)
    if file_suffixes and not (snapshot / "config.json").is_file() and not (snapshot / "checkpoints").is_dir():
        files = sorted(p for p in snapshot.iterdir() if p.is_file() and p.name.endswith(file_suffixes))
        if len(files) == 1:
            return files[0], ref
        if len(files) > 1:
            raise LatentVLAError(f"{flag} {value}: the Hugging Face repo holds several checkpoints "
                                 f"({', '.join(p.name for p in files)}); pass the one you mean as a local path, "
                                 f"e.g. {flag} {files[0]}")
    return snapshot, ref


def _snapshot(ref: HubRef, flag: str) -> Path:
    cache, offline = hub_cache_dir(), hub_offline()
    fix = (f"download it with `hf download {ref.repo_id}" + (f" --revision {ref.revision}" if ref.revision else "")
           + "` or pass a local directory")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LatentVLAError(f"{flag} {ref}: not a local path, and huggingface_hub (needed to read a Hugging Face "
                             "repo id) is not installed; pass a local directory") from None
    try:
        # cache_dir / local_files_only from the environment now (see hub_cache_dir)
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, cache_dir=str(cache),
                                      local_files_only=offline))
    except Exception as e:  # offline and not cached, unknown repo or revision, no network, gated...
        kinds = {c.__name__ for c in type(e).__mro__}
        cached = f"in the cache {cache} ({'HF_HUB_OFFLINE=1' if offline else 'HF_HUB_OFFLINE not set'})"
        if "RevisionNotFoundError" in kinds:
            why = f"has no revision {ref.revision!r} on the Hub, nor {cached}"
        elif "GatedRepoError" in kinds:
            why = f"is gated (accept its terms on huggingface.co, then `hf auth login`) and is not {cached}"
        elif "RepositoryNotFoundError" in kinds:
            why = f"was not found on the Hub (private repos need `hf auth login`), nor {cached}"
        elif offline:
            why = f"is not {cached}"
        else:
            why = f"is not {cached} and could not be downloaded ({_first_line(e)})"
        raise LatentVLAError(f"{flag} {ref}: not a local path, and the Hugging Face repo {why}; {fix}") from None


def _first_line(e: Exception) -> str:
    root = e.__cause__ or e  # huggingface_hub wraps the network error it fell back from
    text = str(root).strip().splitlines()
    return f"{type(root).__name__}: {text[0][:200] if text else ''}"
