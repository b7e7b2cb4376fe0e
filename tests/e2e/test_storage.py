"""The storage interface, the same tests against both backends.

`local`: a temporary directory, its signed URLs served by the real FastAPI app under
uvicorn. `s3`: a real S3-compatible server (moto's standalone server, started here as a
subprocess on a free port), reached through boto3 like AWS or MinIO would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
import httpx
import pytest
import uvicorn

from civitas_ray.config import S3Settings, Settings, StorageSettings
from civitas_ray.storage import (
    InvalidKey,
    InvalidObject,
    LocalStorage,
    ObjectNotFound,
    ObjectTooLarge,
    S3Storage,
    Storage,
    StorageUnavailable,
    UrlSigner,
    build_storage,
    get_storage,
    tenant_key,
    tenant_prefix,
)
from civitas_ray.storage.router import storage_dep

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
PART = 5 * MIB  # S3's smallest part; the threshold and part size of these tests
SECRET = "storage-test-secret-" + uuid.uuid4().hex
S3_KEYS = {"access_key_id": "testing", "secret_access_key": "testing"}
_MOTO: dict[str, str] = {}  # the running server's URL, for `_raw_s3`
BAD_KEYS = ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a/", "./a", "a/./b",
            "a\\..\\b", "a\x00b", "a\nb", "", "x" * 1025]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's S3-compatible server in a subprocess, on a free port, until the module ends."""
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"moto server exited: {proc.stderr.read().decode()[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/moto-api/", timeout=1).status_code < 500:
                break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("moto server did not answer within 60 s")
        time.sleep(0.2)
    _MOTO["url"] = url
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


class _Current:
    storage: Storage | None = None


@pytest.fixture(scope="module")
async def files_server() -> AsyncIterator[tuple[str, _Current]]:
    """The real app (`create_app`) under uvicorn; /api/v1/files serves the test's storage."""
    from civitas_ray.api.app import create_app

    current = _Current()
    app = create_app()

    def the_storage() -> Storage:
        assert current.storage is not None
        return current.storage

    app.dependency_overrides[storage_dep] = the_storage
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None,
                                           access_log=False, log_level="warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the files server did not start"
    yield f"http://127.0.0.1:{port}", current
    server.should_exit = True
    await asyncio.wait_for(task, 15)
    sock.close()


def _settings(backend: str, tmp_path: Path, server_url: str, moto: str | None) -> StorageSettings:
    s3 = S3Settings()
    if moto:
        s3 = S3Settings(endpoint_url=moto, bucket="t-" + uuid.uuid4().hex[:20],
                        addressing_style="path", create_bucket=True, **S3_KEYS)
    return StorageSettings(backend=backend, local_dir=tmp_path / "store",
                           public_base_url=server_url, multipart_threshold_bytes=PART,
                           part_size_bytes=PART, chunk_size_bytes=256 * 1024, s3=s3)


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path,
                  files_server: tuple[str, _Current]) -> AsyncIterator[Storage]:
    server_url, current = files_server
    moto = request.getfixturevalue("moto_endpoint") if request.param == "s3" else None
    backend = build_storage(_settings(request.param, tmp_path, server_url, moto),
                            signing_secret=SECRET)
    current.storage = backend
    yield backend
    current.storage = None
    await backend.close()


def _raw_s3(storage: S3Storage) -> Any:
    """A separate boto3 client on the same server, to look at what really landed there."""
    return boto3.client("s3", endpoint_url=_MOTO["url"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _etag(storage: Storage, key: str) -> str:
    assert isinstance(storage, S3Storage)
    return str(_raw_s3(storage).head_object(Bucket=storage.bucket, Key=key)["ETag"]).strip('"')


def _leftovers(storage: Storage) -> list[Any]:
    """Writes in progress that were never finished: temp files, or open multipart uploads."""
    if isinstance(storage, LocalStorage):
        return sorted((storage.root / "tmp").iterdir())
    assert isinstance(storage, S3Storage)
    return list(_raw_s3(storage).list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []))


async def _chunks(data: bytes, size: int = MIB, fail_after: int | None = None
                  ) -> AsyncIterator[bytes]:
    for n, start in enumerate(range(0, len(data), size)):
        if fail_after is not None and n == fail_after:
            raise RuntimeError("the producer failed half way")
        await asyncio.sleep(0)
        yield data[start:start + size]


# -- round trips -------------------------------------------------------------------------

async def test_round_trip_with_content_type_and_metadata(storage: Storage) -> None:
    tenant = uuid.uuid4()
    key = tenant_key(tenant, "documents", "flood plan.txt")
    body = os.urandom(70_000) + "Überschwemmung".encode()
    stored = await storage.put(key, body, content_type="text/plain; charset=utf-8",
                               metadata={"source": "upload", "pages": "12"})
    assert (stored.key, stored.size) == (key, len(body))
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert await storage.get(key) == body
    chunks = [c async for c in storage.open(key)]
    assert b"".join(chunks) == body and len(chunks) == -(-len(body) // (256 * 1024))
    head = await storage.head(key)
    assert head is not None
    assert (head.size, head.sha256, head.content_type) == (len(body), stored.sha256,
                                                            "text/plain; charset=utf-8")
    assert head.metadata == {"source": "upload", "pages": "12"}
    assert storage.uri(key) == stored.uri == head.uri
    if isinstance(storage, LocalStorage):
        assert stored.uri.startswith("file:///")
        assert Path(unquote(urlparse(stored.uri).path)).read_bytes() == body
    else:
        assert stored.uri == f"s3://{storage.bucket}/{key}"
    # Replacing is whole: the new body and the new content type, nothing of the old.
    await storage.put(key, b"v2")
    assert await storage.get(key) == b"v2"
    head = await storage.head(key)
    assert head is not None and head.content_type == "text/plain" and head.metadata == {}
    assert _leftovers(storage) == []


async def test_streamed_upload_past_the_threshold_goes_up_in_parts(storage: Storage) -> None:
    body = os.urandom(2 * PART + 3 * MIB)  # three parts of 5, 5 and 3 MiB
    key = tenant_key(uuid.uuid4(), "models", "lgbm.bin")
    stored = await storage.put(key, _chunks(body), content_type="application/octet-stream")
    assert stored.size == len(body)
    assert stored.sha256 == hashlib.sha256(body).hexdigest()
    assert await storage.get(key) == body
    head = await storage.head(key)
    assert head is not None and head.sha256 == stored.sha256  # S3: from the object's tag
    small_key = tenant_key(uuid.uuid4(), "small.bin")
    small = os.urandom(PART - 1)
    await storage.put(small_key, _chunks(small))
    big_bytes_key = tenant_key(uuid.uuid4(), "big-bytes.bin")
    big_bytes = os.urandom(PART + 1)
    await storage.put(big_bytes_key, big_bytes)
    head = await storage.head(big_bytes_key)
    assert head is not None and head.sha256 == hashlib.sha256(big_bytes).hexdigest()
    if isinstance(storage, S3Storage):
        # A multipart object's ETag is "<md5 of part md5s>-<number of parts>".
        assert _etag(storage, key).endswith("-3")
        assert _etag(storage, big_bytes_key).endswith("-2")
        assert "-" not in _etag(storage, small_key)
    assert await storage.get(small_key) == small
    assert _leftovers(storage) == []


async def test_failed_streamed_upload_leaves_nothing_behind(storage: Storage) -> None:
    key = tenant_key(uuid.uuid4(), "exports", "backup.tar")
    fresh_key = tenant_key(uuid.uuid4(), "exports", "never.tar")
    await storage.put(key, b"previous version")
    body = os.urandom(3 * PART)
    for target in (key, fresh_key):
        with pytest.raises(RuntimeError, match="half way"):
            # 11 MiB sent (S3: two parts uploaded) before the producer fails.
            await storage.put(target, _chunks(body, fail_after=11))
    assert await storage.get(key) == b"previous version"
    assert await storage.head(fresh_key) is None
    assert _leftovers(storage) == []
    with pytest.raises(ObjectTooLarge):
        await storage.put(fresh_key, _chunks(body), max_bytes=PART + MIB)
    assert await storage.head(fresh_key) is None
    assert _leftovers(storage) == []


async def test_head_list_delete_and_delete_prefix(storage: Storage) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    keys_a = [tenant_key(a, "reports", "2024", "q1.csv"), tenant_key(a, "reports", "q2.csv"),
              tenant_key(a, "report.txt"), tenant_key(a, "zz", "deep", "er", "x.json")]
    key_b = tenant_key(b, "reports", "q1.csv")
    for n, k in enumerate([*keys_a, key_b]):
        await storage.put(k, b"x" * (n + 1))
    listed = await storage.list(tenant_prefix(a))
    assert [o.key for o in listed] == sorted(keys_a)
    assert [o.size for o in listed] == [keys_a.index(o.key) + 1 for o in listed]
    # A prefix is a string prefix, as in S3: "report" matches report.txt and reports/.
    assert {o.key for o in await storage.list(tenant_key(a, "report"))} == set(keys_a[:3])
    assert [o.key for o in await storage.list(tenant_key(a, "reports") + "/")] == sorted(
        keys_a[:2])
    assert await storage.list(tenant_key(a, "nothing-here") + "/") == []

    assert await storage.delete(keys_a[0]) is True
    assert await storage.delete(keys_a[0]) is False
    assert await storage.head(keys_a[0]) is None
    with pytest.raises(ObjectNotFound):
        await storage.get(keys_a[0])
    with pytest.raises(ObjectNotFound):
        [c async for c in storage.open(keys_a[0])]
    # Not an object, only a key prefix: nothing to delete.
    assert await storage.delete(tenant_key(a, "zz")) is False

    with pytest.raises(InvalidObject):
        await storage.delete_prefix("")
    assert await storage.delete_prefix(tenant_prefix(a)) == len(keys_a) - 1
    assert await storage.list(tenant_prefix(a)) == []
    assert [o.key for o in await storage.list(tenant_prefix(b))] == [key_b]
    assert await storage.get(key_b) == b"x" * 5
    assert await storage.delete_prefix(tenant_prefix(a)) == 0


@pytest.mark.parametrize("bad", BAD_KEYS)
async def test_bad_keys_are_refused_before_any_io(storage: Storage, bad: str,
                                                  tmp_path: Path) -> None:
    with pytest.raises(InvalidKey):
        await storage.put(bad, b"escaped")
    with pytest.raises(InvalidKey):
        await storage.put(bad, _chunks(b"escaped"))
    for call in (storage.get(bad), storage.head(bad), storage.delete(bad),
                 storage.signed_url(bad), storage.signed_url(bad, method="PUT")):
        with pytest.raises(InvalidKey):
            await call
    with pytest.raises(InvalidKey):
        storage.open(bad)
    with pytest.raises(InvalidKey):
        storage.uri(bad)
    assert await storage.list("") == []
    assert not [p for p in tmp_path.rglob("*") if "escape" in p.name]


async def test_bad_prefixes_and_tenant_keys_are_refused(storage: Storage) -> None:
    for prefix in ("../", "/abs", "a//", "a\\b"):
        with pytest.raises(InvalidKey):
            await storage.list(prefix)
        with pytest.raises(InvalidKey):
            await storage.delete_prefix(prefix)
    with pytest.raises(InvalidKey):
        tenant_key("not-a-uuid", "x")
    with pytest.raises(InvalidKey):
        tenant_key(uuid.uuid4(), "..", "other-tenant")
    with pytest.raises(InvalidKey):
        tenant_key(uuid.uuid4())
    tid = uuid.uuid4()
    assert tenant_key(str(tid), "a/b", "c.txt") == f"tenants/{tid}/a/b/c.txt"
    assert tenant_prefix(tid) == f"tenants/{tid}/"


async def test_bad_content_type_metadata_and_expiry_are_refused(storage: Storage) -> None:
    key = tenant_key(uuid.uuid4(), "doc.pdf")
    bad_puts: list[dict[str, Any]] = [
        {"content_type": "text/html\r\nX-Injected: 1"}, {"content_type": "nonsense"},
        {"metadata": {"Upper": "x"}}, {"metadata": {"sha256": "forged"}},
        {"metadata": {"note": "naïve"}}, {"metadata": {"big": "x" * 3000}},
    ]
    for kwargs in bad_puts:
        with pytest.raises(InvalidObject):
            await storage.put(key, b"%PDF-1.7", **kwargs)
    assert await storage.head(key) is None
    await storage.put(key, b"%PDF-1.7")
    head = await storage.head(key)
    assert head is not None and head.content_type == "application/pdf"  # guessed from the key
    for expires_s in (0, -5, 8 * 24 * 3600):
        with pytest.raises(InvalidObject):
            await storage.signed_url(key, expires_s=expires_s)
    with pytest.raises(InvalidObject):
        await storage.signed_url(key, method="DELETE")  # type: ignore[arg-type]


# -- signed URLs over real HTTP ----------------------------------------------------------

async def test_signed_get_and_put_urls_work_over_http(storage: Storage) -> None:
    key = tenant_key(uuid.uuid4(), "incidents", "photo 1.jpg")
    body = os.urandom(300_000)
    await storage.put(key, body, content_type="image/jpeg")
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(await storage.signed_url(key, expires_s=60))
        assert r.status_code == 200, r.text
        assert r.content == body
        assert r.headers["content-type"] == "image/jpeg"

        upload_key = tenant_key(uuid.uuid4(), "uploads", "report.csv")
        upload = b"zone,count\n" + b"".join(b"Z%d,%d\n" % (i, i * 7) for i in range(20_000))
        put_url = await storage.signed_url(upload_key, method="PUT", expires_s=60)
        r = await http.put(put_url, content=_chunks(upload, 64 * 1024),
                           headers={"Content-Type": "text/csv"})
        assert r.status_code in (200, 201), r.text
    assert await storage.get(upload_key) == upload
    head = await storage.head(upload_key)
    assert head is not None and head.size == len(upload)
    if isinstance(storage, LocalStorage):
        assert r.json()["sha256"] == hashlib.sha256(upload).hexdigest() == head.sha256
        assert head.content_type == "text/csv"


# Local backend only: our router checks these signatures. On S3 the object store checks
# its own presigned URLs (and moto's test server does not verify them at all).
@pytest.mark.parametrize("storage", ["local"], indirect=True)
async def test_tampered_or_expired_signatures_get_403_problem_json(storage: Storage) -> None:
    assert isinstance(storage, LocalStorage)
    key = tenant_key(uuid.uuid4(), "secret.txt")
    other = tenant_key(uuid.uuid4(), "other.txt")
    await storage.put(key, b"classified")
    await storage.put(other, b"also classified")
    good = await storage.signed_url(key, expires_s=60)
    base, query = good.split("?", 1)
    params = dict(p.split("=", 1) for p in query.split("&"))
    sig, expires = params["signature"], int(params["expires"])
    past = int(time.time()) - 5
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    root = base[: -len(key) - 1]
    attempts = {
        "tampered signature": f"{base}?expires={expires}&signature={flipped}",
        "later expiry, same signature": f"{base}?expires={expires + 3600}&signature={sig}",
        "another key, same signature": f"{root}/{other}?expires={expires}&signature={sig}",
        "expired": f"{base}?expires={past}&signature={storage.signer.sign('GET', key, past)}",
        "no signature": f"{base}?expires={expires}",
        "nothing": base,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        for what, url in attempts.items():
            r = await http.get(url)
            assert r.status_code == 403, (what, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json", what
            problem = r.json()
            assert problem["status"] == 403 and problem["type"].endswith("/bad-signature")
            assert b"classified" not in r.content
        r = await http.get(attempts["expired"])
        assert "expired" in r.json()["detail"]
        # A GET signature does not allow a PUT, and a refused PUT writes nothing.
        r = await http.put(good, content=b"overwritten")
        assert r.status_code == 403
        assert await storage.get(key) == b"classified"
        new_key = tenant_key(uuid.uuid4(), "new.txt")
        put_url = await storage.signed_url(new_key, method="PUT")
        r = await http.put(put_url.replace("signature=", "signature=x"), content=b"data")
        assert r.status_code == 403
        assert await storage.head(new_key) is None
        # Traversal through the URL is refused by the signature before it reaches a path.
        r = await http.get(f"{root}/..%2F..%2Fetc%2Fpasswd?expires={expires}&signature={sig}")
        assert r.status_code in (403, 404)
        assert b"root:" not in r.content
        # A signed URL for a key that was never written: 404, also problem+json.
        r = await http.get(await storage.signed_url(tenant_key(uuid.uuid4(), "gone.txt")))
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


async def test_local_storage_never_writes_outside_its_directory(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store", signer=UrlSigner(SECRET))
    outside = tmp_path / "outside"
    outside.mkdir()
    await storage.put("tenants/ok.txt", b"inside")
    # A symlink planted inside the store that points out of it is not followed.
    (storage.root / "objects" / "tenants" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKey):
        await storage.put("tenants/link/pwned.txt", b"escaped")
    with pytest.raises(InvalidKey):
        await storage.get("tenants/link/pwned.txt")
    assert list(outside.iterdir()) == []


async def test_get_storage_follows_settings_and_is_cached(tmp_path: Path,
                                                          moto_endpoint: str) -> None:
    local = Settings(storage=StorageSettings(local_dir="var/test-storage"))
    first = get_storage(local)
    assert first is get_storage(local)
    assert isinstance(first, LocalStorage)
    project = Path(__file__).resolve().parents[2]
    assert first.root == project / "var" / "test-storage"
    absolute = get_storage(Settings(storage=StorageSettings(local_dir=tmp_path / "abs")))
    assert isinstance(absolute, LocalStorage) and absolute.root == tmp_path / "abs"

    s3_settings = Settings(storage=StorageSettings(backend="s3", s3=S3Settings(
        endpoint_url=moto_endpoint, bucket="absent-" + uuid.uuid4().hex[:12],
        addressing_style="path", create_bucket=False, **S3_KEYS)))
    s3 = get_storage(s3_settings)
    assert isinstance(s3, S3Storage) and s3.uri("a/b") == f"s3://{s3.bucket}/a/b"
    with pytest.raises(StorageUnavailable, match="does not exist"):
        await s3.put("a/b", b"x")
    raw = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    assert s3.bucket not in {b["Name"] for b in raw.list_buckets()["Buckets"]}
