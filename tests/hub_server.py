"""A small, in-memory, Hub-compatible HTTP server for tests, plus the ``hub_server`` pytest fixture.

The server speaks enough of the Hugging Face Hub HTTP API for the *real* ``huggingface_hub`` client
(2.x, httpx based) to create repos, commit files (regular and LFS), download them, and read repo
metadata, so publisher code can be tested end to end without network access.  It only listens on a
loopback address and uses the standard library only (plus PyYAML for model-card front matter).

What it covers (model and dataset repos):

* ``POST /api/repos/create`` (409 + ``url`` when the repo exists, ``visibility``/``private``),
  ``DELETE /api/repos/delete``, ``GET /api/whoami-v2``, ``POST /api/validate-yaml``.
* ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: ``sha``, ``private``, ``siblings``
  (``size``/``blobId``/``lfs`` only with ``?blobs=true``, like the Hub), ``cardData`` from the README
  front matter, and ``tags`` derived from the card the way the Hub does (``base_model:<id>``,
  ``base_model:<relation>:<id>``, ``license:<x>``, ``dataset:<x>``, the card's tags, library name...).
* ``POST .../preupload/{rev}``: ``uploadMode`` (lfs for files over ``lfs_threshold``, files matching the
  repo's ``.gitattributes`` LFS patterns, or binary samples), ``shouldIgnore`` (always false) and the
  remote ``oid`` of files already present (which lets the client skip unchanged files).
* Git LFS "basic" transfer: ``POST /{repo}.git/info/lfs/objects/batch`` (no actions for objects already
  stored), ``PUT`` of the object bytes to a per-upload URL on this server (sha256 and size verified),
  and the ``verify`` step.
* ``POST .../commit/{rev}``: NDJSON ``header``/``file``/``lfsFile``/``deletedFile``/``deletedFolder``,
  atomic (all or nothing), ``parentCommit`` (412 when the branch moved), ``create_pr=1`` (opens
  ``refs/pr/N``).  A commit whose tree equals its parent's is still created, like on the Hub, and
  flagged ``empty`` in :meth:`HubServer.commits`.
* ``GET``/``HEAD /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size`` and single ``Range`` support.  Revisions: branches, tags, full commit shas,
  ``refs/pr/N`` (URL-encoded or not).
* ``GET .../tree/{rev}[/{path}]`` (``recursive``), ``POST .../paths-info/{rev}``, ``GET .../refs``
  (``include_prs``), ``GET .../commits/{rev}``, ``POST``/``DELETE .../branch/{name}``,
  ``POST .../tag/{rev}`` and ``DELETE .../tag/{name}``.
* Tokens: write and read-only tokens.  Writes without a token get 401, writes with a read-only token
  get 403, private or missing repos get 401 (anonymous) / 404 (authenticated) with
  ``X-Error-Code: RepoNotFound``.  Errors are JSON ``{"error": ...}`` with ``X-Error-Message`` and
  ``X-Error-Code`` headers so the client raises its typed exceptions.  Tokens are never logged,
  stored in the request log, or echoed back.
* Fault injection (:meth:`HubServer.inject`) and introspection (:meth:`HubServer.commits`,
  :attr:`HubServer.requests`, :meth:`HubServer.read_file`, :meth:`HubServer.add_commit`...).

What it does not do: Xet storage (the fixture disables Xet in the client), multipart LFS transfers,
pagination (every listing fits in one page), gated repos, organisations and namespace permissions
(every token belongs to one user who may write to any namespace), discussions beyond PR numbering,
``copyFile`` commit operations (the 2.x client sends copies as ``file``/``lfsFile``), ``.gitignore``
handling (``shouldIgnore`` is always false), spaces, webhooks, and persistence across restarts.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import ipaddress
import itertools
import json
import os
import re
import secrets
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

WRITE_TOKEN = "hf_test_write_token"
READ_TOKEN = "hf_test_read_token"
USER_NAME = "scion-tester"

# The Hub refuses regular (non-LFS) files above 10 MiB and tells clients to use LFS for them.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# What the Hub writes in the "initial commit" of a new repo (trimmed): these patterns also drive
# the preupload decision, exactly like on the Hub, so weights always go through LFS.
DEFAULT_LFS_PATTERNS = """
    *.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gguf *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack
    *.npy *.npz *.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/*
    *.tar.* *.tar *.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*
""".split()
DEFAULT_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in DEFAULT_LFS_PATTERNS)

BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
REPO_KINDS = {"models": "model", "datasets": "dataset"}
SHA256_RE = re.compile(r"[0-9a-f]{64}")
FULL_SHA_RE = re.compile(r"[0-9a-f]{40}")
PR_REF_RE = re.compile(r"refs/pr/(\d+)")


# --------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    # The client's parse_datetime expects exactly '%Y-%m-%dT%H:%M:%S.%fZ'-like strings.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob, as `git hash-object` computes it (what the Hub reports as `oid`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. Content lives in the server's blob store, keyed by sha256."""

    sha256: str
    size: int
    lfs: bool
    git_oid: str  # git sha1 of the content (regular) or of the LFS pointer (lfs), like git would store
    pointer_size: int = 0

    @classmethod
    def make(cls, data_sha256: str, size: int, lfs: bool, data: bytes | None = None) -> FileEntry:
        if lfs:
            pointer = lfs_pointer(data_sha256, size)
            return cls(data_sha256, size, True, git_blob_sha1(pointer), len(pointer))
        assert data is not None, "regular files need their content to compute the git oid"
        return cls(data_sha256, size, False, git_blob_sha1(data))

    @property
    def remote_oid(self) -> str:
        # What the client compares against in preupload: sha256 for LFS files, git sha1 otherwise.
        return self.sha256 if self.lfs else self.git_oid


@dataclass
class Commit:
    oid: str
    parents: tuple[str, ...]
    title: str
    description: str
    tree: dict[str, FileEntry]
    date: datetime
    author: str
    empty: bool  # tree identical to the first parent's tree


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    object_id: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: set[str] = field(default_factory=set)  # LFS oids uploaded to (and usable by) this repo
    next_discussion: int = 1

    @property
    def url_path(self) -> str:
        return self.repo_id if self.repo_type == "model" else f"{self.repo_type}s/{self.repo_id}"


class RequestRecord(NamedTuple):
    """One served request. Headers (hence tokens) are never recorded."""

    method: str
    path: str  # raw, still percent-encoded path, without the query string
    query: str
    status: int | None  # None when the connection was dropped without a response


@dataclass
class Fault:
    """A scripted misbehaviour, see :meth:`HubServer.inject`."""

    pattern: re.Pattern
    method: str
    actions: list
    persistent: bool
    after: bool
    headers: dict[str, str]
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or self.method == method) and self.pattern.search(path) is not None

    @property
    def exhausted(self) -> bool:
        return not self.actions


class HubError(Exception):
    """Raised by endpoint code; turned into a Hub-like JSON error response."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200, content_type: str = "application/json") -> Response:
    body = json.dumps(payload).encode()
    return Response(status, body, {"Content-Type": f"{content_type}; charset=utf-8"})


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None) -> Response:
    response = json_response({"error": message}, status)
    # hf_raise_for_status reads X-Error-Code to pick the exception class and X-Error-Message for the text.
    response.headers["X-Error-Message"] = message.encode("ascii", "replace").decode()
    if code:
        response.headers["X-Error-Code"] = code
    response.headers.update(headers or {})
    return response


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # email.message.Message: case-insensitive
    body: bytes
    role: str | None  # None (anonymous), "read" or "write"
    token_name: str | None = None  # display name of the token, never the token itself

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise HubError(400, "Request body is not valid JSON") from None


# --------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------


def parse_front_matter(text: str) -> dict | None:
    """YAML metadata between the leading '---' lines of a README, or None when there is none.

    Raises yaml.YAMLError on invalid YAML, which callers turn into a 400 like the Hub does.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for index, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:index]))
            return data if isinstance(data, dict) else {}
    return None


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def card_errors(card: dict) -> list[str]:
    """The subset of the Hub's metadata validation that matters for derivative models."""
    errors = []
    relation = card.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)}')
    for base in _as_list(card.get("base_model")):
        if not isinstance(base, str) or not base:
            errors.append('"base_model" must be a string or a list of strings')
    return errors


def infer_library(paths: set[str]) -> str | None:
    if "adapter_config.json" in paths:
        return "peft"
    if "config.json" in paths:
        return "transformers"
    return None


def derive_tags(repo_type: str, card: dict, paths: set[str]) -> list[str]:
    """Tags the Hub computes for a repo from its card and files (the subset Scion relies on)."""
    tags: list[str] = []
    library = card.get("library_name") or (infer_library(paths) if repo_type == "model" else None)
    if library:
        tags.append(str(library))
    if any(path.endswith(".safetensors") for path in paths):
        tags.append("safetensors")
    if any(path.endswith(".gguf") for path in paths):
        tags.append("gguf")
    tags.extend(str(tag) for tag in _as_list(card.get("tags")))
    if card.get("pipeline_tag"):
        tags.append(str(card["pipeline_tag"]))
    tags.extend(f"dataset:{name}" for name in _as_list(card.get("datasets")))
    tags.extend(str(language) for language in _as_list(card.get("language")))
    bases = [base for base in _as_list(card.get("base_model")) if isinstance(base, str)]
    if bases and repo_type == "model":
        # The Hub may infer a missing relation from the files; this server never does, so a card that
        # forgets base_model_relation shows here (a test server must not be more forgiving than the Hub).
        relation = card.get("base_model_relation")
        for base in bases:
            tags.append(f"base_model:{base}")
            if relation:
                tags.append(f"base_model:{relation}:{base}")
    for license_name in _as_list(card.get("license")):
        tags.append(f"license:{license_name}")
    tags.append("region:us")
    return list(dict.fromkeys(tags))  # dedupe, keep order


def _lfs_patterns(gitattributes: str) -> list[str]:
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_gitattributes(path: str, pattern: str) -> bool:
    # gitattributes: a pattern without '/' matches the basename at any depth, otherwise the full path.
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/"))


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------

ROUTE_REPO_API = r"/api/(?P<kind>models|datasets)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
ROUTE_REPO_WEB = r"/(?:(?P<kind>datasets)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)"

ROUTES: list[tuple[tuple[str, ...], re.Pattern, str]] = [
    (methods, re.compile(pattern), handler)
    for methods, pattern, handler in [
        (("POST",), r"/api/repos/create", "create_repo"),
        (("DELETE",), r"/api/repos/delete", "delete_repo"),
        (("GET",), r"/api/whoami-v2", "whoami"),
        (("POST",), r"/api/validate-yaml", "validate_yaml"),
        (("GET",), ROUTE_REPO_API, "repo_info"),
        (("GET",), ROUTE_REPO_API + r"/revision/(?P<rev>[^/]+)", "repo_info"),
        (("POST",), ROUTE_REPO_API + r"/preupload/(?P<rev>[^/]+)", "preupload"),
        (("POST",), ROUTE_REPO_API + r"/commit/(?P<rev>[^/]+)", "commit"),
        (("GET",), ROUTE_REPO_API + r"/tree/(?P<rev>[^/]+)(?:/(?P<subpath>.*))?", "tree"),
        (("POST",), ROUTE_REPO_API + r"/paths-info/(?P<rev>[^/]+)", "paths_info"),
        (("GET",), ROUTE_REPO_API + r"/refs", "refs"),
        (("GET",), ROUTE_REPO_API + r"/commits/(?P<rev>[^/]+)", "list_commits"),
        (("POST",), ROUTE_REPO_API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        (("DELETE",), ROUTE_REPO_API + r"/branch/(?P<branch>[^/]+)", "delete_branch"),
        (("POST",), ROUTE_REPO_API + r"/tag/(?P<rev>[^/]+)", "create_tag"),
        (("DELETE",), ROUTE_REPO_API + r"/tag/(?P<tag>[^/]+)", "delete_tag"),
        (("POST",), ROUTE_REPO_WEB + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        (("POST",), ROUTE_REPO_WEB + r"\.git/info/lfs/objects/verify", "lfs_verify"),
        (("PUT",), r"/_lfs/upload/(?P<ticket>[A-Za-z0-9_-]+)", "lfs_upload"),
        (("GET", "HEAD"), ROUTE_REPO_WEB + r"/resolve/(?P<rev>[^/]+)/(?P<file>.+)", "resolve"),
    ]
]


class HubServer:
    """In-memory Hub. Start with :meth:`start` (or use it as a context manager), stop with :meth:`stop`.

    All state is guarded by one lock and every request is handled while holding it, which makes each
    commit atomic and keeps the bookkeeping simple (tests are not about throughput).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError("HubServer only listens on loopback addresses")
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content, shared by all repos
        self._tokens: dict[str, dict] = {}  # token -> {"role": "read"|"write", "name": display name}
        self._uploads: dict[str, tuple[tuple[str, str], str, int]] = {}  # ticket -> (repo key, oid, size)
        self._faults: list[Fault] = []
        self._requests: list[RequestRecord] = []
        self._commit_counter = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        # Knobs tests may flip:
        self.report_remote_oids = True  # preupload returns existing oids => the client skips unchanged files
        self.lfs_threshold = LFS_SIZE_THRESHOLD
        self.errors: list[str] = []  # tracebacks of unexpected exceptions (a bug in this server)

        self._httpd = _HubHTTPServer((host, port), _Handler)
        self._httpd.hub = self
        bound_host, bound_port = self._httpd.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> HubServer:
        # A short poll interval keeps stop() (and so every fixture teardown) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="hub-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        # Idle keep-alive connections would otherwise keep their handler threads blocked on read.
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---- test API: tokens, faults, introspection --------------------------------------------

    def add_token(self, token: str, write: bool = True, name: str | None = None) -> None:
        """Accept `token`; `write=False` makes it read-only (writes get 403)."""
        role = "write" if write else "read"
        with self._lock:
            self._tokens[token] = {"role": role, "name": name or f"{role}-token-{len(self._tokens) + 1}"}

    def inject(
        self,
        path_regex: str,
        method: str = "*",
        actions: list | tuple = (503,),
        *,
        persistent: bool = False,
        after: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Fault:
        """Script a fault for requests whose raw path matches `path_regex` (re.search) and `method`.

        Each matching request consumes the next action (or reuses the first one forever when
        `persistent`):

        * an ``int`` status: answer with that status and a JSON error (plus `headers`, e.g.
          ``{"Retry-After": "0"}``) instead of the real response;
        * ``"drop"``: close the connection without answering;
        * a callable (no arguments): call it, then serve the request normally; use it to move a
          branch "under the client" at an exact moment (e.g. ``lambda: hub.add_commit(...)``).

        With ``after=True`` the request is really processed first and the action applies to the
        response, so ``inject(r"/commit/", "POST", ["drop"], after=True)`` is a lost commit response.
        Returns the :class:`Fault`, whose ``hits`` counts the requests it affected.
        """
        fault = Fault(
            pattern=re.compile(path_regex),
            method=method.upper(),
            actions=list(actions),
            persistent=persistent,
            after=after,
            headers=dict(headers or {}),
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """Copy of the request log: (method, path, query, status), oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def create_repo(self, repo_id: str, *, private: bool = False, repo_type: str = "model") -> None:
        """Create a repo directly (setup shortcut, no HTTP, no auth)."""
        with self._lock:
            self._create_repo(repo_type, repo_id, private)

    def commits(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[dict]:
        """First-parent history of `branch` (any revision works), newest first."""
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            oid = self._resolve_revision(repo, branch)
            if oid is None:
                raise KeyError(f"unknown revision {branch!r} in {repo_id}")
            return [self._commit_summary(commit) for commit in self._history(repo, oid)]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str | None:
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            return self._resolve_revision(repo, branch)

    def refs(self, repo_id: str, repo_type: str = "model") -> dict:
        """{"branches": {...}, "tags": {...}, "pull_requests": {N: oid}}."""
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            return {
                "branches": dict(repo.branches),
                "tags": dict(repo.tags),
                "pull_requests": dict(repo.pull_requests),
            }

    def read_file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            oid = self._resolve_revision(repo, revision)
            if oid is None:
                raise KeyError(f"unknown revision {revision!r} in {repo_id}")
            return self._blobs[repo.commits[oid].tree[path].sha256]

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes] | None = None,
        *,
        deletes: tuple[str, ...] | list[str] = (),
        branch: str = "main",
        message: str = "Commit from someone else",
        repo_type: str = "model",
        author: str = "someone-else",
    ) -> str:
        """Commit directly to `branch`, as another user would: moves the branch under the client."""
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            base = repo.branches[branch]
            tree = dict(repo.commits[base].tree)
            new_blobs = {}
            for path in deletes:
                tree.pop(path)
            for path, data in (files or {}).items():
                sha = hashlib.sha256(data).hexdigest()
                lfs = self._wants_lfs(tree, path, len(data), data[:512])
                new_blobs[sha] = data
                if lfs:
                    repo.lfs_objects.add(sha)
                tree[path] = FileEntry.make(sha, len(data), lfs, data)
            self._blobs.update(new_blobs)
            commit = self._new_commit(repo, (base,), tree, message, "", author)
            repo.branches[branch] = commit.oid
            return commit.oid

    def set_ref(self, repo_id: str, branch: str, oid: str, repo_type: str = "model") -> None:
        """Point `branch` at `oid` (force-push / rewind), creating the branch if needed."""
        with self._lock:
            repo = self._get_repo_or_raise(repo_type, repo_id)
            if oid not in repo.commits:
                raise KeyError(f"unknown commit {oid}")
            repo.branches[branch] = oid

    # ---- HTTP plumbing (called from handler threads) ------------------------------------------

    def _take_fault(self, method: str, path: str) -> tuple[Fault | None, Any]:
        with self._lock:
            for fault in self._faults:
                if fault.exhausted or not fault.matches(method, path):
                    continue
                fault.hits += 1
                action = fault.actions[0] if fault.persistent else fault.actions.pop(0)
                return fault, action
        return None, None

    def _log_request(self, method: str, path: str, query: str, status: int | None) -> None:
        with self._lock:
            self._requests.append(RequestRecord(method, path, query, status))

    def _token_info(self, authorization: str | None) -> dict:
        if not authorization:
            return {"role": None, "name": None}
        scheme, _, token = authorization.partition(" ")
        info = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if info is None:
            # Same wording as the Hub: the client special-cases this message (not a RepoNotFound).
            raise HubError(401, "Invalid credentials in Authorization header")
        return info

    def _handle(self, method: str, path: str, query: str, headers: Any, body: bytes) -> Response:
        """Route one request to an endpoint method and turn HubError into an error response."""
        try:
            with self._lock:
                token = self._token_info(headers.get("Authorization"))
                query_params = parse_qs(query, keep_blank_values=True)
                request = Request(method, path, query_params, headers, body, token["role"], token["name"])
                for methods, pattern, handler_name in ROUTES:
                    match = pattern.fullmatch(path)
                    if match and method in methods:
                        return getattr(self, f"_api_{handler_name}")(request, **match.groupdict())
                raise HubError(404, f"Not Found: {method} {path}")
        except HubError as error:
            return error_response(error.status, error.message, error.code, error.headers)
        except Exception:  # a bug in this server: keep the traceback for the test to show
            self.errors.append(traceback.format_exc())
            return error_response(500, "Internal error in the test Hub server")

    # ---- state helpers ------------------------------------------------------------------------

    def _get_repo_or_raise(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id}")
        return repo

    def _create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(
            repo_type=repo_type,
            repo_id=repo_id,
            private=private,
            created_at=_utcnow(),
            object_id=secrets.token_hex(12),
        )
        data = DEFAULT_GITATTRIBUTES.encode()
        sha = hashlib.sha256(data).hexdigest()
        self._blobs[sha] = data
        tree = {".gitattributes": FileEntry.make(sha, len(data), False, data)}
        initial = self._new_commit(repo, (), tree, "initial commit", "", "system")
        repo.branches["main"] = initial.oid
        self._repos[(repo_type, repo_id)] = repo
        return repo

    def _new_commit(
        self,
        repo: Repo,
        parents: tuple[str, ...],
        tree: dict[str, FileEntry],
        title: str,
        description: str,
        author: str,
    ) -> Commit:
        # A counter in the hashed content keeps shas unique even for identical trees and messages.
        seed = json.dumps(
            [next(self._commit_counter), repo.repo_id, parents, title, sorted((p, e.git_oid) for p, e in tree.items())]
        )
        oid = hashlib.sha1(seed.encode()).hexdigest()
        parent_tree = repo.commits[parents[0]].tree if parents else None
        commit = Commit(oid, parents, title, description, tree, _utcnow(), author, empty=tree == parent_tree)
        repo.commits[oid] = commit
        return commit

    @staticmethod
    def _resolve_revision(repo: Repo, revision: str) -> str | None:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision.startswith("refs/heads/") and revision[len("refs/heads/") :] in repo.branches:
            return repo.branches[revision[len("refs/heads/") :]]
        if revision in repo.tags:
            return repo.tags[revision]
        if revision.startswith("refs/tags/") and revision[len("refs/tags/") :] in repo.tags:
            return repo.tags[revision[len("refs/tags/") :]]
        pr = PR_REF_RE.fullmatch(revision)
        if pr:
            return repo.pull_requests.get(int(pr.group(1)))
        if FULL_SHA_RE.fullmatch(revision) and revision in repo.commits:
            return revision
        return None

    @staticmethod
    def _history(repo: Repo, oid: str) -> Iterator[Commit]:
        while oid:
            commit = repo.commits[oid]
            yield commit
            oid = commit.parents[0] if commit.parents else ""

    @staticmethod
    def _commit_summary(commit: Commit) -> dict:
        return {
            "oid": commit.oid,
            "parents": list(commit.parents),
            "title": commit.title,
            "description": commit.description,
            "author": commit.author,
            "empty": commit.empty,
            "files": {path: entry.size for path, entry in sorted(commit.tree.items())},
        }

    def _wants_lfs(self, tree: dict[str, FileEntry], path: str, size: int, sample: bytes) -> bool:
        """The Hub's preupload rule: big files, .gitattributes LFS patterns, binary content."""
        if size == 0:
            return False
        if size > self.lfs_threshold:
            return True
        entry = tree.get(".gitattributes")
        gitattributes = self._blobs[entry.sha256].decode(errors="replace") if entry else DEFAULT_GITATTRIBUTES
        if any(_matches_gitattributes(path, pattern) for pattern in _lfs_patterns(gitattributes)):
            return True
        return b"\x00" in sample

    # ---- access control ---------------------------------------------------------------------

    def _readable_repo(self, request: Request, kind: str, ns: str, name: str) -> Repo:
        repo_type = REPO_KINDS.get(kind, kind) if kind else "model"
        repo = self._repos.get((repo_type, f"{ns}/{name}"))
        if repo is None or (repo.private and request.role is None):
            # The Hub answers 401 to anonymous callers and 404 to authenticated ones, for missing and
            # private repos alike, always with X-Error-Code: RepoNotFound (=> RepositoryNotFoundError).
            status = 401 if request.role is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        return repo

    def _writable_repo(self, request: Request, kind: str, ns: str, name: str) -> Repo:
        if request.role is None:
            raise HubError(401, "You must be authenticated to write to a repository")
        repo = self._readable_repo(request, kind, ns, name)
        self._require_write_role(request, repo.repo_id)
        return repo

    @staticmethod
    def _require_write_role(request: Request, target: str) -> None:
        if request.role is None:
            raise HubError(401, "You must be authenticated to perform this action")
        if request.role != "write":
            raise HubError(403, f"You don't have the rights to write to {target}: this access token is read-only")

    def _revision_or_raise(self, repo: Repo, raw_revision: str) -> tuple[str, str]:
        revision = unquote(raw_revision)
        oid = self._resolve_revision(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return revision, oid

    # ---- endpoints: account and repos -------------------------------------------------------

    def _api_whoami(self, request: Request) -> Response:
        if request.role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return json_response(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER_NAME,
                "fullname": "Scion Tester",
                "email": None,
                "emailVerified": False,
                "isPro": False,
                "orgs": [],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": request.token_name, "role": request.role},
                },
            }
        )

    def _api_validate_yaml(self, request: Request) -> Response:
        content = request.json().get("content", "")
        try:
            card = parse_front_matter(content)
        except yaml.YAMLError as error:
            return json_response({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, 400)
        errors = card_errors(card or {})
        if errors:
            return json_response({"errors": [{"message": message} for message in errors], "warnings": []}, 400)
        return json_response({"errors": [], "warnings": []})

    def _api_create_repo(self, request: Request) -> Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        if repo_type not in ("model", "dataset"):
            raise HubError(400, f"Repo type {repo_type!r} is not supported by the test Hub")
        name = payload.get("name") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{payload.get('organization') or USER_NAME}/{name}"
        self._require_write_role(request, repo_id)
        url = f"{self.url}/{repo_id}" if repo_type == "model" else f"{self.url}/{repo_type}s/{repo_id}"
        if (repo_type, repo_id) in self._repos:
            # The client's exist_ok path reads "url" from this 409 body.
            return json_response({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = self._create_repo(repo_type, repo_id, private)
        return json_response({"url": url, "name": repo_id, "id": repo.object_id})

    def _api_delete_repo(self, request: Request) -> Response:
        payload = request.json()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER_NAME}/{payload.get('name')}"
        repo = self._writable_repo(request, repo_type, *repo_id.split("/"))
        del self._repos[(repo.repo_type, repo.repo_id)]
        return json_response({})

    def _api_repo_info(self, request: Request, kind: str, ns: str, name: str, rev: str = "main") -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        _, oid = self._revision_or_raise(repo, rev)
        commit = repo.commits[oid]
        paths = set(commit.tree)
        card = self._card(commit) or {}
        with_blobs = request.flag("blobs")
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:  # like the Hub: sizes and LFS details only with files_metadata=True
                sibling.update(size=entry.size, blobId=entry.git_oid)
                if entry.lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        info: dict[str, Any] = {
            "_id": repo.object_id,
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": derive_tags(repo.repo_type, card, paths),
            "siblings": siblings,
            "usedStorage": sum(entry.size for entry in commit.tree.values()),
        }
        if card:
            info["cardData"] = card
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
            library = card.get("library_name") or infer_library(paths)
            if library:
                info["library_name"] = library
            if card.get("pipeline_tag"):
                info["pipeline_tag"] = card["pipeline_tag"]
        return json_response(info)

    def _card(self, commit: Commit) -> dict | None:
        entry = commit.tree.get("README.md")
        if entry is None:
            return None
        try:
            return parse_front_matter(self._blobs[entry.sha256].decode(errors="replace"))
        except yaml.YAMLError:
            return None  # commits reject invalid YAML, but add_commit() does not validate

    # ---- endpoints: refs and history ----------------------------------------------------------

    def _api_refs(self, request: Request, kind: str, ns: str, name: str) -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        payload = {
            "branches": [
                {"name": branch, "ref": f"refs/heads/{branch}", "targetCommit": oid}
                for branch, oid in sorted(repo.branches.items())
            ],
            "converts": [],
            "tags": [
                {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": oid} for tag, oid in sorted(repo.tags.items())
            ],
        }
        if request.flag("include_prs"):
            payload["pullRequests"] = [
                {"name": f"refs/pr/{num}", "ref": f"refs/pr/{num}", "targetCommit": oid}
                for num, oid in sorted(repo.pull_requests.items())
            ]
        return json_response(payload)

    def _api_list_commits(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        _, oid = self._revision_or_raise(repo, rev)
        return json_response(
            [
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.description,
                    "date": _iso(commit.date),
                    "authors": [{"user": commit.author, "avatar": ""}],
                }
                for commit in self._history(repo, oid)
            ]
        )

    def _api_create_branch(self, request: Request, kind: str, ns: str, name: str, branch: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        branch = unquote(branch)
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", branch):
            raise HubError(400, f"Invalid branch name: {branch}")
        if branch in repo.branches:
            raise HubError(409, "Reference already exists")
        starting_point = request.json().get("startingPoint")
        oid = repo.branches["main"] if starting_point is None else self._revision_or_raise(repo, starting_point)[1]
        repo.branches[branch] = oid
        return json_response({})

    def _api_delete_branch(self, request: Request, kind: str, ns: str, name: str, branch: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        branch = unquote(branch)
        if branch == "main":
            raise HubError(403, "Cannot delete the default branch")
        if repo.branches.pop(branch, None) is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        return json_response({})

    def _api_create_tag(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        _, oid = self._revision_or_raise(repo, rev)
        tag = request.json().get("tag") or ""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", tag):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, "Tag already exists")
        repo.tags[tag] = oid
        return json_response({})

    def _api_delete_tag(self, request: Request, kind: str, ns: str, name: str, tag: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        if repo.tags.pop(unquote(tag), None) is None:
            raise HubError(404, f"Invalid rev id: {unquote(tag)}", "RevisionNotFound")
        return json_response({})

    # ---- endpoints: listing and downloads ---------------------------------------------------

    def _tree_entry(self, path: str, entry: FileEntry) -> dict:
        item: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
        if entry.lfs:
            item["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return item

    @staticmethod
    def _folder_entry(tree: dict[str, FileEntry], folder: str) -> dict:
        children = sorted((p, e.git_oid) for p, e in tree.items() if p.startswith(folder + "/"))
        oid = hashlib.sha1(json.dumps(children).encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": folder}

    @staticmethod
    def _folders(tree: dict[str, FileEntry]) -> set[str]:
        folders = set()
        for path in tree:
            parts = path.split("/")[:-1]
            folders.update("/".join(parts[: depth + 1]) for depth in range(len(parts)))
        return folders

    def _api_tree(
        self, request: Request, kind: str, ns: str, name: str, rev: str, subpath: str | None = None
    ) -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        _, oid = self._revision_or_raise(repo, rev)
        tree = repo.commits[oid].tree
        folders = self._folders(tree)
        prefix = unquote(subpath or "").strip("/")
        if prefix and prefix not in folders:
            raise HubError(404, f"Entry not found: {prefix}", "EntryNotFound", {"X-Repo-Commit": oid})
        recursive = request.flag("recursive")

        def wanted(path: str) -> bool:
            if prefix and not path.startswith(prefix + "/"):
                return False
            rest = path[len(prefix) + 1 :] if prefix else path
            return recursive or "/" not in rest

        items = [self._folder_entry(tree, folder) for folder in sorted(folders) if wanted(folder)]
        items += [self._tree_entry(path, entry) for path, entry in sorted(tree.items()) if wanted(path)]
        return json_response(items)

    def _api_paths_info(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        _, oid = self._revision_or_raise(repo, rev)
        tree = repo.commits[oid].tree
        if "json" in (request.headers.get("Content-Type") or ""):
            paths = _as_list(request.json().get("paths"))
        else:  # the client sends a form: paths=a&paths=b&expand=False
            paths = parse_qs(request.body.decode(), keep_blank_values=True).get("paths", [])
        folders = self._folders(tree)
        items = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                items.append(self._tree_entry(path, tree[path]))
            elif path in folders:
                items.append(self._folder_entry(tree, path))
        return json_response(items)

    def _api_resolve(self, request: Request, kind: str | None, ns: str, name: str, rev: str, file: str) -> Response:
        repo = self._readable_repo(request, kind, ns, name)
        revision = unquote(rev)
        if revision == "refs" and file.split("/", 2)[0] in ("pr", "heads", "tags"):
            # Unencoded "refs/pr/1" in the URL: the revision spans three path segments.
            head, _, file = file.partition("/")
            extra, _, file = file.partition("/")
            revision = f"refs/{head}/{extra}"
        oid = self._resolve_revision(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        path = unquote(file)
        entry = repo.commits[oid].tree.get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache the non-existence of the file at this commit.
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": oid})
        data = self._blobs[entry.sha256]
        etag = f'"{entry.sha256 if entry.lfs else entry.git_oid}"'
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": etag,
            "X-Repo-Commit": oid,
            "Accept-Ranges": "bytes",
        }
        if entry.lfs:
            # On the Hub these come with the 302 to the CDN; the client prefers them over ETag/length.
            headers["X-Linked-Etag"] = etag
            headers["X-Linked-Size"] = str(entry.size)
        status, body = 200, data
        byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")
        if byte_range:
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                return Response(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            body = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        return Response(status, body, headers)

    # ---- endpoints: uploads and commits ------------------------------------------------------

    def _api_preupload(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        revision, oid = self._revision_or_raise(repo, rev)
        if request.flag("create_pr") and revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        tree = repo.commits[oid].tree
        files = []
        for item in request.json().get("files", []):
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item.get("sample") or "")
            lfs = self._wants_lfs(tree, path, size, sample)
            answer: dict[str, Any] = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if self.report_remote_oids and path in tree:
                answer["oid"] = tree[path].remote_oid
            files.append(answer)
        return json_response({"files": files, "commitOid": oid})

    def _api_lfs_batch(self, request: Request, kind: str | None, ns: str, name: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HubError(422, "Only the upload operation is supported by the test Hub")
        objects = []
        for item in payload.get("objects", []):
            oid, size = item.get("oid"), item.get("size")
            if not isinstance(oid, str) or not SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
                raise HubError(422, "Invalid LFS object")
            answer: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in repo.lfs_objects:  # already stored objects get no actions: the client skips them
                # The upload URL is a capability (like a signed S3 URL): the client PUTs without auth.
                ticket = secrets.token_urlsafe(16)
                self._uploads[ticket] = ((repo.repo_type, repo.repo_id), oid, size)
                answer["authenticated"] = True
                answer["actions"] = {
                    "upload": {"href": f"{self.url}/_lfs/upload/{ticket}"},
                    "verify": {"href": f"{self.url}/{repo.url_path}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(answer)
        return json_response({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _api_lfs_upload(self, request: Request, ticket: str) -> Response:
        upload = self._uploads.get(ticket)
        if upload is None:
            raise HubError(403, "Unknown or expired upload URL")
        repo_key, oid, size = upload
        repo = self._repos.get(repo_key)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if len(request.body) != size or hashlib.sha256(request.body).hexdigest() != oid:
            raise HubError(400, "Uploaded content does not match the announced sha256/size")
        self._blobs[oid] = request.body
        repo.lfs_objects.add(oid)
        return Response(200, b"", {"ETag": f'"{oid}"'})

    def _api_lfs_verify(self, request: Request, kind: str | None, ns: str, name: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        payload = request.json()
        oid, size = payload.get("oid"), payload.get("size")
        if oid not in repo.lfs_objects:
            raise HubError(404, f"LFS object {oid} not found")
        if len(self._blobs[oid]) != size:
            raise HubError(422, f"LFS object {oid} has a different size")
        return json_response({"success": True})

    def _parse_commit_body(self, body: bytes) -> tuple[dict, list[dict]]:
        lines = [line for line in body.split(b"\n") if line.strip()]
        try:
            items = [json.loads(line) for line in lines]
        except ValueError:
            raise HubError(400, "Commit body is not valid NDJSON") from None
        if not items or items[0].get("key") != "header":
            raise HubError(400, "Commit body must start with a header line")
        return items[0].get("value") or {}, items[1:]

    def _apply_operations(self, repo: Repo, tree: dict[str, FileEntry], operations: list[dict]) -> tuple[dict, dict]:
        """New tree and new blobs for `operations`, validated first so nothing changes on error."""
        tree = dict(tree)
        new_blobs: dict[str, bytes] = {}
        for operation in operations:
            key, value = operation.get("key"), operation.get("value") or {}
            path = str(value.get("path", "")).strip("/")
            if not path and key != "deletedFolder":
                raise HubError(400, f"Missing path in {key} operation")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, "Only base64 file content is supported")
                data = base64.b64decode(value.get("content") or "")
                if len(data) > self.lfs_threshold or b"\x00" in data[:512]:
                    raise HubError(400, f"Your push was rejected: {path} must be uploaded with LFS")
                sha = hashlib.sha256(data).hexdigest()
                new_blobs[sha] = data
                tree[path] = FileEntry.make(sha, len(data), False, data)
            elif key == "lfsFile":
                oid = value.get("oid")
                if oid not in repo.lfs_objects:
                    raise HubError(422, f"Your push was rejected: the LFS object of {path} was never uploaded")
                size = value.get("size", len(self._blobs[oid]))
                tree[path] = FileEntry.make(oid, int(size), True)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in tree if not path or p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for doomed_path in doomed:
                    del tree[doomed_path]
            else:
                raise HubError(400, f"Unsupported commit operation: {key}")
        return tree, new_blobs

    def _validate_readme(self, tree: dict[str, FileEntry], new_blobs: dict[str, bytes]) -> None:
        entry = tree.get("README.md")
        if entry is None or entry.sha256 not in new_blobs:
            return
        try:
            card = parse_front_matter(new_blobs[entry.sha256].decode(errors="replace"))
        except yaml.YAMLError:
            raise HubError(400, "Invalid metadata in README.md: YAML front matter does not parse") from None
        errors = card_errors(card or {})
        if errors:
            raise HubError(400, "Invalid metadata in README.md: " + "; ".join(errors))

    def _api_commit(self, request: Request, kind: str, ns: str, name: str, rev: str) -> Response:
        repo = self._writable_repo(request, kind, ns, name)
        revision = unquote(rev)
        header, operations = self._parse_commit_body(request.body)
        title = str(header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary is required")
        parent_commit = header.get("parentCommit")
        create_pr = request.flag("create_pr")

        if create_pr:
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
            base = repo.branches[revision]
            if parent_commit:  # a PR may be opened from an older commit of the branch
                matches = [oid for oid in repo.commits if oid.startswith(parent_commit.lower())]
                if len(matches) != 1:
                    raise HubError(404, f"Invalid parent commit: {parent_commit}", "RevisionNotFound")
                base = matches[0]
        else:
            pr = PR_REF_RE.fullmatch(revision)
            if revision not in repo.branches and not (pr and int(pr.group(1)) in repo.pull_requests):
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            base = self._resolve_revision(repo, revision)
            if parent_commit and not base.startswith(parent_commit.lower()):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")

        tree, new_blobs = self._apply_operations(repo, repo.commits[base].tree, operations)
        self._validate_readme(tree, new_blobs)

        # Everything is validated: from here on the commit lands as a whole.
        self._blobs.update(new_blobs)
        commit = self._new_commit(repo, (base,), tree, title, str(header.get("description") or ""), USER_NAME)
        pull_request_url = None
        if create_pr:
            number = repo.next_discussion
            repo.next_discussion += 1
            repo.pull_requests[number] = commit.oid
            pull_request_url = f"{self.url}/{repo.url_path}/discussions/{number}"
        elif revision in repo.branches:
            repo.branches[revision] = commit.oid
        else:
            repo.pull_requests[int(PR_REF_RE.fullmatch(revision).group(1))] = commit.oid
        return json_response(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{self.url}/{repo.url_path}/commit/{commit.oid}",
                "hookOutput": "",
                "pullRequestUrl": pull_request_url,
            }
        )


# --------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    hub: HubServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real client expects to reuse connections
    server_version = "ScionTestHub/1.0"
    timeout = 60  # idle keep-alive connections must not pin a thread forever

    server: _HubHTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # Silence http.server's stderr logging entirely: tests use HubServer.requests, and request
        # lines or error messages must never end up in logs next to credentials.
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes; without TCP_NODELAY, Nagle + delayed ACKs add
        # ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.hub._lock:
            self.server.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.hub._lock:
            self.server.hub._connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if (self.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _serve(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        method, path, query = self.command, split.path, split.query
        # Always consume the body, even when failing on purpose: leftovers would corrupt the next
        # request on this keep-alive connection.
        body = self._read_body()
        fault, action = hub._take_fault(method, path)

        if fault is not None and not fault.after:
            if callable(action):
                action()
            else:
                self._misbehave(fault, action, method, path, query)
                return

        response = hub._handle(method, path, query, self.headers, body)

        if fault is not None and fault.after:
            if callable(action):
                action()
            else:
                self._misbehave(fault, action, method, path, query)
                return

        # Log before answering: once the client has its answer, the test may read the log.
        hub._log_request(method, path, query, response.status)
        self._send(response)

    def _misbehave(self, fault: Fault, action: int | str, method: str, path: str, query: str) -> None:
        """Apply an injected status or "drop" instead of the real response."""
        hub = self.server.hub
        if action == "drop":
            hub._log_request(method, path, query, None)
            self._drop()
            return
        status = int(action)
        hub._log_request(method, path, query, status)
        self._send(error_response(status, f"Injected fault: HTTP {status}", headers=fault.headers))


# --------------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------------


def _point_client_at(monkeypatch: pytest.MonkeyPatch, url: str, hf_home: str) -> None:
    """Make an already-imported huggingface_hub talk to `url`, with caches and tokens under `hf_home`.

    huggingface_hub reads its environment once, at import time, into `huggingface_hub.constants`
    (and a few modules copy values from there), so setting env vars alone is not enough.
    """
    import huggingface_hub
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _http

    hub_cache = os.path.join(hf_home, "hub")
    assets_cache = os.path.join(hf_home, "assets")
    env = {
        "HF_ENDPOINT": url,
        "HF_TOKEN": WRITE_TOKEN,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        # hf_xet is installed here and the client would use Xet storage, which this server lacks.
        "HF_HUB_DISABLE_XET": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Variables that would take precedence over HF_TOKEN / HF_HUB_OFFLINE or point elsewhere.
    for name in (
        "HF_OIDC_RESOURCE",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "TRANSFORMERS_OFFLINE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "HF_HUB_ENABLE_HF_TRANSFER",
    ):
        monkeypatch.delenv(name, raising=False)

    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",  # used by hf_hub_url
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(url).hostname},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
        "HF_HUB_DISABLE_PROGRESS_BARS": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": assets_cache,
        "HUGGINGFACE_ASSETS_CACHE": assets_cache,
        "HF_XET_CACHE": os.path.join(hf_home, "xet"),
        "HF_TOKEN_PATH": os.path.join(hf_home, "token"),
        "HF_STORED_TOKENS_PATH": os.path.join(hf_home, "stored_tokens"),
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)
    # The module-level HfApi behind huggingface_hub.model_info/create_commit/... captured the endpoint.
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    # Trust redirects to this server like redirects to the real Hub (auth header kept); huggingface_hub
    # 2.x keeps that list, 1.x follows redirects without one.
    if hasattr(_http, "_HUB_ORIGINS"):
        monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(url)})
    # Modules that did `from ..constants import X` hold their own copy.
    for module_name, attribute, value in (
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", assets_cache),
        ("huggingface_hub.utils.tqdm", "HF_HUB_DISABLE_PROGRESS_BARS", True),
        ("huggingface_hub.utils._git_credential", "ENDPOINT", url),
        ("huggingface_hub.cli.auth", "ENDPOINT", url),
    ):
        module = sys.modules.get(module_name)
        if module is not None and hasattr(module, attribute):
            monkeypatch.setattr(module, attribute, value)
    # Pooled keep-alive connections from an earlier test would point at a stopped server.
    huggingface_hub.close_session()


@pytest.fixture
def hub_server(tmp_path, monkeypatch) -> Iterator[HubServer]:
    """A started :class:`HubServer` the real huggingface_hub client is pointed at.

    Tokens: ``WRITE_TOKEN`` ("hf_test_write_token", also exported as HF_TOKEN) and the read-only
    ``READ_TOKEN`` ("hf_test_read_token"). HF_HOME lives under `tmp_path`.
    """
    import huggingface_hub

    server = HubServer()
    server.add_token(WRITE_TOKEN, write=True, name="test-write")
    server.add_token(READ_TOKEN, write=False, name="test-read")
    server.start()
    try:
        _point_client_at(monkeypatch, server.url, str(tmp_path / "hf_home"))
        yield server
    finally:
        huggingface_hub.close_session()
        server.stop()
        assert not server.errors, "test Hub server crashed:\n" + "\n".join(server.errors)


__all__ = [
    "HubServer",
    "Fault",
    "RequestRecord",
    "hub_server",
    "WRITE_TOKEN",
    "READ_TOKEN",
    "USER_NAME",
    "derive_tags",
    "parse_front_matter",
]
