"""The fake Kaggle server answers the real ``kaggle`` client (in this process and in child processes)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import requests

from lightning_app.persistence.kaggle.client import dataset_state as _status

REF = "fake-user/test-dataset"


def _folder(root: Path, name: str, files: dict[str, bytes], ref: str = REF) -> Path:
    folder = root / name
    folder.mkdir()
    for file_name, data in files.items():
        (folder / file_name).write_bytes(data)
    metadata = {"title": "Test dataset", "id": ref, "licenses": [{"name": "CC0-1.0"}]}
    (folder / "dataset-metadata.json").write_text(json.dumps(metadata))
    return folder


def _listing(api, ref: str) -> dict[str, int]:
    return {f.name: f.total_bytes for f in api.dataset_list_files(ref).files}


def test_create_version_list_and_download(api, fake_kaggle, tmp_path):
    first = {"model.ckpt": os.urandom(3000), "manifest.json": b"{}", "empty.txt": b""}
    response = api.dataset_create_new(_folder(tmp_path, "v1", first), public=False, quiet=True, dir_mode="skip")
    assert response.status == "ok" and not response.error
    dataset = fake_kaggle.datasets[REF]
    assert dataset.is_private and dataset.title == "Test dataset" and dataset.license_name == "CC0-1.0"

    second = {"other.ckpt": b"x" * 10, "manifest.json": b'{"a": 1}'}
    response = api.dataset_create_version(_folder(tmp_path, "v2", second), version_notes="two", quiet=True)
    assert response.status == "ok"
    assert api.dataset_status(REF) == "ready"

    versions = fake_kaggle.versions(REF)
    assert [v.files for v in versions] == [first, second]  # exactly the uploaded files, metadata never
    assert versions[1].notes == "two"
    assert _listing(api, REF) == {n: len(d) for n, d in second.items()}
    assert _listing(api, f"{REF}/1") == {n: len(d) for n, d in first.items()}

    api.dataset_download_files(f"{REF}/1", path=str(tmp_path / "dl"), unzip=False, force=True, quiet=True)
    with zipfile.ZipFile(tmp_path / "dl" / "test-dataset.zip") as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == first
    assert _status(api, REF) == {"status": "ready", "version": 2}  # 2.x: format="json"; 1.8: client_compat


def test_listing_pages_and_missing_things(api, tmp_path):
    files = {f"f{i:02d}.bin": bytes([i]) * i for i in range(25)}  # the client asks for 20 per page
    api.dataset_create_new(_folder(tmp_path, "many", files), public=False, quiet=True)
    pages = [api.dataset_list_files(REF), api.dataset_list_files(REF, page_token="20")]
    assert [len(p.files) for p in pages] == [20, 5] and pages[0].next_page_token == "20"
    for call in (lambda: api.dataset_status("fake-user/nothing-here"), lambda: api.dataset_list_files(f"{REF}/9")):
        with pytest.raises(requests.HTTPError) as caught:
            call()
        assert caught.value.response.status_code == 404


def test_credentials_are_checked(api, fake_kaggle, tmp_path, monkeypatch):
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    fake_kaggle.refuse_credentials()
    with pytest.raises(requests.HTTPError) as caught:
        api.dataset_status(REF)
    assert caught.value.response.status_code == 401
    fake_kaggle.refuse_credentials(False)
    monkeypatch.setenv("KAGGLE_KEY", "not-the-right-key")
    from kaggle.api.kaggle_api_extended import KaggleApi

    wrong = KaggleApi()
    wrong.authenticate()
    with pytest.raises(requests.HTTPError) as caught:
        wrong.dataset_status(REF)
    assert caught.value.response.status_code == 401


def test_access_token_is_introspected_and_sent_as_bearer(api, fake_kaggle, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.setenv("KAGGLE_API_TOKEN", fake_kaggle.token)
    from kaggle.api.kaggle_api_extended import KaggleApi

    client = KaggleApi()
    client.authenticate()
    assert client.get_config_value("username") == fake_kaggle.username
    with pytest.raises(requests.HTTPError):
        client.dataset_status(REF)  # 404: authenticated, nothing there
    assert fake_kaggle.calls("IntrospectToken") and fake_kaggle.calls("GetDatasetStatus")[-1].has_auth


@pytest.mark.parametrize("status", [500, 429, 403])
def test_fail_next(api, fake_kaggle, status):
    fake_kaggle.fail_next(1, status=status, methods="GetDatasetStatus")
    with pytest.raises(requests.HTTPError) as caught:
        api.dataset_status(REF)
    assert caught.value.response.status_code == status
    with pytest.raises(requests.HTTPError) as caught:
        api.dataset_status(REF)
    assert caught.value.response.status_code == 404  # the fault was used up


def test_drop_and_hang(api, fake_kaggle):
    fake_kaggle.drop_next(1, methods=["GetDatasetStatus"])
    with pytest.raises(requests.ConnectionError):
        api.dataset_status(REF)
    fake_kaggle.hang_next(1)
    threading.Timer(0.3, fake_kaggle.release).start()
    start = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        api.dataset_status(REF)
    assert 0.25 < time.monotonic() - start < 10


def test_only_a_first_version_still_processing_blocks_a_new_version(api, fake_kaggle, tmp_path):
    fake_kaggle.processing_delay(2)
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    with pytest.raises(requests.HTTPError) as caught:
        api.dataset_create_version(_folder(tmp_path, "v2", {"b": b"2"}), version_notes="two", quiet=True)
    assert caught.value.response.status_code == 403
    assert [api.dataset_status(REF) for _ in range(3)] == ["blobs_received", "blobs_received", "ready"]
    api.dataset_create_version(_folder(tmp_path, "v2-again", {"b": b"2"}), version_notes="two", quiet=True)
    # A later version may be created while an earlier one still processes.
    api.dataset_create_version(_folder(tmp_path, "v3", {"c": b"3"}), version_notes="three", quiet=True)
    assert _status(api, REF) == {"status": "blobs_received", "version": 1}
    assert _listing(api, REF) == {"a": 1}  # the newest *processed* version
    assert [api.dataset_status(REF) for _ in range(2)] == ["blobs_received", "ready"]
    assert _listing(api, REF) == {"c": 1}


def test_a_new_version_lags_and_current_version_number_waits_for_processing(api, fake_kaggle, tmp_path):
    fake_kaggle.processing_delay(2)
    fake_kaggle.lag_new_versions(2)
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    assert _status(api, REF) == {"status": "blobs_received", "version": None}  # none processed yet
    assert api.dataset_status(REF) == "blobs_received"
    for _ in range(2):
        with pytest.raises(requests.HTTPError) as caught:
            api.dataset_list_files(f"{REF}/1")
        assert caught.value.response.status_code == 404
    assert _status(api, REF) == {"status": "ready", "version": 1}
    assert _listing(api, f"{REF}/1") == {"a": 1}


def test_processing_can_fail_after_an_ok_create(api, fake_kaggle, tmp_path):
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    fake_kaggle.fail_processing(1)
    response = api.dataset_create_version(_folder(tmp_path, "v2", {"b": b"2"}), version_notes="two", quiet=True)
    assert response.status == "ok" and not response.error
    assert _status(api, REF) == {"status": "failed", "version": 1}
    assert _listing(api, REF) == {"a": 1}


def test_delete_old_versions_keeps_only_the_new_one(api, fake_kaggle, tmp_path):
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    api.dataset_create_version(_folder(tmp_path, "v2", {"b": b"2"}), version_notes="two", quiet=True)
    api.dataset_create_version(
        _folder(tmp_path, "v3", {"c": b"3"}), version_notes="three", quiet=True, delete_old_versions=True
    )
    assert [v.number for v in fake_kaggle.versions(REF)] == [3]
    with pytest.raises(requests.HTTPError):
        api.dataset_list_files(f"{REF}/1")


def test_request_log_and_upload_accounting(api, fake_kaggle, tmp_path):
    api.dataset_create_new(_folder(tmp_path, "v1", {"a.bin": b"z" * 1234}), public=False, quiet=True)
    puts = fake_kaggle.calls("PUT")
    assert len(puts) == 1 and not puts[0].has_auth and puts[0].body_size == 1234
    assert all(r.has_auth for r in fake_kaggle.requests if r.rpc and r.rpc != "IntrospectToken")
    assert fake_kaggle.uploaded_bytes(REF) == {1: 1234} and fake_kaggle.total_uploaded == 1234


def test_resume_query_on_upload_url(fake_kaggle):
    token = fake_kaggle.state.rpc("StartBlobUpload", "fake-user", {"name": "x", "contentLength": 3}).body["token"]

    def put(data: bytes, content_range: str | None = None) -> int:
        request = urllib.request.Request(f"{fake_kaggle.url}/upload/{token}", data=data, method="PUT")
        if content_range:
            request.add_header("Content-Range", content_range)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert put(b"", "bytes */3") == 308
    assert put(b"abc") == 200
    assert put(b"", "bytes */3") == 200


def test_sitecustomize_points_child_processes_here(fake_kaggle, kaggle_env):
    code = (
        "from kaggle import api; import kagglesdk.kaggle_env as e;"
        "print(e._env_to_endpoint[e.KaggleEnv.LOCAL]); print(api.dataset_status('fake-user/some-dataset-x'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.splitlines()[0] == fake_kaggle.url
    assert "dataset not found" in result.stderr  # the fake answered (404)
    assert fake_kaggle.calls("GetDatasetStatus")


def test_zip_download_headers(api, fake_kaggle, tmp_path):
    api.dataset_create_new(_folder(tmp_path, "v1", {"a": b"1"}), public=False, quiet=True)
    response = requests.get(f"{fake_kaggle.url}/download/{REF}/1/test-dataset.zip", timeout=5)
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.headers["Last-Modified"].endswith("GMT")
    assert zipfile.ZipFile(io.BytesIO(response.content)).read("a") == b"1"


def test_one_file_of_a_version_arrives_as_it_is_or_wrapped(api, fake_kaggle, tmp_path):
    small, large = b"s" * 10, os.urandom(5000)
    api.dataset_create_new(_folder(tmp_path, "v1", {"small.txt": small, "model.ckpt": large}), public=False, quiet=True)
    api.dataset_create_version(_folder(tmp_path, "v2", {"small.txt": b"newer"}), version_notes="two", quiet=True)
    fake_kaggle.wrap_files_above(1000)
    dest = tmp_path / "dl"
    assert api.dataset_download_file(REF, "small.txt", path=str(dest), force=True, quiet=True)
    assert (dest / "small.txt").read_bytes() == b"newer"  # the newest version
    api.dataset_download_file(f"{REF}/1", "small.txt", path=str(dest), force=True, quiet=True)
    assert (dest / "small.txt").read_bytes() == small
    api.dataset_download_file(f"{REF}/1", "model.ckpt", path=str(dest), force=True, quiet=True)
    assert sorted(p.name for p in dest.iterdir()) == ["model.ckpt.zip", "small.txt"]  # named after the URL
    with zipfile.ZipFile(dest / "model.ckpt.zip") as archive:
        assert archive.namelist() == ["model.ckpt"] and archive.read("model.ckpt") == large
    sent = json.loads(fake_kaggle.calls("DownloadDataset")[-1].body)
    assert sent == {"ownerSlug": "fake-user", "datasetSlug": "test-dataset", "fileName": "model.ckpt"} | {
        "datasetVersionNumber": 1
    }
    with pytest.raises(requests.HTTPError) as caught:
        api.dataset_download_file(REF, "model.ckpt", path=str(dest), force=True, quiet=True)
    assert caught.value.response.status_code == 404  # not in the newest version


def test_downloads_resume_from_a_byte_and_can_be_cut_off(api, fake_kaggle, tmp_path):
    data = os.urandom(3000)
    api.dataset_create_new(_folder(tmp_path, "v1", {"a.bin": data}), public=False, quiet=True)
    url = f"{fake_kaggle.url}/download/{REF}/1/files/a.bin"
    whole = requests.get(url, timeout=5)
    assert whole.content == data and whole.headers["Accept-Ranges"] == "bytes"
    part = requests.get(url, headers={"Range": "bytes=1000-", "If-Range": whole.headers["ETag"]}, timeout=5)
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["Content-Range"] == "bytes 1000-2999/3000"
    changed = requests.get(url, headers={"Range": "bytes=1000-", "If-Range": '"another-object"'}, timeout=5)
    assert changed.status_code == 200 and changed.content == data
    assert requests.get(url, headers={"Range": "bytes=3000-"}, timeout=5).status_code == 416
    fake_kaggle.cut_next(1)
    with pytest.raises(requests.RequestException):
        requests.get(url, timeout=5).raise_for_status()
    assert requests.get(url, timeout=5).content == data
