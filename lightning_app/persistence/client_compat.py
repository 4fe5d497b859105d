"""The few differences between the ``kaggle`` client generations this project supports (1.8.x and 2.x), in one place.

- ``dataset_status(ref, format="json(...)")`` (status and ``current_version_number``) exists only from 2.1.1; on
  older clients the same two kagglesdk requests are made here (GetDatasetStatus, GetDataset).
"""

from __future__ import annotations

from typing import Any


def dataset_state(api: Any, ref: str) -> dict[str, Any]:
    """``{"status", "version"}`` of ``owner/slug`` on a client whose ``dataset_status`` takes no ``format``."""
    status = str(api.dataset_status(ref)).lower()
    try:
        from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest
    except ImportError:  # a client without kagglesdk: the newest version is listed without a number
        return {"status": status, "version": None}
    if not hasattr(api, "build_kaggle_client"):  # kaggle 1.6's swagger client
        return {"status": status, "version": None}
    owner, slug = ref.split("/")[:2]
    request = ApiGetDatasetRequest()
    request.owner_slug = owner
    request.dataset_slug = slug
    with api.build_kaggle_client() as kaggle:
        response = kaggle.datasets.dataset_api_client.get_dataset(request)
    return {"status": status, "version": response.current_version_number or None}
