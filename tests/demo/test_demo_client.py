"""The demo app launched on a free port (in this process, ComfyUI in-process) and driven through
gradio_client: named endpoints, images back as PNG files, errors as messages without a stack trace,
two clients at once served one after the other by the queue, Cancel through the API."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import pytest
from demo_support import TEST_HDIT, hdit_registered, launched_demo
from PIL import Image

pytestmark = pytest.mark.server

EXAMPLES = Path(__file__).resolve().parents[2] / "demo" / "examples"


@pytest.fixture(scope="module")
def client(comfy, tmp_path_factory):
    from gradio_client import Client

    with hdit_registered(tmp_path_factory.mktemp("demo-models")), launched_demo() as (demo, url):
        yield Client(url, verbose=False), demo


@pytest.fixture(scope="module")
def src():
    from ultrares.demo import session

    return session.HDIT_PREFIX + TEST_HDIT


def test_named_endpoints(client):
    c, _ = client
    api = c.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("/generate", "/any_size", "/relay", "/linfusion", "/digit", "/invert", "/cancel_generate"):
        assert name in api, sorted(api)


def test_generate_returns_a_png(client, src):
    c, _ = client
    path, info, time_note = c.predict(src, "stars", "", 3, 7, 2.0, 3, "euler", "normal", api_name="/generate")
    img = Image.open(path)
    assert img.format == "PNG" and img.size == (3 * 256, 256)
    assert "3 x 64x64" in info and "seed 7" in info
    assert "Last run here" in time_note


def test_error_is_a_message_not_a_traceback(client, src):
    c, _ = client
    *_, message, _ = c.predict(
        src, "stars", "", 100, 64, "FSTD", 0, 16, 3, 0, 2.0, 1, False, api_name="/any_size"
    )
    assert message.startswith("**Not run:**") and "Width (px)=100 must be a multiple of 16" in message
    assert "Traceback" not in message and 'File "' not in message


def test_digit_through_the_api(client):
    from gradio_client import handle_file

    c, _ = client
    seen, token_map, decoded, info, _ = c.predict(
        handle_file(str(EXAMPLES / "sunflower.png")),
        None,
        None,
        64,
        "center_crop",
        "mean_color",
        api_name="/digit",
    )
    assert Image.open(token_map).size == Image.open(seen).size
    assert "4x4 tokens" in info


def test_two_clients_are_queued_not_crashed(client, src):
    from gradio_client import Client

    c, demo = client
    other = Client(c.src, verbose=False)
    jobs = [
        cl.submit(src, "circles", "", 4, seed, 2.0, 1, "euler", "normal", api_name="/generate")
        for cl, seed in ((c, 1), (other, 2))
    ]
    results = [job.result(timeout=300) for job in jobs]
    assert all(Image.open(path).size == (256, 256) for path, _, _ in results)
    assert results[0][1] != results[1][1]  # each got its own run (seed in the description)


def test_cancel_stops_a_running_job(client, src):
    c, _ = client
    # minutes of work: 100 steps of 1024 tiles, then the same untiled
    job = c.submit(src, "circles", "", 1024, 1024, "FSTD", 0, 16, 100, 0, 2.0, 1, True, api_name="/any_size")
    deadline = time.monotonic() + 120
    while not job.status().progress_data and time.monotonic() < deadline:  # sampling has started
        time.sleep(0.2)
    assert job.status().progress_data, "no progress reported by the sampling run"
    assert "Cancelled" in c.predict(api_name="/cancel_any_size")  # Cancel says so
    try:
        outputs = job.result(timeout=120)
    except concurrent.futures.CancelledError:  # the queue dropped the job; a crash is an AppError here
        outputs = None
    if outputs is not None:  # or the run stopped at its next step and said so in its status box
        assert "Cancelled" in outputs[3]
    # the sampling loop really stopped (the demo runs one job at a time, so a still-running
    # sampler would hold this one back for minutes, past the timeout)
    path, _, _ = c.submit(src, "circles", "", 2, 0, 2.0, 1, "euler", "normal", api_name="/generate").result(
        timeout=90
    )
    assert Image.open(path).size == (256, 256)
