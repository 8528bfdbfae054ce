"""Drive tests.hub_server.HubServer with the real huggingface_hub client.

These tests pin down both the fake Hub's behaviour and the client behaviours the publisher relies
on (what is retried, what raises which exception), so a client upgrade that changes them shows up.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # the HTTP library under huggingface_hub: httpx2 from 2.x, httpx in 1.x
    import httpx2 as hub_http
except ImportError:
    import httpx as hub_http

from tests.hub_server import READ_TOKEN, WRITE_TOKEN, HubServer, hub_server  # noqa: F401

REPO = "scion-tester/qwen-lora"
BASE = "Qwen/Qwen2.5-0.5B-Instruct"
CARD = f"""---
base_model: {BASE}
base_model_relation: adapter
library_name: peft
license: apache-2.0
tags:
- scion
- lora
---
# Qwen LoRA
"""


@pytest.fixture
def api(hub_server) -> HfApi:
    return HfApi()  # picks up the patched endpoint and HF_TOKEN (the write token)


@pytest.fixture
def repo(api) -> str:
    api.create_repo(REPO)
    return REPO


def _add(path: str, data: bytes) -> CommitOperationAdd:
    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)


def _statuses(server: HubServer, method: str, fragment: str) -> list[int | None]:
    return [r.status for r in server.requests if r.method == method and fragment in r.path]


# ---------------------------------------------------------------------------------------------
# Repos, commits, downloads
# ---------------------------------------------------------------------------------------------


def test_fixture_points_client_at_server(hub_server, tmp_path):
    import huggingface_hub.constants as constants

    assert constants.ENDPOINT == hub_server.url
    assert os.environ["HF_TOKEN"] == WRITE_TOKEN
    assert constants.HF_HUB_CACHE.startswith(str(tmp_path))
    assert hub_server.url.startswith("http://127.0.0.1:")


def test_create_repo_twice_with_exist_ok(api, hub_server):
    first = api.create_repo(REPO)
    second = api.create_repo(REPO, exist_ok=True)

    assert first.repo_id == second.repo_id == REPO
    assert _statuses(hub_server, "POST", "/api/repos/create") == [200, 409]
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(REPO)
    assert error.value.response.status_code == 409
    # A new repo holds the Hub's "initial commit" with a .gitattributes.
    assert [c["title"] for c in hub_server.commits(REPO)] == ["initial commit"]


def test_commit_text_and_lfs_files_then_download_byte_exact(api, hub_server, repo):
    text = b"hello from scion\n"
    weights = os.urandom(256 * 1024)  # .safetensors => LFS by extension, like the Hub's .gitattributes

    info = api.create_commit(
        repo,
        operations=[_add("notes.txt", text), _add("adapter/model.safetensors", weights)],
        commit_message="Add adapter",
    )

    assert len(info.oid) == 40 and info.oid == hub_server.head(repo)
    assert info.commit_url == f"{hub_server.url}/{repo}/commit/{info.oid}"
    # Only the weights went through LFS: one batch call and one PUT.
    assert _statuses(hub_server, "POST", "/info/lfs/objects/batch") == [200]
    assert _statuses(hub_server, "PUT", "/_lfs/upload/") == [200]

    assert Path(hf_hub_download(repo, "notes.txt")).read_bytes() == text
    assert Path(hf_hub_download(repo, "adapter/model.safetensors")).read_bytes() == weights

    siblings = {s.rfilename: s for s in api.model_info(repo, files_metadata=True).siblings}
    assert siblings["notes.txt"].lfs is None
    assert siblings["adapter/model.safetensors"].lfs.sha256 == hashlib.sha256(weights).hexdigest()
    assert siblings["adapter/model.safetensors"].size == len(weights)


def test_large_text_file_goes_through_lfs(api, hub_server, repo):
    hub_server.lfs_threshold = 64 * 1024  # same rule as the Hub's 10 MiB, smaller to stay fast
    big = b"x" * (64 * 1024 + 1)

    api.create_commit(repo, operations=[_add("big.txt", big)], commit_message="big")

    assert api.model_info(repo, files_metadata=True).siblings[-1].lfs is not None
    assert hub_server.read_file(repo, "big.txt") == big


def test_lfs_object_already_stored_is_not_uploaded_again(api, hub_server, repo):
    weights = os.urandom(4096)
    api.create_commit(repo, operations=[_add("a.safetensors", weights)], commit_message="a")
    api.create_commit(repo, operations=[_add("b.safetensors", weights)], commit_message="b")

    assert _statuses(hub_server, "PUT", "/_lfs/upload/") == [200]  # second batch had no actions
    assert hub_server.read_file(repo, "b.safetensors") == weights


def test_snapshot_download_and_listing(api, hub_server, repo, tmp_path):
    api.create_commit(
        repo,
        operations=[
            _add("README.md", CARD.encode()),
            _add("sub/dir/config.json", b"{}"),
            _add("model.safetensors", b"\x00weights"),
        ],
        commit_message="files",
    )

    assert sorted(api.list_repo_files(repo)) == [
        ".gitattributes",
        "README.md",
        "model.safetensors",
        "sub/dir/config.json",
    ]
    top = {entry.path for entry in api.list_repo_tree(repo)}
    assert top == {".gitattributes", "README.md", "model.safetensors", "sub"}
    assert [entry.path for entry in api.list_repo_tree(repo, path_in_repo="sub/dir")] == ["sub/dir/config.json"]
    paths = [p.path for p in api.get_paths_info(repo, ["README.md", "sub", "missing.txt"])]
    assert paths == ["README.md", "sub"]

    local = snapshot_download(repo, local_dir=tmp_path / "snap")
    assert Path(local, "sub/dir/config.json").read_bytes() == b"{}"
    assert Path(local, "model.safetensors").read_bytes() == b"\x00weights"


def test_dataset_repo_upload_folder_roundtrip(api, hub_server, tmp_path):
    folder = tmp_path / "data"
    (folder / "shards").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    (folder / "shards" / "train.parquet").write_bytes(os.urandom(2048))
    api.create_repo("scion-tester/sft-data", repo_type="dataset")

    api.upload_folder(repo_id="scion-tester/sft-data", folder_path=folder, repo_type="dataset")

    info = api.dataset_info("scion-tester/sft-data", files_metadata=True)
    assert "license:mit" in info.tags
    assert [s.rfilename for s in info.siblings if s.lfs] == ["shards/train.parquet"]
    local = hf_hub_download("scion-tester/sft-data", "shards/train.parquet", repo_type="dataset")
    assert Path(local).read_bytes() == (folder / "shards" / "train.parquet").read_bytes()


def test_delete_operations(api, hub_server, repo):
    api.create_commit(
        repo, operations=[_add("a/1.txt", b"1"), _add("a/2.txt", b"2"), _add("b.txt", b"b")], commit_message="add"
    )
    api.create_commit(
        repo, operations=[CommitOperationDelete("a/"), CommitOperationDelete("b.txt")], commit_message="delete"
    )

    assert api.list_repo_files(repo) == [".gitattributes"]
    with pytest.raises(EntryNotFoundError):
        api.create_commit(repo, operations=[CommitOperationDelete("nope.txt")], commit_message="x")


# ---------------------------------------------------------------------------------------------
# Model card -> tags
# ---------------------------------------------------------------------------------------------


def test_model_info_tags_derived_from_card(api, repo):
    api.create_commit(repo, operations=[_add("README.md", CARD.encode())], commit_message="card")

    info = api.model_info(repo)

    assert f"base_model:adapter:{BASE}" in info.tags
    assert f"base_model:{BASE}" in info.tags
    assert {"license:apache-2.0", "scion", "lora", "peft"} <= set(info.tags)
    assert info.card_data.base_model == BASE
    assert info.library_name == "peft"


def test_base_model_relation_is_never_inferred(api, repo):
    """Only a relation the card states gives a base_model:<relation>: tag, so a card without one is caught."""
    card = f"---\nbase_model: {BASE}\n---\n"
    api.create_commit(
        repo, operations=[_add("README.md", card.encode()), _add("adapter_config.json", b"{}")], commit_message="card"
    )

    tags = api.model_info(repo).tags
    assert f"base_model:{BASE}" in tags
    assert not [tag for tag in tags if tag.startswith("base_model:") and tag.count(":") == 2]


def test_invalid_card_metadata_is_rejected(api, hub_server, repo):
    bad = f"---\nbase_model: {BASE}\nbase_model_relation: cousin\n---\n"
    with pytest.raises(ValueError, match="base_model_relation"):
        api.create_commit(repo, operations=[_add("README.md", bad.encode())], commit_message="bad")
    assert len(hub_server.commits(repo)) == 1


# ---------------------------------------------------------------------------------------------
# Concurrency: parent_commit, PRs, branches, identical content
# ---------------------------------------------------------------------------------------------


def test_parent_commit_conflict_raises_412(api, hub_server, repo):
    seen = hub_server.head(repo)
    someone_else = hub_server.add_commit(repo, {"other.txt": b"not yours"})

    with pytest.raises(HfHubHTTPError) as error:
        api.create_commit(repo, operations=[_add("mine.txt", b"mine")], commit_message="mine", parent_commit=seen)

    assert error.value.response.status_code == 412
    assert hub_server.head(repo) == someone_else


def test_branch_moved_between_preupload_and_commit(api, hub_server, repo):
    seen = hub_server.head(repo)
    # Fires right before the commit request is handled: the race a publisher must survive.
    hub_server.inject(r"/commit/main$", "POST", [lambda: hub_server.add_commit(repo, {"race.txt": b"x"})])

    with pytest.raises(HfHubHTTPError) as error:
        api.create_commit(repo, operations=[_add("mine.txt", b"m")], commit_message="m", parent_commit=seen)

    assert error.value.response.status_code == 412
    assert [c["title"] for c in hub_server.commits(repo)] == ["Commit from someone else", "initial commit"]


def test_create_pr_opens_pr_ref_and_leaves_main_untouched(api, hub_server, repo):
    main_before = hub_server.head(repo)

    info = api.create_commit(repo, operations=[_add("pr.txt", b"proposal")], commit_message="Proposal", create_pr=True)

    assert info.pr_revision == "refs/pr/1" and info.pr_num == 1
    assert hub_server.head(repo) == main_before
    assert hub_server.head(repo, "refs/pr/1") == info.oid
    refs = api.list_repo_refs(repo, include_pull_requests=True)
    assert [(r.ref, r.target_commit) for r in refs.pull_requests] == [("refs/pr/1", info.oid)]
    # The PR ref is readable (URL-encoded revision) and can receive more commits.
    assert Path(hf_hub_download(repo, "pr.txt", revision="refs/pr/1")).read_bytes() == b"proposal"
    follow_up = api.create_commit(
        repo, operations=[_add("pr2.txt", b"more")], commit_message="More", revision="refs/pr/1"
    )
    assert hub_server.commits(repo, "refs/pr/1")[0]["oid"] == follow_up.oid
    assert api.create_commit(repo, operations=[_add("x", b"x")], commit_message="x", create_pr=True).pr_num == 2


def test_branch_creation_and_commit_to_branch(api, hub_server, repo):
    api.create_branch(repo, branch="release")
    api.create_branch(repo, branch="release", exist_ok=True)

    info = api.create_commit(repo, operations=[_add("r.txt", b"release")], commit_message="r", revision="release")

    assert hub_server.head(repo, "release") == info.oid
    assert "r.txt" not in hub_server.commits(repo)[0]["files"]
    assert [b.name for b in api.list_repo_refs(repo).branches] == ["main", "release"]
    assert [c.commit_id for c in api.list_repo_commits(repo, revision="release")][0] == info.oid
    assert api.model_info(repo, revision="release").sha == info.oid
    assert Path(hf_hub_download(repo, "r.txt", revision=info.oid)).read_bytes() == b"release"


def test_identical_content_is_skipped_by_client_but_server_would_commit(api, hub_server, repo):
    files = [_add("README.md", CARD.encode()), _add("w.safetensors", b"\x00" * 100)]
    api.create_commit(repo, operations=files, commit_message="v1")
    head = hub_server.head(repo)

    # The client compares preupload oids with local ones and skips a no-op commit entirely.
    again = api.create_commit(
        repo,
        operations=[_add("README.md", CARD.encode()), _add("w.safetensors", b"\x00" * 100)],
        commit_message="v1 again",
    )
    assert again.oid == head and hub_server.head(repo) == head

    # Without remote oids (older Hub behaviour) the Hub itself still creates an empty commit.
    hub_server.report_remote_oids = False
    api.create_commit(repo, operations=[_add("README.md", CARD.encode())], commit_message="v1 once more")
    latest = hub_server.commits(repo)[0]
    assert latest["title"] == "v1 once more" and latest["empty"] is True and latest["oid"] != head


# ---------------------------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------------------------


def test_download_head_503_then_success_is_retried(api, hub_server, repo):
    api.create_commit(repo, operations=[_add("f.txt", b"data")], commit_message="f")
    fault = hub_server.inject(r"/resolve/main/f\.txt$", "HEAD", [503])

    path = hf_hub_download(repo, "f.txt")

    assert Path(path).read_bytes() == b"data"
    assert fault.hits == 1
    assert _statuses(hub_server, "HEAD", "/resolve/main/f.txt") == [503, 200]


def test_download_get_429_is_retried_but_get_503_is_not(api, hub_server, repo):
    api.create_commit(repo, operations=[_add("f.txt", b"data"), _add("g.txt", b"gg")], commit_message="f")
    hub_server.inject(r"/resolve/main/f\.txt$", "GET", [429])
    assert Path(hf_hub_download(repo, "f.txt")).read_bytes() == b"data"
    assert _statuses(hub_server, "GET", "/resolve/main/f.txt") == [429, 200]

    # http_get only retries 408/429 on the GET itself; a 5xx there surfaces to the caller.
    hub_server.inject(r"/resolve/main/g\.txt$", "GET", [503])
    with pytest.raises(HfHubHTTPError) as error:
        hf_hub_download(repo, "g.txt")
    assert error.value.response.status_code == 503


def test_lfs_upload_503_is_retried(api, hub_server, repo):
    fault = hub_server.inject(r"^/_lfs/upload/", "PUT", [503])

    api.create_commit(repo, operations=[_add("w.safetensors", b"\x01" * 2048)], commit_message="w")

    assert fault.hits == 1
    assert _statuses(hub_server, "PUT", "/_lfs/upload/") == [503, 200]
    assert hub_server.read_file(repo, "w.safetensors") == b"\x01" * 2048


def test_persistent_500_on_commit_raises_and_main_is_unchanged(api, hub_server, repo):
    before = hub_server.commits(repo)
    hub_server.inject(r"/commit/main$", "POST", [500], persistent=True)

    with pytest.raises(HfHubHTTPError) as error:
        api.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="f")

    assert error.value.response.status_code == 500
    assert hub_server.commits(repo) == before
    assert _statuses(hub_server, "POST", "/commit/main") == [500]  # commits are never retried


def test_lost_commit_response_still_lands_the_commit(api, hub_server, repo):
    hub_server.inject(r"/commit/main$", "POST", ["drop"], after=True)

    with pytest.raises(hub_http.RemoteProtocolError):
        api.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="lost")

    # The client saw a failure, yet the commit exists: a retrying publisher must check first.
    assert [c["title"] for c in hub_server.commits(repo)] == ["lost", "initial commit"]
    assert hub_server.requests[-1].status is None


def test_lost_commit_response_as_502(api, hub_server, repo):
    hub_server.inject(r"/commit/main$", "POST", [502], after=True)

    with pytest.raises(HfHubHTTPError):
        api.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="landed")

    assert hub_server.commits(repo)[0]["title"] == "landed"


# ---------------------------------------------------------------------------------------------
# Auth and errors
# ---------------------------------------------------------------------------------------------


def test_read_only_token_cannot_commit(hub_server, repo):
    reader = HfApi(token=READ_TOKEN)

    with pytest.raises(HfHubHTTPError) as error:
        reader.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="nope")

    assert error.value.response.status_code == 403
    assert "error" in error.value.response.json()
    assert READ_TOKEN not in str(error.value) and READ_TOKEN not in error.value.response.text
    assert len(hub_server.commits(repo)) == 1
    assert reader.model_info(repo).id == repo  # reading is fine


def test_anonymous_write_is_401(hub_server, repo):
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token=False).create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="nope")
    assert error.value.response.status_code == 401


def test_whoami_and_invalid_token(hub_server):
    assert HfApi().whoami()["auth"]["accessToken"]["role"] == "write"
    assert HfApi(token=READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token="hf_not_a_valid_token").whoami()
    assert error.value.response.status_code == 401
    assert "hf_not_a_valid_token" not in error.value.response.text


def test_missing_repo_raises_repository_not_found(api, hub_server):
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("scion-tester/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("scion-tester/does-not-exist", "README.md")
    assert not api.repo_exists("scion-tester/does-not-exist")


def test_missing_revision_and_entry(api, repo):
    with pytest.raises(RevisionNotFoundError):
        api.model_info(repo, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="x", revision="no-such-branch")
    assert not api.file_exists(repo, "missing.txt")


def test_private_repo_not_visible_without_token(api, hub_server):
    api.create_repo("scion-tester/secret", private=True)
    api.create_commit("scion-tester/secret", operations=[_add("f.txt", b"s")], commit_message="s")
    anonymous = HfApi(token=False)

    with pytest.raises(RepositoryNotFoundError):
        anonymous.model_info("scion-tester/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("scion-tester/secret", "f.txt", token=False)
    assert api.model_info("scion-tester/secret").private is True
    assert HfApi(token=READ_TOKEN).model_info("scion-tester/secret").private is True


def test_request_log_never_contains_tokens(api, hub_server, repo):
    api.create_commit(repo, operations=[_add("f.txt", b"x")], commit_message="f")
    logged = repr(hub_server.requests)
    assert WRITE_TOKEN not in logged and READ_TOKEN not in logged
