"""A local Hugging Face Hub: the HTTP routes ``huggingface_hub`` 0.36 calls to create a repository,
make branches and commit a folder (``HfApi.create_repo``, ``create_branch``, ``upload_folder``),
served from a thread with Python's ``http.server``.

Routes (``{repo}`` is ``owner/name``; revisions arrive URL-quoted)::

    POST /api/repos/create                              {"name", "organization", "private", "type"}
    POST /api/validate-yaml                             the README.md front matter (``create_commit`` sends it)
    POST /api/models/{repo}/branch/{branch}             create a branch (409 when it exists)
    POST /api/models/{repo}/preupload/{rev}             per file: uploadMode lfs|regular, the remote oid
    POST /{repo}.git/info/lfs/objects/batch             git-lfs batch API: upload + verify actions
    PUT  /lfs-storage/{oid}                             the object's bytes (like a presigned S3 URL)
    POST /{repo}.git/info/lfs/objects/verify            {"oid", "size"}
    POST /api/models/{repo}/commit/{rev}[?create_pr=1]  NDJSON: header, file (base64), lfsFile, deleted*
    GET  /api/models/{repo}[/revision/{rev}]            repository info (id, sha, siblings)

Each of these routes except the storage PUT needs ``Authorization: Bearer <token>``. Files named like
weights (``*.safetensors``, ``*.bin``, ...) or holding NUL bytes go through LFS, as the Hub's
default ``.gitattributes`` sends them. The preupload answer carries the oid of the file already on
the revision (sha256 for LFS files, the git blob sha1 for regular ones), so a client skips
unchanged files, and the batch answer has no upload action for objects already stored, so nothing
is sent twice. ``fail_commits`` makes the next commits fail with a 500 after their body was read,
like a server dying mid-commit.

Dataset repositories (added with :meth:`HubServer.add_dataset`) and model repositories (added with
:meth:`HubServer.add_model`, a saved model folder per revision) are served read-only, the way
``datasets.load_dataset``, ``hf_hub_download``, ``snapshot_download``, ``HfApi.model_info`` /
``list_repo_files`` and ``transformers``' ``from_pretrained`` resolve and download them (``{rev}`` is a
branch or tag name, or a commit sha; ``{kind}`` is ``datasets`` or ``models``)::

    GET  /api/{kind}/{repo}[/revision/{rev}]            repository info: id, sha, siblings (rfilename; size,
                                                        blobId, lfs with ``?blobs=true``), cardData; a model's
                                                        also config, library_name, safetensors, tags
    GET  /api/{kind}/{repo}/tree/{rev}[/{path}]         listing (``?recursive=true``): type, path, oid, size, lfs
    POST /api/{kind}/{repo}/paths-info/{rev}            form ``paths=...``: the same entries for given paths
    HEAD /datasets/{repo}/resolve/{rev}/{path}          ETag, X-Repo-Commit, Content-Length
    GET  /datasets/{repo}/resolve/{rev}/{path}          the file's bytes (``Range`` honoured)
    HEAD /{repo}/resolve/{rev}/{path}                   a model's regular file: 200, ETag (git blob sha1),
                                                        X-Repo-Commit, Content-Length; an LFS file: 302 to
                                                        /cdn-lfs/{sha256}, ETag and X-Linked-Etag (sha256),
                                                        X-Linked-Size, X-Repo-Commit
    GET  /{repo}/resolve/{rev}/{path}                   the same, with the regular file's bytes (``Range``)
    GET  /cdn-lfs/{sha256}                              an LFS object's bytes (``Range`` honoured), no token

Reads need no token, like public repositories on the Hub. Errors carry the ``X-Error-Code`` that
``huggingface_hub`` turns into its exceptions (the status alone does not do it over plain http):
``RepoNotFound`` (for a model 401 without a valid token and 404 with one, as the Hub answers for a
repository it does not show; 404 for a dataset), ``RevisionNotFound`` (404) and ``EntryNotFound`` (404,
with ``X-Repo-Commit`` so the client caches the absence of an optional file for that commit). Uploaded
repositories are read through the info route of the first list only.

What arrives is kept: ``repos`` (branches with their files and commits), ``lfs`` (objects by oid),
``requests`` (method, path, Authorization header), ``unknown`` (requests no route answers).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".msgpack", ".pkl", ".npz")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob, the oid the Hub reports for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Branch:
    head: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)


@dataclass
class Repo:
    repo_id: str
    private: bool | None
    branches: dict[str, Branch] = field(default_factory=lambda: {"main": Branch()})
    commits: list[dict] = field(default_factory=list)
    pull_requests: list[str] = field(default_factory=list)


@dataclass
class Snapshot:
    """One commit of a read-only repository (a served dataset or model): its files, and which go through LFS."""

    repo_id: str
    sha: str
    files: dict[str, bytes]
    lfs_paths: frozenset[str] = frozenset()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """The local Hub; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_uploads: list[str] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.unknown: list[tuple[str, str]] = []
        self.validated_cards: list[str] = []
        self.fail_commits = 0
        self.datasets: dict[str, Snapshot] = {}
        self.models: dict[str, dict[str, Snapshot]] = {}
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> HubServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                hub._serve(self, "GET")

            def do_POST(self) -> None:
                hub._serve(self, "POST")

            def do_PUT(self) -> None:
                hub._serve(self, "PUT")

            def do_HEAD(self) -> None:
                hub._serve(self, "HEAD")

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- plumbing

    @staticmethod
    def _body(handler: BaseHTTPRequestHandler) -> bytes:
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += handler.rfile.read(size)
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        query = parse_qs(split.query)
        auth = handler.headers.get("Authorization")
        body = self._body(handler) if method in ("POST", "PUT") else b""
        with self._lock:
            self.requests.append((method, split.path, auth))
            kind = self._read_route(method, parts)
            if kind is not None:
                self._serve_read(handler, method, kind, parts, query, body, auth)
                return
            try:
                if method != "PUT" and auth != f"Bearer {self.token}":
                    raise HubError(401, "Invalid username or password.")
                status, answer = self._route(method, parts, query, body)
            except HubError as e:
                self._send_error(handler, method, e)
                return
        self._send(handler, status, answer)

    def _route(self, method: str, parts: list[str], query: dict, body: bytes) -> tuple[int, dict]:
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(body))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._validate_yaml(json.loads(body))
        if method == "PUT" and len(parts) == 2 and parts[0] == "lfs-storage":
            return self._store(parts[1], body)
        if len(parts) >= 4 and parts[0] == "api" and parts[1] == "models":
            repo = self._repo("/".join(parts[2:4]))
            rest = parts[4:]
            if method == "GET" and rest in ([], ["revision", *rest[1:2]]) and len(rest) in (0, 2):
                return self._info(repo, rest[1] if rest else "main")
            if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
                return self._preupload(repo, rest[1], json.loads(body))
            if method == "POST" and len(rest) == 2 and rest[0] == "commit":
                return self._commit(repo, rest[1], body, create_pr=query.get("create_pr") == ["1"])
            if method == "POST" and len(rest) == 2 and rest[0] == "branch":
                return self._branch(repo, rest[1], json.loads(body or b"{}"))
        if (method == "POST" and len(parts) == 6 and parts[1].endswith(".git")
                and parts[2:5] == ["info", "lfs", "objects"]):
            repo = self._repo(f"{parts[0]}/{parts[1][:-len('.git')]}")
            if parts[5] == "batch":
                return self._batch(repo, json.loads(body))
            if parts[5] == "verify":
                return self._verify(json.loads(body))
        self.unknown.append((method, "/".join(parts)))
        raise HubError(404, f"no route {method} /{'/'.join(parts)}")

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.repos[repo_id]

    @staticmethod
    def _branch_of(repo: Repo, rev: str) -> Branch:
        if rev not in repo.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.branches[rev]

    # ---------------------------------------------------------------- routes

    def _create_repo(self, body: dict) -> tuple[int, dict]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = Repo(repo_id, body.get("private"))
        return 200, {"url": url, "name": repo_id}

    def _validate_yaml(self, body: dict) -> tuple[int, dict]:
        content = body.get("content", "")
        self.validated_cards.append(content)
        if content.startswith("---"):
            try:
                front = content.split("---", 2)[1]
                if not isinstance(yaml.safe_load(front) or {}, dict):
                    raise yaml.YAMLError("front matter is not a mapping")
            except (yaml.YAMLError, IndexError) as e:
                return 400, {"errors": [{"message": f"Invalid YAML: {e}"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _branch(self, repo: Repo, name: str, body: dict) -> tuple[int, dict]:
        if name in repo.branches:
            raise HubError(409, f"Reference refs/heads/{name} already exists")
        start = self._branch_of(repo, body.get("startingPoint") or "main")
        repo.branches[name] = Branch(start.head, dict(start.files), set(start.lfs_paths))
        return 200, {}

    def _info(self, repo: Repo, rev: str) -> tuple[int, dict]:
        branch = self._branch_of(repo, rev)
        return 200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": branch.head, "private": bool(repo.private),
                     "siblings": [{"rfilename": p} for p in sorted(branch.files)]}

    @staticmethod
    def _is_lfs(path: str, sample: bytes) -> bool:
        return path.endswith(LFS_SUFFIXES) or b"\0" in sample

    def _preupload(self, repo: Repo, rev: str, body: dict) -> tuple[int, dict]:
        branch = self._branch_of(repo, rev)
        files = []
        for entry in body["files"]:
            path = entry["path"]
            lfs = self._is_lfs(path, base64.b64decode(entry["sample"]))
            remote = branch.files.get(path)
            oid = None
            if remote is not None:
                oid = hashlib.sha256(remote).hexdigest() if path in branch.lfs_paths else git_blob_sha1(remote)
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": branch.head}

    def _batch(self, repo: Repo, body: dict) -> tuple[int, dict]:
        if body.get("operation") != "upload":
            raise HubError(400, "only uploads are served")
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in self.lfs or len(self.lfs[oid]) != size:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs-storage/{oid}", "header": {}},
                    "verify": {"href": f"{self.url}/{repo.repo_id}.git/info/lfs/objects/verify", "header": {}},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def _store(self, oid: str, data: bytes) -> tuple[int, dict]:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "content does not match the oid")
        self.lfs[oid] = data
        self.lfs_uploads.append(oid)
        return 200, {}

    def _verify(self, body: dict) -> tuple[int, dict]:
        data = self.lfs.get(body["oid"])
        if data is None or len(data) != body["size"]:
            raise HubError(404, "object not stored")
        return 200, {}

    def _commit(self, repo: Repo, rev: str, body: bytes, *, create_pr: bool) -> tuple[int, dict]:
        branch = self._branch_of(repo, rev)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise HubError(500, "Internal Error - the commit could not be written")
        parent = header.get("parentCommit")
        if parent is not None and parent != branch.head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files, lfs_paths = dict(branch.files), set(branch.lfs_paths)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"invalid path {path!r}")
            if key == "file":
                files[path] = base64.b64decode(value["content"])
                lfs_paths.discard(path)
            elif key == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None or len(data) != value["size"]:
                    raise HubError(422, f"LFS object {value['oid']} for {path} was never uploaded")
                files[path] = data
                lfs_paths.add(path)
            elif key == "deletedFile":
                files.pop(path, None)
                lfs_paths.discard(path)
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(prefix)}
                lfs_paths = {p for p in lfs_paths if not p.startswith(prefix)}
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = hashlib.sha1(json.dumps([branch.head, header, sorted((p, git_blob_sha1(d)) for p, d in files.items()),
                                       len(repo.commits)]).encode()).hexdigest()
        pr_url = None
        target = rev
        if create_pr:
            number = len(repo.pull_requests) + 1
            target = f"refs/pr/{number}"
            repo.pull_requests.append(target)
            pr_url = f"{self.url}/{repo.repo_id}/discussions/{number}"
        repo.branches[target] = Branch(oid, files, lfs_paths)
        repo.commits.append({"oid": oid, "branch": target, "summary": header.get("summary"),
                             "operations": [line["key"] for line in lines[1:]]})
        return 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": pr_url}

    # ---------------------------------------------------------------- read-only repositories (datasets, models)

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish a dataset repository holding ``files`` (path -> bytes) as one commit; returns its sha."""
        snapshot = make_snapshot(repo_id, files, lfs_suffixes=(".parquet",))
        with self._lock:
            self.datasets[repo_id] = snapshot
        return snapshot.sha

    def add_model(self, repo_id: str, folder: str | Path | dict[str, bytes], revision: str = "main") -> str:
        """Publish ``folder`` (a saved model folder, subfolders included, or a path -> bytes dict) as the
        revision ``revision`` (a branch or tag name) of the model repository ``repo_id``; returns its commit
        sha, which depends only on the repository id and the files."""
        if repo_id in self.repos:
            raise ValueError(f"{repo_id} is an uploaded repository; served models are added under another id")
        files = dict(folder) if isinstance(folder, dict) else folder_files(Path(folder))
        snapshot = make_snapshot(repo_id, files)
        with self._lock:
            self.models.setdefault(repo_id, {})[revision] = snapshot
            for path in snapshot.lfs_paths:
                self._blobs[hashlib.sha256(files[path]).hexdigest()] = files[path]
        return snapshot.sha

    def _read_route(self, method: str, parts: list[str]) -> str | None:
        """``"datasets"``, ``"models"`` or ``"cdn"`` for a request the read-only repositories answer."""
        if len(parts) == 2 and parts[0] == "cdn-lfs":
            return "cdn"
        if (len(parts) >= 4 and parts[:2] == ["api", "datasets"]) or (len(parts) >= 5 and parts[0] == "datasets"
                                                                      and parts[3] == "resolve"):
            return "datasets"
        if len(parts) >= 4 and parts[:2] == ["api", "models"]:
            rest = parts[4:]
            reading = ((method == "GET" and (rest == [] or rest[0] in ("revision", "tree")))
                       or (method == "POST" and rest[:1] == ["paths-info"]))
            return "models" if reading and "/".join(parts[2:4]) not in self.repos else None
        if (len(parts) >= 5 and parts[2] == "resolve" and parts[0] not in ("api", "datasets", "spaces")
                and "/".join(parts[:2]) not in self.repos):
            return "models"
        return None

    def _snapshot(self, kind: str, repo_id: str, rev: str, auth: str | None) -> Snapshot:
        """The revision ``rev`` (a branch or tag name, or a commit sha) of a served repository."""
        if kind == "datasets":
            revisions = {"main": self.datasets[repo_id]} if repo_id in self.datasets else None
        else:
            revisions = self.models.get(repo_id)
        if revisions is None:
            # The Hub answers 401 to an anonymous request for a repository it does not show (absent,
            # private or gated) and 404 to a logged-in one; the error code names the case either way.
            status = 404 if kind == "datasets" or auth == f"Bearer {self.token}" else 401
            raise HubError(status, "Repository not found", "RepoNotFound")
        for name, snapshot in revisions.items():
            if rev in (name, snapshot.sha):
                return snapshot
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    @staticmethod
    def _entry(repo: Snapshot, path: str) -> dict:
        if path in repo.files:
            data = repo.files[path]
            if path not in repo.lfs_paths:
                return {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}
            pointer = lfs_pointer(data)  # git holds the pointer file, LFS the bytes
            return {"type": "file", "path": path, "oid": git_blob_sha1(pointer), "size": len(data),
                    "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": len(pointer)}}
        return {"type": "directory", "path": path, "oid": git_blob_sha1(path.encode()), "size": 0}

    def _listing(self, repo: Snapshot, folder: str, recursive: bool) -> list[dict]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
        seen: dict[str, dict] = {}
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest) + 1):
                sub = prefix + "/".join(rest[:depth])
                if sub not in seen:
                    seen[sub] = self._entry(repo, sub)
                if not recursive:
                    break
        return list(seen.values())

    def _serve_read(self, handler: BaseHTTPRequestHandler, method: str, kind: str, parts: list[str], query: dict,
                    body: bytes, auth: str | None) -> None:
        try:
            if kind == "cdn":  # /cdn-lfs/{sha256}: the storage an LFS file's resolve redirects to
                data = self._blobs.get(parts[1])
                if method not in ("GET", "HEAD") or data is None:
                    raise HubError(404, "no such object")
                self._send_bytes(handler, method, data, {"ETag": f'"{parts[1]}"'})
                return
            if parts[0] != "api":  # [datasets/]{repo}/resolve/{rev}/{path}
                at = 1 if kind == "datasets" else 0
                if method not in ("GET", "HEAD"):
                    raise HubError(405, f"{method} is not served on resolve")
                repo = self._snapshot(kind, "/".join(parts[at:at + 2]), parts[at + 3], auth)
                path = "/".join(parts[at + 4:])
                if path not in repo.files:
                    # X-Repo-Commit lets the client remember the absence for this commit (.no_exist).
                    raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": repo.sha})
                self._send_file(handler, method, kind, repo, path)
                return
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
                repo = self._snapshot(kind, repo_id, rest[1] if rest else "main", auth)
                blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
                self._send(handler, 200, self._repo_info(kind, repo, blobs))
                return
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                repo = self._snapshot(kind, repo_id, rest[1], auth)
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._send_list(handler, self._listing(repo, "/".join(rest[2:]), recursive))
                return
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                repo = self._snapshot(kind, repo_id, rest[1], auth)
                form = parse_qs(body.decode())
                paths = form.get("paths", [])
                if not paths and body.strip().startswith(b"{"):
                    paths = json.loads(body).get("paths", [])
                entries = []
                for path in paths:
                    path = path.strip("/")
                    if path in repo.files or any(p.startswith(path + "/") for p in repo.files):
                        entries.append(self._entry(repo, path))
                self._send_list(handler, entries)
                return
            self.unknown.append((method, "/".join(parts)))
            raise HubError(404, f"no route {method} /{'/'.join(parts)}")
        except HubError as e:
            self._send_error(handler, method, e)

    def _send_error(self, handler: BaseHTTPRequestHandler, method: str, e: HubError) -> None:
        headers = {"X-Error-Code": e.code, "X-Error-Message": e.message} if e.code else {}
        headers.update(e.headers)
        if method == "HEAD":
            handler.send_response(e.status)
            for key, value in headers.items():
                handler.send_header(key, value)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            self._send(handler, e.status, {"error": e.message}, headers)

    def _repo_info(self, kind: str, repo: Snapshot, blobs: bool) -> dict:
        card = {}
        readme = repo.files.get("README.md", b"").decode()
        if readme.startswith("---"):
            card = yaml.safe_load(readme.split("---", 2)[1]) or {}
        siblings = []
        for path in sorted(repo.files):
            sibling = {"rfilename": path}
            if blobs:  # ?blobs=true (files_metadata=True): sizes, blob ids, LFS objects
                entry = self._entry(repo, path)
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if "lfs" in entry:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["lfs"]["oid"],
                                      "pointerSize": entry["lfs"]["pointerSize"]}
            siblings.append(sibling)
        info = {"id": repo.repo_id, "sha": repo.sha, "private": False, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": list(card.get("tags") or []), "cardData": card,
                "siblings": siblings}
        if kind == "models":
            info.update(modelId=repo.repo_id, author=repo.repo_id.split("/")[0], **model_facts(repo))
            info["tags"] = sorted(set(info["tags"]) | set(info.pop("auto_tags")))
        return info

    @staticmethod
    def _send_list(handler: BaseHTTPRequestHandler, body: list) -> None:
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _send_file(self, handler: BaseHTTPRequestHandler, method: str, kind: str, repo: Snapshot, path: str) -> None:
        data = repo.files[path]
        if path not in repo.lfs_paths:
            self._send_bytes(handler, method, data, {"ETag": f'"{git_blob_sha1(data)}"', "X-Repo-Commit": repo.sha})
            return
        oid = hashlib.sha256(data).hexdigest()
        if kind == "datasets":  # dataset files are served in place
            self._send_bytes(handler, method, data, {"ETag": f'"{oid}"', "X-Repo-Commit": repo.sha})
            return
        # A model's LFS file, as the Hub answers it: a redirect to the storage, with the object's
        # sha256 and size in X-Linked-Etag / X-Linked-Size (the redirect's own length is 0).
        handler.send_response(302)
        for key, value in {"Location": f"{self.url}/cdn-lfs/{oid}", "ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"',
                           "X-Linked-Size": str(len(data)), "X-Repo-Commit": repo.sha, "Content-Length": "0"}.items():
            handler.send_header(key, value)
        handler.end_headers()

    @staticmethod
    def _send_bytes(handler: BaseHTTPRequestHandler, method: str, data: bytes, headers: dict) -> None:
        """``data`` with ``headers``; a GET's ``Range: bytes=a-b`` (or ``a-``, ``-n``) gets a 206 with that part."""
        status, first, chunk = 200, 0, data
        wanted = handler.headers.get("Range", "")
        if wanted.startswith("bytes=") and method == "GET":
            start, _, end = wanted[len("bytes="):].split(",")[0].strip().partition("-")
            first = int(start) if start else max(0, len(data) - int(end))
            last = min(int(end), len(data) - 1) if start and end else len(data) - 1
            if first >= len(data) or last < first:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{len(data)}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            status, chunk = 206, data[first:last + 1]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(chunk)))
        handler.send_header("Accept-Ranges", "bytes")
        for key, value in headers.items():
            handler.send_header(key, value)
        if status == 206:
            handler.send_header("Content-Range", f"bytes {first}-{first + len(chunk) - 1}/{len(data)}")
        handler.end_headers()
        if method == "GET":
            handler.wfile.write(chunk)


def folder_files(folder: Path) -> dict[str, bytes]:
    """The files under ``folder`` by repository path (``a/b.json``), without git's and the Hub cache's own."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in (".git", ".cache")}


def make_snapshot(repo_id: str, files: dict[str, bytes], lfs_suffixes: tuple[str, ...] = ()) -> Snapshot:
    """One commit holding ``files``: its sha is a hash of the repository id and the files' blob ids."""
    sha = hashlib.sha1(json.dumps([repo_id, sorted((p, git_blob_sha1(d)) for p, d in files.items())])
                       .encode()).hexdigest()
    lfs = frozenset(p for p, d in files.items() if HubServer._is_lfs(p, d[:512]) or p.endswith(lfs_suffixes))
    return Snapshot(repo_id, sha, dict(files), lfs)


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


def model_facts(repo: Snapshot) -> dict:
    """What the Hub derives from a model's files for its info: library, config, parameter counts, tags."""
    facts: dict = {"library_name": "transformers" if "config.json" in repo.files else None, "auto_tags": []}
    try:
        config = json.loads(repo.files["config.json"])
        facts["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        facts["auto_tags"] = ["transformers", *([config["model_type"]] if "model_type" in config else [])]
    except (KeyError, ValueError):
        pass
    counts: dict[str, int] = {}
    for path, data in repo.files.items():
        if "/" in path or not path.endswith(".safetensors"):
            continue
        try:  # the header: 8 bytes of length, then JSON {name: {dtype, shape, data_offsets}}
            header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
            tensors = [(t["dtype"], math.prod(t["shape"])) for n, t in header.items() if n != "__metadata__"]
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a safetensors file after all: no counts from it, as the Hub shows none
        for dtype, numel in tensors:
            counts[dtype] = counts.get(dtype, 0) + numel
    if counts:
        facts["safetensors"] = {"parameters": counts, "total": sum(counts.values())}
        facts["auto_tags"].append("safetensors")
    return facts
