"""Self-tests of the fake Hub: the real huggingface_hub client against it, and raw HTTP."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fakehub import FakeHub

REPO = "acme/tiny-GGUF"
TOKEN = "hf_test_token"


def _payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


GGUF = _payload(300_000, seed=1)
CONFIG = b'{"architectures": ["LlamaForCausalLM"]}'
README = b"# tiny\n"


@pytest.fixture
def repo(fake_hub: FakeHub) -> str:
    """A repo with an LFS GGUF, plain small files, and a nested directory; returns its commit."""
    return fake_hub.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": GGUF,
            "config.json": CONFIG,
            "README.md": README,
            "sub/dir/notes.txt": b"hello",
            "sub/weights.bin": _payload(4096, seed=2),
        },
    )


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def _fake_hub_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fakehub")]


# --------------------------------------------------------------------------- huggingface_hub


def test_model_info_files_metadata(fake_hub: FakeHub, repo: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=fake_hub.url)
    info = api.model_info(REPO, files_metadata=True)
    assert info.id == REPO
    assert info.sha == repo
    assert info.private is False
    assert info.gated is False
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert set(siblings) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "sub/dir/notes.txt",
        "sub/weights.bin",
        "tiny-Q4_K_M.gguf",
    }
    gguf = siblings["tiny-Q4_K_M.gguf"]
    assert gguf.size == len(GGUF)
    assert gguf.lfs is not None
    assert gguf.lfs.sha256 == hashlib.sha256(GGUF).hexdigest()
    assert gguf.lfs.size == len(GGUF)
    assert gguf.lfs.pointer_size > 0
    assert siblings["sub/weights.bin"].lfs is not None  # >= lfs_threshold
    config = siblings["config.json"]
    assert config.lfs is None
    assert config.size == len(CONFIG)
    assert config.blob_id == _git_oid(CONFIG)

    plain = api.model_info(REPO)  # without ?blobs=true: names only
    assert all(s.size is None and s.lfs is None for s in plain.siblings or [])
    assert fake_hub.requests_for("/api/models/")[0].query.get("blobs") == ["true"]


def test_model_info_revisions(fake_hub: FakeHub, repo: str) -> None:
    from huggingface_hub import HfApi

    pr = fake_hub.add_repo(REPO, {"other.gguf": b"GGUF" * 10}, revision="refs/pr/1")
    api = HfApi(endpoint=fake_hub.url)
    assert api.model_info(REPO, revision="refs/pr/1").sha == pr  # "/" arrives as %2F
    by_sha = api.model_info(REPO, revision=repo, files_metadata=True)
    assert by_sha.sha == repo
    assert "tiny-Q4_K_M.gguf" in {s.rfilename for s in by_sha.siblings or []}
    assert api.model_info(REPO).sha == repo  # main untouched
    assert fake_hub.commit_sha(REPO, "refs/pr/1") == pr


def test_list_repo_tree_paging(fake_hub: FakeHub, repo: str) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    fake_hub.tree_page_size = 2
    api = HfApi(endpoint=fake_hub.url)
    entries = list(api.list_repo_tree(REPO, recursive=True))
    files = {e.path: e for e in entries if isinstance(e, RepoFile)}
    folders = {e.path for e in entries if isinstance(e, RepoFolder)}
    assert folders == {"sub", "sub/dir"}
    assert set(files) == {
        ".gitattributes",
        "README.md",
        "config.json",
        "sub/dir/notes.txt",
        "sub/weights.bin",
        "tiny-Q4_K_M.gguf",
    }
    gguf = files["tiny-Q4_K_M.gguf"]
    assert gguf.size == len(GGUF)
    assert gguf.lfs is not None
    assert gguf.lfs.sha256 == hashlib.sha256(GGUF).hexdigest()
    assert files["README.md"].lfs is None
    assert files["README.md"].blob_id == _git_oid(README)
    tree_requests = fake_hub.requests_for("/tree/")
    assert len(tree_requests) == 4  # 8 entries, 2 per page
    assert all("cursor" in r.query for r in tree_requests[1:])

    assert set(api.list_repo_files(REPO)) == set(files)

    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(REPO)}
    assert ("RepoFolder", "sub") in top
    assert ("RepoFile", "sub/weights.bin") not in top
    under = {e.path for e in api.list_repo_tree(REPO, path_in_repo="sub", recursive=True)}
    assert under == {"sub/dir", "sub/dir/notes.txt", "sub/weights.bin"}

    expanded = [e for e in api.list_repo_tree(REPO, expand=True) if isinstance(e, RepoFile)]
    assert all(e.last_commit is not None and e.last_commit.oid == repo for e in expanded)


def test_get_paths_info(fake_hub: FakeHub, repo: str) -> None:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile, RepoFolder

    api = HfApi(endpoint=fake_hub.url)
    infos = api.get_paths_info(REPO, ["tiny-Q4_K_M.gguf", "sub", "missing.txt"])
    by_path = {i.path: i for i in infos}
    assert set(by_path) == {"tiny-Q4_K_M.gguf", "sub"}  # missing paths are left out
    gguf = by_path["tiny-Q4_K_M.gguf"]
    assert isinstance(gguf, RepoFile)
    assert gguf.lfs is not None
    assert gguf.lfs.sha256 == hashlib.sha256(GGUF).hexdigest()
    assert isinstance(by_path["sub"], RepoFolder)

    response = httpx.post(
        f"{fake_hub.url}/api/models/{REPO}/paths-info/main", json={"paths": ["config.json"]}
    )
    assert response.status_code == 200
    assert response.json() == [
        {"type": "file", "oid": _git_oid(CONFIG), "size": len(CONFIG), "path": "config.json"}
    ]


def test_hf_hub_download_lfs_via_redirect_and_plain(
    fake_hub: FakeHub, repo: str, tmp_path: Path
) -> None:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(REPO, "tiny-Q4_K_M.gguf", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == GGUF
    assert f"/snapshots/{repo}/" in Path(path).as_posix()
    resolve = fake_hub.requests_for("/resolve/")
    assert [(r.method, r.status) for r in resolve] == [("HEAD", 302)]
    cdn = fake_hub.requests_for("/cdn-lfs/")
    assert [(r.method, r.status) for r in cdn] == [("HEAD", 200), ("GET", 200)]

    nested = hf_hub_download(REPO, "sub/dir/notes.txt", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(nested).read_bytes() == b"hello"
    assert [(r.method, r.status) for r in fake_hub.requests_for("notes.txt")] == [
        ("HEAD", 200),
        ("GET", 200),
    ]


def test_hf_hub_download_without_redirect_and_from_disk(fake_hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    source = tmp_path / "on-disk.gguf"
    data = _payload(2_500_000, seed=3)
    source.write_bytes(data)
    fake_hub.add_repo("acme/disk", {"model.gguf": source, "small.txt": tmp_path / "on-disk.gguf"})
    fake_hub.redirect_lfs = False
    path = hf_hub_download(
        "acme/disk", "model.gguf", endpoint=fake_hub.url, cache_dir=tmp_path / "c"
    )
    assert Path(path).read_bytes() == data
    assert fake_hub.requests_for("/cdn-lfs/") == []
    assert {r.status for r in fake_hub.requests_for("/resolve/")} == {200}


def test_get_hf_file_metadata(fake_hub: FakeHub, repo: str) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    lfs = get_hf_file_metadata(hf_hub_url(REPO, "tiny-Q4_K_M.gguf", endpoint=fake_hub.url))
    assert lfs.commit_hash == repo
    assert lfs.etag == hashlib.sha256(GGUF).hexdigest()
    assert lfs.size == len(GGUF)
    assert "/cdn-lfs/" in lfs.location

    plain = get_hf_file_metadata(hf_hub_url(REPO, "config.json", endpoint=fake_hub.url))
    assert plain.commit_hash == repo
    assert plain.etag == _git_oid(CONFIG)
    assert plain.size == len(CONFIG)


def test_errors_map_to_huggingface_hub_exceptions(
    fake_hub: FakeHub, repo: str, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=fake_hub.url)
    with pytest.raises(RepositoryNotFoundError) as missing:
        api.model_info("acme/nope")
    assert not isinstance(missing.value, GatedRepoError)
    assert missing.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "x.gguf", endpoint=fake_hub.url, cache_dir=tmp_path)

    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="v9")
    with pytest.raises(RevisionNotFoundError):
        list(api.list_repo_tree(REPO, revision="v9"))
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(
            REPO, "config.json", revision="v9", endpoint=fake_hub.url, cache_dir=tmp_path
        )

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.gguf", endpoint=fake_hub.url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError) as entry:
        get_hf_file_metadata(hf_hub_url(REPO, "missing.gguf", endpoint=fake_hub.url))
    assert isinstance(entry.value, HfHubHTTPError)
    assert entry.value.response.headers["X-Repo-Commit"] == repo

    # Odd revisions come back in headers safely.
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="é\r\nX-Evil: 1")

    # An unknown token is refused on any repo, as the real Hub does.
    with pytest.raises(HfHubHTTPError) as bad_token:
        api.model_info(REPO, token="hf_wrong")
    assert bad_token.value.response.status_code == 401
    assert not isinstance(bad_token.value, RepositoryNotFoundError)


def test_gated_and_private_repos(fake_hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    fake_hub.add_repo("acme/gated", {"m.gguf": GGUF}, gated=True)
    fake_hub.add_repo("acme/secret", {"m.gguf": GGUF}, private=True)
    api = HfApi(endpoint=fake_hub.url)

    info = api.model_info("acme/gated", files_metadata=True)  # readable without a token
    assert info.gated == "manual"
    assert [s.rfilename for s in info.siblings or []] == [".gitattributes", "m.gguf"]
    with pytest.raises(GatedRepoError):
        hf_hub_download("acme/gated", "m.gguf", endpoint=fake_hub.url, cache_dir=tmp_path)
    path = hf_hub_download(
        "acme/gated", "m.gguf", endpoint=fake_hub.url, cache_dir=tmp_path, token=TOKEN
    )
    assert Path(path).read_bytes() == GGUF
    assert all(r.authorization == f"Bearer {TOKEN}" for r in fake_hub.requests[-3:])

    with pytest.raises(RepositoryNotFoundError):
        api.model_info("acme/secret")
    assert HfApi(endpoint=fake_hub.url, token=TOKEN).model_info("acme/secret").private is True

    # The CDN hop only serves signed locations handed out by resolve.
    sha = hashlib.sha256(GGUF).hexdigest()
    assert httpx.get(f"{fake_hub.url}/cdn-lfs/{sha}").status_code == 403


def test_cross_host_cdn_drops_authorization(fake_hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    fake_hub.add_repo("acme/gated", {"m.gguf": GGUF}, gated=True)
    fake_hub.cdn_host = "localhost"  # same server, but another host name, as a real CDN
    path = hf_hub_download(
        "acme/gated", "m.gguf", endpoint=fake_hub.url, cache_dir=tmp_path, token=TOKEN
    )
    assert Path(path).read_bytes() == GGUF
    cdn = fake_hub.requests_for("/cdn-lfs/")
    assert [r.method for r in cdn] == ["GET"]  # metadata came from the 302 itself
    assert cdn[0].authorization is None
    assert cdn[0].header("host") == f"localhost:{fake_hub.port}"


def test_hf_hub_download_resumes_after_cut(fake_hub: FakeHub, tmp_path: Path) -> None:
    """huggingface_hub writes 10 MiB chunks: a cut resumes from the last whole chunk."""
    from huggingface_hub import hf_hub_download

    data = os.urandom(12 << 20)
    fake_hub.add_repo("acme/big", {"big.gguf": data})
    fake_hub.faults.cut_after = 11 << 20
    path = hf_hub_download("acme/big", "big.gguf", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == data
    gets = fake_hub.requests_for("/cdn-lfs/", method="GET")
    assert [r.range for r in gets] == [None, f"bytes={10 << 20}-"]
    assert _cut_after(fake_hub) is None  # used up


def test_hf_hub_download_retries_503(fake_hub: FakeHub, repo: str, tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download

    fake_hub.faults.fail_status = [503]
    fake_hub.faults.retry_after = 0
    path = hf_hub_download(REPO, "config.json", endpoint=fake_hub.url, cache_dir=tmp_path)
    assert Path(path).read_bytes() == CONFIG
    assert [r.status for r in fake_hub.requests_for("/resolve/")] == [503, 200, 200]


def test_hf_endpoint_read_by_a_fresh_process(fake_hub: FakeHub, repo: str, tmp_path: Path) -> None:
    """HF_ENDPOINT is read when huggingface_hub is imported: a new process picks it up."""
    code = (
        "import sys; from huggingface_hub import hf_hub_download, constants;"
        "print(constants.ENDPOINT);"
        f"p = hf_hub_download({REPO!r}, 'config.json', cache_dir=sys.argv[1]);"
        "print(open(p, 'rb').read().decode())"
    )
    assert os.environ["HF_ENDPOINT"] == fake_hub.url
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == [fake_hub.url, CONFIG.decode()]


# --------------------------------------------------------------------------- raw HTTP


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


def _cdn_url(hub: FakeHub, client: httpx.Client, path: str = "tiny-Q4_K_M.gguf") -> str:
    head = client.head(hub.resolve_url(REPO, path))
    assert head.status_code == 302
    return str(head.url.join(head.headers["Location"]))


def test_resolve_headers(fake_hub: FakeHub, repo: str, client: httpx.Client) -> None:
    sha = hashlib.sha256(GGUF).hexdigest()
    head = client.head(fake_hub.resolve_url(REPO, "tiny-Q4_K_M.gguf"))
    assert head.status_code == 302
    assert head.headers["X-Repo-Commit"] == repo
    assert head.headers["X-Linked-Etag"] == f'"{sha}"'
    assert head.headers["X-Linked-Size"] == str(len(GGUF))
    assert head.headers["Location"].startswith(f"/cdn-lfs/{sha}?")
    cdn = client.head(fake_hub.url + head.headers["Location"])
    assert cdn.headers["Content-Length"] == str(len(GGUF))
    assert cdn.headers["Accept-Ranges"] == "bytes"
    assert cdn.headers["Content-Type"] == "application/octet-stream"
    assert cdn.headers["ETag"] == f'"{sha}"'

    by_sha = client.get(fake_hub.resolve_url(REPO, "config.json", revision=repo))
    assert by_sha.status_code == 200
    assert by_sha.content == CONFIG
    assert by_sha.headers["ETag"] == f'"{_git_oid(CONFIG)}"'
    assert by_sha.headers["X-Repo-Commit"] == repo
    assert by_sha.headers["Content-Length"] == str(len(CONFIG))
    assert by_sha.headers["Accept-Ranges"] == "bytes"
    assert "X-Linked-Etag" not in by_sha.headers

    followed = client.get(fake_hub.resolve_url(REPO, "tiny-Q4_K_M.gguf"), follow_redirects=True)
    assert followed.content == GGUF


def test_range_requests(fake_hub: FakeHub, repo: str, client: httpx.Client) -> None:
    url = _cdn_url(fake_hub, client)
    size = len(GGUF)

    part = client.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert part.content == GGUF[10:20]

    tail = client.get(url, headers={"Range": "bytes=299990-"})
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes 299990-{size - 1}/{size}"
    assert tail.content == GGUF[299_990:]

    suffix = client.get(url, headers={"Range": "bytes=-5"})
    assert suffix.status_code == 206
    assert suffix.content == GGUF[-5:]

    clamped = client.get(url, headers={"Range": f"bytes=5-{size + 100}"})
    assert clamped.headers["Content-Range"] == f"bytes 5-{size - 1}/{size}"
    assert clamped.content == GGUF[5:]

    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"

    plain = client.get(fake_hub.resolve_url(REPO, "config.json"), headers={"Range": "bytes=2-"})
    assert plain.status_code == 206
    assert plain.content == CONFIG[2:]

    fake_hub.faults.ignore_range = True
    whole = client.get(url, headers={"Range": "bytes=10-19"})
    assert whole.status_code == 200
    assert "Content-Range" not in whole.headers
    assert whole.content == GGUF


def _cut_after(hub: FakeHub) -> int | None:
    return hub.faults.cut_after  # read through a call, so type checkers keep no narrowing


def _stream_body(client: httpx.Client, url: str) -> tuple[bytes, httpx.HTTPError | None]:
    received = bytearray()
    try:
        with client.stream("GET", url) as response:
            for chunk in response.iter_raw():
                received += chunk
    except httpx.HTTPError as exc:
        return bytes(received), exc
    return bytes(received), None


def test_cut_after(fake_hub: FakeHub, repo: str, client: httpx.Client) -> None:
    url = _cdn_url(fake_hub, client)
    fake_hub.faults.cut_after = 1000
    fake_hub.faults.cut_times = 2
    for _ in range(2):
        received, error = _stream_body(client, url)
        assert isinstance(error, httpx.RemoteProtocolError)  # short body, then EOF
        assert received == GGUF[:1000]
    assert client.get(url).content == GGUF
    assert _cut_after(fake_hub) is None  # used up

    fake_hub.faults.cut_after = 10
    short = client.get(url, headers={"Range": "bytes=0-4"})
    assert short.content == GGUF[:5]
    assert _cut_after(fake_hub) == 10  # still armed
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(fake_hub.resolve_url(REPO, "config.json"))  # plain files are cut too


def test_wrong_bytes(fake_hub: FakeHub, repo: str, client: httpx.Client, tmp_path: Path) -> None:
    url = _cdn_url(fake_hub, client)
    fake_hub.faults.wrong_bytes = True
    body = client.get(url).content
    assert len(body) == len(GGUF)
    assert hashlib.sha256(body).hexdigest() != hashlib.sha256(GGUF).hexdigest()
    part = client.get(url, headers={"Range": "bytes=100-199"}).content
    assert len(part) == 100
    assert part != GGUF[100:200]

    source = tmp_path / "disk.gguf"
    source.write_bytes(GGUF)
    fake_hub.add_repo("acme/disk", {"m.gguf": source})
    disk = client.get(fake_hub.resolve_url("acme/disk", "m.gguf"), follow_redirects=True).content
    assert len(disk) == len(GGUF)
    assert disk != GGUF


def test_fail_status_sequence(fake_hub: FakeHub, repo: str, client: httpx.Client) -> None:
    fake_hub.faults.fail_status = [429, 503, 500]
    info_url = f"{fake_hub.url}/api/models/{REPO}"
    first = client.get(info_url)
    assert first.status_code == 429
    assert first.headers["Retry-After"] == "1"
    assert first.headers["RateLimit"] == '"api";r=0;t=1'
    second = client.head(fake_hub.resolve_url(REPO, "config.json"))
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "1"
    third = client.get(info_url)
    assert third.status_code == 500
    assert "X-Error-Message" in third.headers
    assert client.get(info_url).status_code == 200
    assert fake_hub.faults.fail_status == []


def test_throttling(fake_hub: FakeHub, client: httpx.Client) -> None:
    data = _payload(1_000_000, seed=4)
    fake_hub.add_repo("acme/slow", {"m.gguf": data})
    url = _cdn_url_for(fake_hub, client, "acme/slow", "m.gguf")
    fake_hub.faults.bytes_per_second = 2_000_000
    began = time.monotonic()
    body = client.get(url).content
    elapsed = time.monotonic() - began
    assert body == data
    # 1 MB at 2 MB/s: not faster than the throttle; the upper bound only catches a hang.
    assert 0.4 < elapsed < 30, elapsed


def _cdn_url_for(hub: FakeHub, client: httpx.Client, repo_id: str, path: str) -> str:
    head = client.head(hub.resolve_url(repo_id, path))
    return str(head.url.join(head.headers["Location"]))


def test_request_log(fake_hub: FakeHub, repo: str, client: httpx.Client) -> None:
    fake_hub.clear_requests()
    client.get(
        fake_hub.resolve_url(REPO, "config.json"),
        headers={"Range": "bytes=0-3", "Authorization": f"Bearer {TOKEN}"},
    )
    (record,) = fake_hub.requests
    assert record.method == "GET"
    assert record.path == f"/{REPO}/resolve/main/config.json"
    assert record.range == "bytes=0-3"
    assert record.authorization == f"Bearer {TOKEN}"
    assert record.header("RANGE") == "bytes=0-3"
    assert record.headers.get("Range") == record.headers["range"] == "bytes=0-3"
    assert "Authorization" in record.headers
    assert record.status == 206


def test_stop_closes_keepalive_connections() -> None:
    hub = FakeHub().start()
    hub.add_repo("acme/x", {"a.txt": b"abc"})
    with httpx.Client() as c:
        assert c.get(hub.resolve_url("acme/x", "a.txt")).content == b"abc"
        assert c.get(hub.resolve_url("acme/x", "a.txt")).content == b"abc"  # same connection
        before = [t for t in _fake_hub_threads() if str(hub.port) in t.name]
        assert len(before) == 2  # the server loop and the one keep-alive connection
        began = time.monotonic()
        hub.stop()
        assert time.monotonic() - began < 2
    assert len(hub.requests) == 2
    assert not any(t.is_alive() for t in before)


def test_script_serves_files(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(GGUF)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.fakehub", "--repo", f"acme/cli={source}"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client() as c:
            response = c.get(f"{url}/acme/cli/resolve/main/m.gguf", follow_redirects=True)
            assert response.content == GGUF
            assert c.get(f"{url}/api/models/acme/cli").json()["id"] == "acme/cli"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0


# --------------------------------------------------------------------------- throughput


def test_throughput_on_loopback(
    fake_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Printed, not asserted: how fast the fake serves a 256 MB file from disk."""
    size = 256 * 1024 * 1024
    source = tmp_path / "big.gguf"
    block = os.urandom(1 << 20)
    with source.open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    fake_hub.add_repo("acme/big", {"big.gguf": source})
    with httpx.Client(timeout=60) as client:
        url = _cdn_url_for(fake_hub, client, "acme/big", "big.gguf")
        began = time.monotonic()
        received = 0
        with client.stream("GET", url) as response:
            for chunk in response.iter_raw(1 << 20):
                received += len(chunk)
        httpx_rate = size / (time.monotonic() - began) / 1e6
    assert received == size
    lines = [f"fake hub throughput, 256 MB from disk: httpx streaming {httpx_rate:.0f} MB/s"]
    curl = shutil.which("curl")
    if curl is not None:
        began = time.monotonic()
        subprocess.run(
            [curl, "-s", "-f", "-o", os.devnull, "--noproxy", "*", url], check=True, timeout=120
        )
        lines.append(f"curl {size / (time.monotonic() - began) / 1e6:.0f} MB/s")
    with capsys.disabled():
        print("\n" + ", ".join(lines))
