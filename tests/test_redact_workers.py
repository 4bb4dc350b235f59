"""A key is masked in a worker process too: an endpoint unpickled there registers its key.

Dask and Ray workers receive the run's endpoint pickled; pydantic runs no validator when a
model is unpickled, so the endpoint registers its key itself (``LLMEndpoint.__setstate__``).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import uuid

from pydantic import SecretStr

from prefect_fanout.llm.endpoints import LLMEndpoint

WORKER = """
import pickle, sys
from prefect_fanout.redact import redact
endpoint = pickle.loads(sys.stdin.buffer.read())
print(redact(sys.argv[1]))
"""


def test_a_worker_that_unpickles_an_endpoint_masks_its_key() -> None:
    key = f"sk-worker-{uuid.uuid4().hex}"
    endpoint = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr(key))
    echoed = f"upstream said: Authorization: Bearer {key}"
    done = subprocess.run(
        [sys.executable, "-c", WORKER, echoed],
        input=pickle.dumps(endpoint),
        capture_output=True,
        timeout=120,
        check=True,
    )
    shown = done.stdout.decode()
    assert key not in shown
    assert f"Bearer {key[:3]}****{key[-4:]}" in shown
