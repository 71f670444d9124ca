"""The GCS emulator the gs:// tests run (`python tests/gcs_emulator.py start --port=...`):
gcp-storage-emulator, with the two parts of the GCS API it leaves out and orbax needs.

Orbax's OCDBT checkpoints (and solar_jax's gs:// locks) create their manifest with `ifGenerationMatch=0` (create only if
absent) and update it with `ifGenerationMatch=<generation>`; GCS answers 412 when the
precondition fails, and the writers that raced retry. The emulator ignores preconditions,
so two writers both "win" and the checkpoint fails at random (seen as "Malformed
StorageGeneration" from tensorstore). Here insert checks them first; the emulator serves one
request at a time, so the check and the write cannot interleave. And a download carries the
object's generation in `x-goog-generation`, as GCS's does: tensorstore takes a read's
generation from it (without it, the conditional write after a read is malformed).
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_insert = objects.insert


def insert(request, response, storage, *args, **kwargs):
    match = request.query.get("ifGenerationMatch")
    # The object's name: in the query (media, resumable), or in a multipart upload's JSON part
    # (gcsfs's small writes, e.g. a lock created only if absent).
    name = request.query["name"][0] if "name" in request.query else None
    if name is None and request.query.get("uploadType") == ["multipart"]:
        name = (request.data or {}).get("meta", {}).get("name")
    if match and "upload_id" not in request.query and name:
        try:
            current = str(storage.get_file_obj(request.params["bucket_name"], name)["generation"])
        except NotFound:
            current = "0"
        if current != match[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except NotFound:
        pass  # the emulator's own download answers 404
    return _download(request, response, storage, *args, **kwargs)


objects.download = download  # objects.get calls it by its module name
objects.insert = insert  # before the server module builds its routing table

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
