"""A real ComfyUI server subprocess (``main.py --cpu``) and a small client for it.

The server gets its own base directory (models/, input/, output/, user/, custom_nodes/ with this
pack and the test pack linked in), a free loopback port, and is always terminated by ``stop()``.
The client follows one prompt over the websocket (progress, errors), then reads /history.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .paths import ROOT, TEST_PACKS, comfy_root, comfy_site

STARTUP_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptFailed(AssertionError):
    """The server reported execution_error / execution_interrupted for a prompt."""


@dataclass
class PromptRun:
    prompt_id: str
    history: dict
    progress: list[tuple[int, int, str]] = field(default_factory=list)  # (value, max, node)
    executed: list[str] = field(default_factory=list)  # node ids, in order

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def images(self) -> list[dict]:
        """Every {filename, subfolder, type} in the outputs, in node-id order."""
        found = []
        for node_id in sorted(self.outputs, key=lambda k: (len(k), k)):
            found.extend(self.outputs[node_id].get("images", []))
        return found


class ComfyServer:
    def __init__(self, base: Path, port: int, proc: subprocess.Popen, log_path: Path):
        self.base, self.port, self.proc, self.log_path = base, port, proc, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.models_dir = base / "models"
        self.input_dir = base / "input"
        self.output_dir = base / "output"

    # ----- life cycle -----
    @classmethod
    def start(cls, base: Path, extra_args: list[str] | None = None) -> ComfyServer:
        base = Path(base)
        for sub in ("models", "input", "output", "user", "temp", "custom_nodes"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for name, target in (("ultrares", ROOT), ("ultrares_testing", TEST_PACKS / "ultrares_testing")):
            link = base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        port = free_port()
        log_path = base / "server.log"
        cmd = [
            sys.executable,
            str(comfy_root() / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(port),
            "--base-directory",
            str(base),
            "--use-pytorch-cross-attention",
            "--preview-method",
            "none",
            # its own database: ComfyUI's default lives in the shared tree, and a second server (another
            # test session) cannot lock it ("Failed to initialize database")
            "--database-url",
            f"sqlite:///{base / 'user' / 'comfyui.db'}",
            *(extra_args or []),
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        site = comfy_site(comfy_root())
        if site is not None:  # a non-default version's own frontend packages, in front of the venv's
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
        log = open(log_path, "w")
        proc = subprocess.Popen(cmd, cwd=str(comfy_root()), stdout=log, stderr=subprocess.STDOUT, env=env)
        server = cls(base, port, proc, log_path)
        server._wait_ready()
        return server

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with {self.proc.returncode} at start-up:\n{self.log_tail()}"
                )
            try:
                self.get_json("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {STARTUP_TIMEOUT_S}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # ----- HTTP -----
    def request(self, path: str, data: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
        body = json.dumps(data).encode() if data is not None else None
        req = urllib.request.Request(
            self.url + path, data=body, headers={"Content-Type": "application/json"} if body else {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def get_json(self, path: str, timeout: float = 30):
        status, body = self.request(path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def object_info(self, node_class: str | None = None) -> dict:
        info = self.get_json("/object_info" + (f"/{node_class}" if node_class else ""), timeout=120)
        return info[node_class] if node_class else info

    def post_prompt(self, prompt: dict, client_id: str | None = None) -> tuple[int, dict]:
        """POST /prompt; returns (HTTP status, JSON). A 400 carries error + node_errors."""
        status, body = self.request("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})
        return status, json.loads(body)

    def view(self, image: dict) -> bytes:
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        status, body = self.request(f"/view?{query}")
        if status != 200:
            raise RuntimeError(f"/view {query} -> {status}")
        return body

    def view_pil(self, image: dict):
        from PIL import Image

        return Image.open(io.BytesIO(self.view(image)))

    def interrupt(self) -> None:
        self.request("/interrupt", {})

    # ----- running a prompt -----
    def run_prompt(self, prompt: dict, timeout: float = 900) -> PromptRun:
        """Queue an API-format prompt, follow it over the websocket until it ends, return its
        history entry. Raises PromptFailed (with the server's message and node) on a 400, an
        execution_error or an interruption."""
        import websocket  # websocket-client

        client_id = uuid.uuid4().hex
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/ws?clientId={client_id}", timeout=timeout
        )
        try:
            status, answer = self.post_prompt(prompt, client_id)
            if status != 200:
                raise PromptFailed(f"prompt rejected ({status}): {json.dumps(answer, indent=1)[:4000]}")
            prompt_id = answer["prompt_id"]
            run = PromptRun(prompt_id, {})
            deadline = time.monotonic() + timeout
            while True:
                ws.settimeout(max(1.0, deadline - time.monotonic()))
                if time.monotonic() > deadline:
                    self.interrupt()
                    raise PromptFailed(
                        f"prompt {prompt_id} did not finish within {timeout}s\n{self.log_tail()}"
                    )
                raw = ws.recv()
                if isinstance(raw, bytes):  # preview frames
                    continue
                msg = json.loads(raw)
                kind, data = msg.get("type"), msg.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "progress":
                    run.progress.append((data["value"], data["max"], data.get("node")))
                elif kind == "executed":
                    run.executed.append(data["node"])
                elif kind == "execution_error":
                    raise PromptFailed(
                        f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                        f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                        + "".join(data.get("traceback", [])[-8:])
                    )
                elif kind == "execution_interrupted":
                    raise PromptFailed(f"prompt {prompt_id} was interrupted at node {data.get('node_id')}")
                elif kind == "executing" and data.get("node") is None:
                    break
                elif kind == "execution_success":
                    break
        finally:
            ws.close()
        # the history entry is stored just after the final websocket message: poll briefly
        deadline = time.monotonic() + 30
        while True:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if entry is None:
            raise PromptFailed(f"prompt {prompt_id} finished but never appeared in /history")
        run.history = entry
        return run
