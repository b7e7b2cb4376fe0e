"""The documents API end to end on real policy texts: upload every format, follow the
background indexing, search with exact citations, re-ingest, delete, tenant isolation
and refused input. Embeddings come from the real MiniLM model, in this process."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from civitas_ray.config import get_settings
from civitas_ray.storage import get_storage, tenant_key
from tests.unit.test_chunking import make_pdf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def dc_code(data_dir: Path, n: int | None = None) -> bytes:
    lines = (data_dir / "policy" / "dc_code_title9.jsonl").read_text().splitlines()
    return ("\n".join(lines[:n] if n else lines) + "\n").encode()


async def wait_ready(client: httpx.AsyncClient, headers: dict[str, str], doc_id: str,
                     timeout_s: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen = set()
    while time.monotonic() < deadline:
        r = await client.get(f"/api/v1/documents/{doc_id}", headers=headers)
        assert r.status_code == 200, r.text
        doc = r.json()
        seen.add(doc["status"])
        assert 0.0 <= doc["progress"] <= 1.0
        if doc["status"] in ("ready", "failed"):
            doc["seen"] = seen
            return doc
        await asyncio.sleep(0.2)
    raise AssertionError(f"document {doc_id} was not indexed in {timeout_s} s")


async def upload(client: httpx.AsyncClient, headers: dict[str, str], body: bytes,
                 content_type: str, **params: Any) -> dict[str, Any]:
    r = await client.post("/api/v1/documents", headers={**headers, "Content-Type": content_type},
                          params=params, content=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/documents/{r.json()['id']}"
    return r.json()


async def chunk_rows(admin_sql, doc_id: str) -> list[Any]:
    return await admin_sql("select ordinal, section_id, section_title, text, char_start, "
                           "char_end, embedding is not null as embedded, tenant_id "
                           "from document_chunk where document_id = $1 order by ordinal",
                           uuid.UUID(doc_id))


async def assert_citations_exact(client: httpx.AsyncClient, headers: dict[str, str],
                                 admin_sql, doc_id: str) -> str:
    """Every chunk in the database is the exact span of the served source text."""
    r = await client.get(f"/api/v1/documents/{doc_id}/source", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    source = r.text
    rows = await chunk_rows(admin_sql, doc_id)
    assert rows
    for row in rows:
        assert source[row["char_start"]:row["char_end"]] == row["text"]
        assert row["embedded"]
    return source


async def test_upload_every_format_with_exact_citations(client: httpx.AsyncClient, make_tenant,
                                                       admin_sql, data_dir: Path) -> None:
    t = await make_tenant(roles=["analyst", "viewer"])
    h = t.headers("analyst")
    md_path = data_dir / "policy" / "gtfs_spec" / "gtfs-realtime_spec_en_trip-updates.md"
    pdf = make_pdf([["Snow emergency routes are cleared first.",
                     "Parking is banned on them during a declared emergency."],
                    ["Salt domes hold 4000 tonnes for the winter season."]],
                   title="Winter Operations Plan")
    html = (b"<html><head><title>Tree Permits</title></head><body><h1>Street trees</h1>"
            b"<p>Removing a street tree needs a permit from the urban forestry division.</p>"
            b"<h2 id='fees'>Fees</h2><p>The permit fee is waived for dead trees.</p>"
            b"</body></html>")
    uploads = {
        "jsonl": await upload(client, h, dc_code(data_dir, 30), "application/jsonl",
                              title="DC Code Title 9 (first sections)", tags="law,dc"),
        "html": await upload(client, h, html, "text/html; charset=utf-8", tags="permits"),
        "pdf": await upload(client, h, pdf, "application/pdf"),
        "text": await upload(client, h, b"Hydrant flushing happens every April.\n\n"
                             b"Residents may see discoloured water for a few hours.",
                             "text/plain", title="Hydrant notice"),
    }
    r = await client.post("/api/v1/documents", headers=h, data={"tags": "gtfs, Transit"},
                          files={"file": (md_path.name, md_path.read_bytes(), "text/markdown")})
    assert r.status_code == 202, r.text
    uploads["markdown"] = r.json()
    for doc in uploads.values():
        assert doc["status"] == "ingesting" and doc["generation"] == 1

    ready = {k: await wait_ready(client, h, d["id"]) for k, d in uploads.items()}
    for kind, doc in ready.items():
        assert doc["status"] == "ready", (kind, doc)
        assert doc["progress"] == 1.0 and doc["chunks"] >= 1
    assert ready["markdown"]["tags"] == ["gtfs", "transit"]
    assert ready["markdown"]["filename"] == md_path.name
    assert ready["markdown"]["content_type"] == "text/markdown"
    assert ready["html"]["title"] == "Tree Permits"
    assert ready["pdf"]["title"] == "Winter Operations Plan"
    assert ready["jsonl"]["sections"] == 30

    sources = {k: await assert_citations_exact(client, t.headers("viewer"), admin_sql,
                                               d["id"]) for k, d in uploads.items()}
    rows = await chunk_rows(admin_sql, uploads["jsonl"]["id"])
    wanted = [json.loads(line)["id"] for line in dc_code(data_dir, 30).decode().splitlines()]
    assert sorted({r["section_id"] for r in rows}, key=wanted.index) == wanted
    pdf_rows = await chunk_rows(admin_sql, uploads["pdf"]["id"])
    assert {r["section_id"] for r in pdf_rows} == {"page-1", "page-2"}
    assert all(r["tenant_id"] == t.id for r in pdf_rows)
    md_rows = await chunk_rows(admin_sql, uploads["markdown"]["id"])
    assert {"stoptimeupdate", "tripdescriptor"} <= {r["section_id"] for r in md_rows}

    # Search: the hit cites the section the words come from, and the span is exact.
    for mode in ("hybrid", "vector", "text"):
        r = await client.get("/api/v1/search", headers=t.headers("viewer"),
                             params={"q": "salt domes winter tonnes", "mode": mode,
                                     "limit": 3})
        assert r.status_code == 200, r.text
        top = r.json()["items"][0]
        cite = top["citation"]
        assert top["document_id"] == uploads["pdf"]["id"], (mode, top)
        assert cite["section_id"] == "page-2" and cite["section_title"] == "Page 2"
        assert cite["title"] == "Winter Operations Plan"
        assert sources["pdf"][cite["char_start"]:cite["char_end"]] == top["text"]
        assert cite["url"] == (f"/api/v1/documents/{top['document_id']}/source"
                               f"#chars={cite['char_start']}-{cite['char_end']}")
        src = await client.get(cite["url"].split("#")[0], headers=t.headers("viewer"))
        assert src.text[cite["char_start"]:cite["char_end"]] == top["text"]

    # The original file, through a signed storage URL.
    r = await client.get(f"/api/v1/documents/{uploads['pdf']['id']}/source",
                         params={"original": "true"}, headers=t.headers("viewer"))
    assert r.status_code == 307
    r = await client.get(r.headers["location"])
    assert r.status_code == 200 and r.content == pdf

    # Filters: tags (any / all), document ids, dates.
    async def hit_docs(**params: Any) -> set[str]:
        r = await client.get("/api/v1/search", headers=h, params={"limit": 50, **params})
        assert r.status_code == 200, r.text
        return {i["document_id"] for i in r.json()["items"]}

    everywhere = await hit_docs(q="permit street tree trip update law")
    assert len(everywhere) >= 3
    assert await hit_docs(q="permit street tree", tags="permits") == {uploads["html"]["id"]}
    assert await hit_docs(q="mayor streets", tags="law,permits") <= {
        uploads["jsonl"]["id"], uploads["html"]["id"]}
    assert await hit_docs(q="mayor streets", tags="law,permits", tags_match="all") == set()
    assert await hit_docs(q="mayor streets", tags="law,dc", tags_match="all") == {
        uploads["jsonl"]["id"]}
    assert await hit_docs(q="water", document_id=uploads["text"]["id"]) == {
        uploads["text"]["id"]}
    assert await hit_docs(q="water", created_after="2100-01-01T00:00:00Z") == set()
    assert await hit_docs(q="water", created_before="2000-01-01T00:00:00Z") == set()

    r = await client.get("/api/v1/documents", headers=t.headers("viewer"),
                         params={"tags": "transit"})
    assert [d["id"] for d in r.json()["items"]] == [uploads["markdown"]["id"]]
    r = await client.post("/api/v1/documents", headers={**t.headers("viewer"),
                          "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 403


async def test_full_dc_code_search_finds_sections_by_meaning(client: httpx.AsyncClient,
                                                             make_tenant, admin_sql,
                                                             data_dir: Path) -> None:
    """All 441 sections; queries derived from the data find their own section."""
    t = await make_tenant(roles=["analyst"])
    h = t.headers("analyst")
    doc = await upload(client, h, dc_code(data_dir), "application/x-ndjson",
                       title="DC Code Title 9")
    done = await wait_ready(client, h, doc["id"], timeout_s=480)
    assert done["status"] == "ready" and done["sections"] == 441
    source = await assert_citations_exact(client, h, admin_sql, doc["id"])
    assert len(source) == done["chars"]
    rows = [json.loads(line) for line in dc_code(data_dir).decode().splitlines()]
    # Sections with distinctive titles: the title as the query finds that section.
    probes = [r for r in rows if len(r["title"]) > 30 and "repealed" not in r["title"].lower()
              ][::40][:6]
    assert len(probes) >= 5
    for mode in ("hybrid", "vector", "text"):
        found = 0
        for row in probes:
            r = await client.get("/api/v1/search", headers=h,
                                 params={"q": row["title"], "mode": mode, "limit": 5})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            found += any(i["citation"]["section_id"] == row["id"] for i in items)
            for i in items:
                c = i["citation"]
                assert source[c["char_start"]:c["char_end"]] == i["text"]
        assert found >= len(probes) - 1, (mode, found)


async def test_reingest_replaces_chunks_and_files(client: httpx.AsyncClient, make_tenant,
                                                  admin_sql) -> None:
    t = await make_tenant(roles=["analyst"])
    h = t.headers("analyst")
    v1 = b"# Leaf collection\n\nCrews collect leaves from the curb every Tuesday in autumn.\n"
    doc = await upload(client, h, v1, "text/markdown", tags="sanitation")
    assert (await wait_ready(client, h, doc["id"]))["status"] == "ready"
    old = await chunk_rows(admin_sql, doc["id"])

    v2 = (b"# Leaf collection\n\nLeaf vacuum trucks visit each block twice in November.\n\n"
          b"## Bagged leaves\n\nPaper bags go out on Monday evening.\n")
    r = await client.put(f"/api/v1/documents/{doc['id']}", headers={
        **h, "Content-Type": "text/markdown"}, content=v2)
    assert r.status_code == 202, r.text
    assert r.json()["generation"] == 2 and r.json()["status"] == "ingesting"
    assert r.json()["tags"] == ["sanitation"]  # kept: none given
    done = await wait_ready(client, h, doc["id"])
    assert done["status"] == "ready" and done["generation"] == 2
    source = await assert_citations_exact(client, h, admin_sql, doc["id"])
    new = await chunk_rows(admin_sql, doc["id"])
    assert [r["ordinal"] for r in new] == list(range(len(new)))
    assert {r["section_id"] for r in new} == {"leaf-collection", "bagged-leaves"}
    assert not {r["text"] for r in old} & {r["text"] for r in new}
    assert "Tuesday" not in source and "November" in source
    [count] = await admin_sql("select count(*) from document_chunk where document_id = $1",
                              uuid.UUID(doc["id"]))
    assert count[0] == len(new)
    r = await client.get("/api/v1/search", headers=h, params={"q": "Tuesday curb",
                                                               "mode": "text"})
    assert r.json()["items"] == []
    keys = [o.key for o in await get_storage().list(
        tenant_key(t.id, "documents", doc["id"]) + "/")]
    assert keys and all("/v2/" in k for k in keys), keys
    r = await client.put(f"/api/v1/documents/{uuid.uuid4()}", headers={
        **h, "Content-Type": "text/plain"}, content=b"x")
    assert r.status_code == 404


async def test_delete_leaves_no_chunks_or_files(client: httpx.AsyncClient, make_tenant,
                                                admin_sql) -> None:
    t = await make_tenant(roles=["analyst", "viewer"])
    h = t.headers("analyst")
    doc = await upload(client, h, b"Bulk trash pickup needs an appointment.", "text/plain")
    assert (await wait_ready(client, h, doc["id"]))["status"] == "ready"
    assert await chunk_rows(admin_sql, doc["id"])
    r = await client.delete(f"/api/v1/documents/{doc['id']}", headers=t.headers("viewer"))
    assert r.status_code == 403
    r = await client.delete(f"/api/v1/documents/{doc['id']}", headers=h)
    assert r.status_code == 204
    assert await chunk_rows(admin_sql, doc["id"]) == []
    assert await admin_sql("select 1 from document where id = $1", uuid.UUID(doc["id"])) == []
    assert await get_storage().list(tenant_key(t.id, "documents", doc["id"]) + "/") == []
    assert (await client.get(f"/api/v1/documents/{doc['id']}", headers=h)).status_code == 404
    r = await client.get("/api/v1/search", headers=h, params={"q": "bulk trash appointment"})
    assert r.json()["items"] == []
    audit = await admin_sql("select action from audit_log where target_id = $1 order by seq",
                            doc["id"])
    assert [a["action"] for a in audit] == ["document.upload", "document.delete"]


async def test_delete_during_indexing_leaves_nothing(client: httpx.AsyncClient, make_tenant,
                                                     admin_sql, data_dir: Path) -> None:
    t = await make_tenant(roles=["analyst"])
    h = t.headers("analyst")
    doc = await upload(client, h, dc_code(data_dir, 120), "application/jsonl")
    r = await client.delete(f"/api/v1/documents/{doc['id']}", headers=h)
    assert r.status_code == 204
    await asyncio.sleep(0)
    from civitas_ray.documents import indexing

    while indexing._tasks:  # the background run notices the delete and discards its work
        await asyncio.sleep(0.2)
    assert await chunk_rows(admin_sql, doc["id"]) == []
    assert await get_storage().list(tenant_key(t.id, "documents", doc["id"]) + "/") == []


async def test_tenant_isolation(client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    a = await make_tenant(roles=["analyst"])
    b = await make_tenant(roles=["analyst", "tenant_admin"])
    doc = await upload(client, a.headers("analyst"),
                       b"The snow emergency plan of tenant A lists forty priority routes.",
                       "text/plain", tags="snow")
    assert (await wait_ready(client, a.headers("analyst"), doc["id"]))["status"] == "ready"
    q = {"q": "snow emergency priority routes"}
    r = await client.get("/api/v1/search", headers=a.headers("analyst"), params=q)
    assert [i["document_id"] for i in r.json()["items"]] == [doc["id"]]
    for role in ("analyst", "tenant_admin"):
        hb = b.headers(role)
        for mode in ("hybrid", "vector", "text"):
            r = await client.get("/api/v1/search", headers=hb, params={**q, "mode": mode})
            assert r.status_code == 200 and r.json()["items"] == []
            r = await client.get("/api/v1/search", headers=hb,
                                 params={**q, "mode": mode, "document_id": doc["id"]})
            assert r.json()["items"] == []
        for path in ("", "/source"):
            r = await client.get(f"/api/v1/documents/{doc['id']}{path}", headers=hb)
            assert r.status_code == 404
        assert (await client.delete(f"/api/v1/documents/{doc['id']}",
                                    headers=hb)).status_code == 404
        r = await client.put(f"/api/v1/documents/{doc['id']}",
                             headers={**hb, "Content-Type": "text/plain"}, content=b"mine")
        assert r.status_code == 404
        assert (await client.get("/api/v1/documents", headers=hb)).json()["total"] == 0
    assert len(await chunk_rows(admin_sql, doc["id"])) == 1
    # The library function agents call applies the tenant even in a system session.
    from civitas_ray.db.session import tenant_session
    from civitas_ray.documents import search

    async with tenant_session(None, system=True) as s:
        assert await search.search(s, b.id, q["q"]) == []
        hits = await search.search(s, a.id, q["q"], mode="text")
    assert [str(h.document_id) for h in hits] == [doc["id"]]


async def test_bad_input_is_refused_with_nothing_kept(client: httpx.AsyncClient, make_tenant,
                                                      monkeypatch) -> None:
    t = await make_tenant(roles=["analyst"])
    h = t.headers("analyst")

    async def refused(body: bytes, content_type: str | None, status: int, **params: Any
                      ) -> dict[str, Any]:
        headers = {**h, **({"Content-Type": content_type} if content_type else {})}
        r = await client.post("/api/v1/documents", headers=headers, content=body,
                              params=params)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        return r.json()

    p = await refused(b"\x89PNG....", "image/png", 415)
    assert "not a supported document format" in p["detail"]
    await refused(b"abc", "application/octet-stream", 415, filename="minutes.docx")
    await refused(b'{"id": "1", "text": "ok"}\n{"id": 1.5}\n', "application/jsonl", 422)
    p = await refused(b'{"id": "1", "text": "ok"}\nnope\n', "application/jsonl", 422)
    assert p["errors"][0]["loc"] == ["body", "line", 2]
    await refused(b"not a pdf", "application/pdf", 422)
    await refused(b"", "text/plain", 422)
    await refused(b"fine", "text/plain", 422, tags="bad<tag>")
    await refused(b"fine", "text/plain", 422, title="x" * 600)
    r = await client.post("/api/v1/documents", headers=h, files={"other": ("a.txt", b"x")})
    assert r.status_code == 422, r.text
    monkeypatch.setattr(get_settings().documents, "max_upload_bytes", 1000)
    p = await refused(b"x" * 1001, "text/plain", 413)
    assert p["type"].endswith("/document-too-large")
    r = await client.post("/api/v1/documents", headers=h,
                          files={"file": ("big.txt", b"y" * 1001, "text/plain")})
    assert r.status_code == 413
    r = await client.get("/api/v1/search", headers=h, params={"q": "  "})
    assert r.status_code == 422
    r = await client.get("/api/v1/search", headers=h, params={"q": "x", "mode": "fuzzy"})
    assert r.status_code == 422
    # Nothing was kept: no document, no file.
    assert (await client.get("/api/v1/documents", headers=h)).json()["total"] == 0
    assert await get_storage().list(tenant_key(t.id, "documents") + "/") == []


async def test_without_the_ai_extra_uploads_answer_503(client: httpx.AsyncClient, make_tenant,
                                                       monkeypatch) -> None:
    from civitas_ray.ai import embedder

    t = await make_tenant(roles=["analyst"])
    h = t.headers("analyst")
    doc = await upload(client, h, b"Street sweeping on odd days.", "text/plain")
    assert (await wait_ready(client, h, doc["id"]))["status"] == "ready"
    monkeypatch.setattr(embedder, "available", lambda: False)
    r = await client.post("/api/v1/documents", headers={**h, "Content-Type": "text/plain"},
                          content=b"x")
    assert r.status_code == 503 and "civitas_ray[ai]" in r.json()["detail"]
    r = await client.get("/api/v1/search", headers=h, params={"q": "street sweeping"})
    assert r.status_code == 503
    r = await client.get("/api/v1/search", headers=h, params={"q": "street sweeping",
                                                               "mode": "text"})
    assert [i["document_id"] for i in r.json()["items"]] == [doc["id"]]


async def test_embedder_vectors_are_unit_and_batch_independent() -> None:
    import numpy as np

    from civitas_ray.ai.embedder import embed_texts, get_embedder

    texts = ["Snow plows clear priority routes first.",
             "Priority routes are plowed before side streets during snow.",
             "The library opens at nine on Saturdays."]
    batch = await embed_texts(texts)
    assert batch.dtype == np.float32 and batch.shape == (3, 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-4)
    one = await asyncio.to_thread(get_embedder().embed, texts[2:])
    assert np.allclose(one[0], batch[2], atol=1e-4)
    sims = batch @ batch.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]
    with pytest.raises(TypeError):
        get_embedder().embed("one string")  # type: ignore[arg-type]
