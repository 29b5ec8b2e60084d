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

Dataset repositories (added with :meth:`HubServer.add_dataset`) are served read-only, the way
``datasets.load_dataset`` resolves and downloads them through ``huggingface_hub`` (``{rev}`` is a
branch or a commit sha)::

    GET  /api/datasets/{repo}[/revision/{rev}]          repository info (id, sha, siblings, cardData)
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]       listing (``?recursive=true``): type, path, oid, size
    POST /api/datasets/{repo}/paths-info/{rev}          form ``paths=...``: the same entries for given paths
    HEAD /datasets/{repo}/resolve/{rev}/{path}          ETag, X-Repo-Commit, Content-Length (404 EntryNotFound)
    GET  /datasets/{repo}/resolve/{rev}/{path}          the file's bytes (``Range`` honoured)

Dataset reads need no token, like public repositories on the Hub.

Every route except the storage PUT needs ``Authorization: Bearer <token>``. Files named like
weights (``*.safetensors``, ``*.bin``, ...) or holding NUL bytes go through LFS, as the Hub's
default ``.gitattributes`` sends them. The preupload answer carries the oid of the file already on
the revision (sha256 for LFS files, the git blob sha1 for regular ones), so a client skips
unchanged files, and the batch answer has no upload action for objects already stored, so nothing
is sent twice. ``fail_commits`` makes the next commits fail with a 500 after their body was read,
like a server dying mid-commit. What arrives is kept: ``repos`` (branches with their files and
commits), ``lfs`` (objects by oid), ``requests`` (method, path, Authorization header).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
class DatasetRepo:
    repo_id: str
    sha: str
    files: dict[str, bytes]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


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
        self.datasets: dict[str, DatasetRepo] = {}
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
            if self._is_dataset_route(parts):
                self._serve_dataset(handler, method, parts, query, body)
                return
            try:
                if method != "PUT" and auth != f"Bearer {self.token}":
                    raise HubError(401, "Invalid username or password.")
                status, answer = self._route(method, parts, query, body)
            except HubError as e:
                headers = {"X-Error-Code": e.code, "X-Error-Message": e.message} if e.code else {}
                self._send(handler, e.status, {"error": e.message}, headers)
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

    # ---------------------------------------------------------------- dataset repositories (read-only)

    def add_dataset(self, repo_id: str, files: dict[str, bytes]) -> str:
        """Publish a dataset repository holding ``files`` (path -> bytes) as one commit; returns its sha."""
        sha = hashlib.sha1(json.dumps([repo_id, sorted((p, git_blob_sha1(d)) for p, d in files.items())])
                           .encode()).hexdigest()
        with self._lock:
            self.datasets[repo_id] = DatasetRepo(repo_id, sha, dict(files))
        return sha

    @staticmethod
    def _is_dataset_route(parts: list[str]) -> bool:
        return (len(parts) >= 4 and parts[:2] == ["api", "datasets"]) or (len(parts) >= 5 and parts[0] == "datasets"
                                                                          and parts[3] == "resolve")

    def _dataset(self, repo_id: str, rev: str) -> DatasetRepo:
        repo = self.datasets.get(repo_id)
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if rev not in ("main", repo.sha):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo

    def _entry(self, repo: DatasetRepo, path: str) -> dict:
        if path in repo.files:
            data = repo.files[path]
            entry = {"type": "file", "path": path, "oid": git_blob_sha1(data), "size": len(data)}
            if self._is_lfs(path, data[:512]) or path.endswith(".parquet"):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            return entry
        return {"type": "directory", "path": path, "oid": git_blob_sha1(path.encode()), "size": 0}

    def _listing(self, repo: DatasetRepo, folder: str, recursive: bool) -> list[dict]:
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
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

    def _serve_dataset(self, handler: BaseHTTPRequestHandler, method: str, parts: list[str], query: dict,
                       body: bytes) -> None:
        try:
            if parts[0] == "datasets":  # /datasets/{repo}/resolve/{rev}/{path}
                if method not in ("GET", "HEAD"):
                    raise HubError(405, f"{method} is not served on resolve")
                repo = self._dataset("/".join(parts[1:3]), parts[4])
                path = "/".join(parts[5:])
                if path not in repo.files:
                    raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
                self._send_file(handler, method, repo, path)
                return
            repo_id, rest = "/".join(parts[2:4]), parts[4:]
            if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
                repo = self._dataset(repo_id, rest[1] if rest else "main")
                self._send(handler, 200, self._dataset_info(repo))
                return
            if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
                repo = self._dataset(repo_id, rest[1])
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._send_list(handler, self._listing(repo, "/".join(rest[2:]), recursive))
                return
            if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                repo = self._dataset(repo_id, rest[1])
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
            headers = {"X-Error-Code": e.code, "X-Error-Message": e.message} if e.code else {}
            if method == "HEAD":
                handler.send_response(e.status)
                for key, value in headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
            else:
                self._send(handler, e.status, {"error": e.message}, headers)

    def _dataset_info(self, repo: DatasetRepo) -> dict:
        card = {}
        readme = repo.files.get("README.md", b"").decode()
        if readme.startswith("---"):
            card = yaml.safe_load(readme.split("---", 2)[1]) or {}
        return {"id": repo.repo_id, "sha": repo.sha, "private": False, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "cardData": card,
                "siblings": [{"rfilename": p} for p in sorted(repo.files)]}

    @staticmethod
    def _send_list(handler: BaseHTTPRequestHandler, body: list) -> None:
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _send_file(self, handler: BaseHTTPRequestHandler, method: str, repo: DatasetRepo, path: str) -> None:
        data = repo.files[path]
        etag = self._entry(repo, path).get("lfs", {}).get("oid") or git_blob_sha1(data)
        status, chunk = 200, data
        wanted = handler.headers.get("Range", "")
        if wanted.startswith("bytes=") and method == "GET":
            start, _, end = wanted[len("bytes="):].partition("-")
            first = int(start) if start else max(0, len(data) - int(end))
            last = int(end) if start and end else len(data) - 1
            chunk = data[first:last + 1]
            status = 206
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(chunk)))
        handler.send_header("ETag", f'"{etag}"')
        handler.send_header("X-Repo-Commit", repo.sha)
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {first}-{first + len(chunk) - 1}/{len(data)}")
        handler.end_headers()
        if method == "GET":
            handler.wfile.write(chunk)
