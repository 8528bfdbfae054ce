"""Upload one staged folder to a Hub repo as ONE commit, safely.

- `create_repo(exist_ok=True)`, then a single `create_commit` with an explicit operation list and
  `parent_commit`: the repo shows the whole publish or none of it, and a branch that moved under
  us is a conflict, not an overwrite.
- Files identical to the remote ones (git blob sha / LFS sha256) are not sent; when nothing
  changed no commit is made at all.
- huggingface_hub does not retry the commit request (a lost response could duplicate it). We
  retry it only after checking that the branch is still at our parent commit; when the branch
  moved and now holds exactly our files, the commit landed and its response was lost.
- The token comes from HF_TOKEN or huggingface_hub's token store and is never printed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TypeVar

from train.data import file_sha256
from train.errors import ScionError

T = TypeVar("T")
RETRIES = 3


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_sha: Optional[str]
    commit_url: Optional[str]
    pr_url: Optional[str]
    uploaded: list[str]
    changed: bool


def git_blob_sha(path: Path) -> str:
    """The git object id of a file (what the Hub reports as blob_id for non-LFS files)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _status(error: Exception) -> Optional[int]:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _with_retries(call: Callable[[], T], what: str) -> T:
    """Retry an idempotent Hub call on 429/5xx and connection errors (the client does not for these)."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(RETRIES):
        try:
            return call()
        except HfHubHTTPError as e:
            if _status(e) not in (429, 500, 502, 503, 504) or attempt == RETRIES - 1:
                raise _hub_error(e, what) from None
        except (OSError, ConnectionError) as e:
            if attempt == RETRIES - 1:
                raise ScionError(f"publish: {what} failed: {type(e).__name__}: {e}") from None
        time.sleep(2 ** attempt)
    raise AssertionError("unreachable")


def _hub_error(error: Exception, what: str) -> ScionError:
    status = _status(error)
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if status == 401:
        return ScionError(f"publish: {what}: the Hub rejected the token (401); set a valid HF_TOKEN")
    if status == 403:
        return ScionError(f"publish: {what}: the token may not write here (403): use a token with write access")
    return ScionError(f"publish: {what} failed: {first}")


def remote_files(api, repo_id: str, revision: str) -> tuple[Optional[str], dict[str, str]]:
    """(head commit, {path: content id}) of a branch; (None, {}) when the branch does not exist yet."""
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        info = _with_retries(lambda: api.model_info(repo_id, revision=revision, files_metadata=True), "reading the repo")
    except RevisionNotFoundError:
        return None, {}
    ids = {}
    for sibling in info.siblings or []:
        ids[sibling.rfilename] = sibling.lfs.sha256 if sibling.lfs else sibling.blob_id
    return info.sha, ids


def changed_files(folder: Path, remote: dict[str, str]) -> list[Path]:
    """Local files that differ from the remote ones. The remote id is an LFS sha256 (64 hex digits)
    or a git blob sha (40): each file is hashed once, the way its remote copy is identified."""
    changed = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        remote_id = remote.get(path.relative_to(folder).as_posix())
        if remote_id is None:
            changed.append(path)
            continue
        local_id = file_sha256(path) if len(remote_id) == 64 else git_blob_sha(path)
        if local_id != remote_id:
            changed.append(path)
    return changed


def push_folder(folder: Path, repo_id: str, *, revision: str = "main", private: bool = False, create_pr: bool = False,
                commit_message: str, token: Optional[str]) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not token:
        raise ScionError("publish: no Hub token; set HF_TOKEN or log in with `hf auth login`")
    api = HfApi(token=token)
    _with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"), f"creating {repo_id}")
    if revision != "main" and not revision.startswith("refs/pr/"):
        _with_retries(lambda: api.create_branch(repo_id, branch=revision, exist_ok=True), f"creating branch {revision}")
    head, remote = remote_files(api, repo_id, revision)
    changed = changed_files(folder, remote)
    if not changed:
        return PushResult(repo_id, revision, head, None, None, [], changed=False)

    operations = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p)) for p in changed]
    uploaded = [op.path_in_repo for op in operations]
    for attempt in range(RETRIES):
        try:
            info = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                     create_pr=create_pr, parent_commit=head)
            return PushResult(repo_id, revision, info.oid, info.commit_url, info.pr_url, uploaded, changed=True)
        except HfHubHTTPError as e:
            if _status(e) == 412:
                raise ScionError(
                    f"publish: {repo_id}@{revision} moved while publishing (it is no longer at {head}); "
                    "nothing was written. Publish again to build on the new head"
                ) from None
            if _status(e) in (400, 401, 403, 404, 409, 422):
                raise _hub_error(e, f"committing to {repo_id}@{revision}") from None
            failure = e
        except (OSError, ConnectionError, Exception) as e:  # a lost response arrives as a transport error
            if isinstance(e, ScionError):
                raise
            failure = e
        # Did the commit land although its response was lost?
        new_head, now = remote_files(api, repo_id, revision)
        if not create_pr and new_head != head and not changed_files(folder, now):
            return PushResult(repo_id, revision, new_head, None, None, uploaded, changed=True)
        if new_head != head:
            raise ScionError(f"publish: {repo_id}@{revision} moved while publishing; nothing of ours landed")
        if attempt < RETRIES - 1:
            time.sleep(2 ** attempt)
    first = str(failure).splitlines()[0] if str(failure) else type(failure).__name__
    raise ScionError(f"publish: the commit to {repo_id}@{revision} failed {RETRIES} times ({first}); "
                     f"the branch is unchanged at {head}")
