"""The ``llm-proxy`` command, run as a real subprocess with a controlled environment.

Every subprocess gets a copy of the environment without LLM_PROXY__* overrides or *_API_KEY
variables, a temp config and database, and a timeout; a server is always killed in a finally.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "config.yaml"
SCRIPT = Path(sys.executable).parent / "llm-proxy"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llm_proxy.cli"]
SECRET = "sk-secret-upstream-xyz"
MASTER = "sk-cli-master-0123456789"
BINDING_WARNING = "binding 127.0.0.1 instead of"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LLM_PROXY__") and not k.endswith("_API_KEY")
        and k not in ("LLM_PROXY_CONFIG", "LLM_PROXY_MASTER_KEY")
    }
    env["LLM_PROXY__DATABASE__PATH"] = str(tmp_path / "llm_proxy.db")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def write_config(tmp_path: Path, raw: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def good_config(**server: Any) -> dict[str, Any]:
    return {
        "server": {"host": "0.0.0.0", "port": 8080, "log_level": "info", **server},
        "providers": {
            # nothing listens on port 1: a request there fails fast, without leaving the host
            "openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": "${OPENAI_API_KEY:-}", "models": ["gpt-4o"]},
            "local": {"base_url": "http://127.0.0.1:1/v1", "api_key_required": False, "models": ["llama3.2"]},
        },
        "aliases": {"gpt4": "gpt-4o"},
        "plugins": [{"name": "max_tokens_cap", "config": {"max_tokens": 1000}}],
    }


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(COMMAND + args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


class Server:
    """A ``llm-proxy serve`` subprocess; stdout and stderr are merged into ``output``."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.output = ""
        self.finished = False

    def wait_live(self, port: int, host: str = "127.0.0.1", timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(trust_env=False, timeout=1) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    self.finish()
                    pytest.fail(f"serve exited early with {self.proc.returncode}:\n{self.output}")
                try:
                    if client.get(f"http://{host}:{port}/health/live").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        pytest.fail(f"serve did not answer on {host}:{port}:\n{self.output}")

    def stop(self, sig: signal.Signals, timeout: float = 10) -> int:
        """Send ``sig`` and wait for the exit; fail (after killing) if it takes longer than ``timeout``."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.finish(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"serve did not exit within {timeout}s of {sig.name}:\n{self.output}")
        assert time.monotonic() - started < timeout
        return self.proc.returncode

    def finish(self, timeout: float = 10) -> None:
        if self.finished:
            return
        out, _ = self.proc.communicate(timeout=timeout)
        self.output = out or ""
        self.finished = True

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.finish(10)
        except subprocess.TimeoutExpired:
            pass


@contextmanager
def serving(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[Server]:
    proc = subprocess.Popen(
        COMMAND + ["serve", *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = Server(proc)
    try:
        yield server
    finally:
        server.kill()


def assert_clean_exit(server: Server, code: int, allowed: tuple[int, ...]) -> None:
    assert code in allowed, server.output
    assert "Traceback" not in server.output, server.output
    assert "Application shutdown complete" in server.output, server.output


# -- check-config -----------------------------------------------------------------------------


def test_check_config_good_config_prints_a_summary(tmp_path: Path) -> None:
    path = write_config(tmp_path, good_config())
    result = run_cli(["check-config", "--config", str(path)], clean_env(tmp_path, OPENAI_API_KEY=SECRET), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (
        "config OK: 2 provider(s), 2 enabled (openai, local), 2 model(s), 1 alias(es), 1 plugin(s)"
        in result.stdout
    )
    assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "llm_proxy.db").exists()  # checking never creates the database


def test_check_config_names_the_missing_key_of_a_disabled_provider(tmp_path: Path) -> None:
    path = write_config(tmp_path, good_config())
    result = run_cli(["check-config", "--config", str(path)], clean_env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 provider(s), 1 enabled (local)" in result.stdout
    assert "provider openai disabled: OPENAI_API_KEY is not set" in result.stderr


def test_check_config_bad_config_exits_2_and_prints_every_error(tmp_path: Path) -> None:
    raw = good_config(port="eighty", log_level="loud")
    raw["sevrer"] = {}
    raw["providers"]["openai"]["base_url"] = "ftp://api.openai.com/v1"
    raw["providers"]["openai"]["api_kee"] = "typo"
    raw["providers"]["openai"]["timeouts"] = {"read": 0}
    raw["providers"]["nourl"] = {"api_key": "${OPENAI_API_KEY}"}
    raw["aliases"] = {"a": "b", "b": "a"}
    raw["plugins"] = [{"name": "no_such_plugin"}]
    path = write_config(tmp_path, raw)
    result = run_cli(["check-config", "--config", str(path)], clean_env(tmp_path, OPENAI_API_KEY=SECRET), tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "invalid configuration" in result.stderr
    assert str(path) in result.stderr
    for path_prefix in (
        "sevrer: unknown key",
        "server.port: expected an integer",
        "server.log_level: expected one of",
        "providers.openai.api_kee: unknown key",
        "providers.openai.base_url: expected an http(s) URL",
        "providers.openai.timeouts.read: must be greater than 0",
        "providers.nourl.base_url: required",
        "aliases.a: cycle",
        "plugins[0].name: unknown plugin",
    ):
        assert path_prefix in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_check_config_yaml_syntax_error_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("server:\n  port: [8080\n", encoding="utf-8")
    result = run_cli(["check-config", "--config", str(path)], clean_env(tmp_path), tmp_path)
    assert result.returncode == 2
    assert "invalid YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    result = run_cli(["check-config", "--config", str(tmp_path / "absent.yaml")], clean_env(tmp_path), tmp_path)
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_check_config_reports_a_bad_env_override(tmp_path: Path) -> None:
    path = write_config(tmp_path, good_config())
    env = clean_env(tmp_path, LLM_PROXY__SERVER__PORT="not-a-port", LLM_PROXY__SERVER__PORT__X="1")
    result = run_cli(["check-config", "--config", str(path)], env, tmp_path)
    assert result.returncode == 2
    assert "LLM_PROXY__SERVER__PORT__X" in result.stderr


def test_check_config_shipped_config_and_default_path(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(SHIPPED.read_text(encoding="utf-8"), encoding="utf-8")
    result = run_cli(["check-config"], clean_env(tmp_path, OPENAI_API_KEY=SECRET), tmp_path)  # ./config.yaml
    assert result.returncode == 0, result.stderr
    assert "config OK: 9 provider(s), 1 enabled (openai)" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    # $LLM_PROXY_CONFIG names the file when --config is not given
    env = clean_env(tmp_path, LLM_PROXY_CONFIG=str(tmp_path / "elsewhere.yaml"))
    result = run_cli(["check-config"], env, tmp_path)
    assert result.returncode == 2
    assert "elsewhere.yaml" in result.stderr


# -- serve ------------------------------------------------------------------------------------


def test_serve_without_keys_binds_loopback_even_when_asked_for_all_interfaces(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, good_config())
    env = clean_env(tmp_path, OPENAI_API_KEY=SECRET)
    with serving(["--config", str(path), "--host", "0.0.0.0", "--port", str(port)], env, tmp_path) as server:
        server.wait_live(port)
        if sys.platform.startswith("linux"):  # 127.0.0.2 reaches a 0.0.0.0 listener, not a 127.0.0.1 one
            with pytest.raises(OSError), socket.create_connection(("127.0.0.2", port), timeout=2):
                pass
        with httpx.Client(trust_env=False, timeout=5) as client:
            health = client.get(f"http://127.0.0.1:{port}/health")
        assert health.status_code == 200
        assert health.json()["providers"]["openai"]["status"] == "enabled"
        assert SECRET not in health.text
        code = server.stop(signal.SIGINT)
    assert_clean_exit(server, code, (0,))
    assert BINDING_WARNING in server.output
    assert "instead of 0.0.0.0" in server.output
    assert f"listening on http://127.0.0.1:{port}" in server.output
    assert SECRET not in server.output


def test_serve_with_a_master_key_does_not_warn_and_leaks_no_upstream_key(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, good_config(log_level="debug"))
    env = clean_env(tmp_path, OPENAI_API_KEY=SECRET, LLM_PROXY__AUTH__MASTER_KEY=MASTER,
                    LLM_PROXY__SERVER__PORT=str(free_port()))  # --port wins over the env port
    with serving(["--config", str(path), "--host", "127.0.0.1", "--port", str(port)], env, tmp_path) as server:
        server.wait_live(port)
        with httpx.Client(trust_env=False, timeout=10) as client:
            unauthorized = client.get(f"http://127.0.0.1:{port}/v1/models")
            failed = client.post(  # the upstream is unreachable: the failure is logged, the key must not be
                f"http://127.0.0.1:{port}/v1/chat/completions",
                headers={"authorization": f"Bearer {MASTER}"},
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            )
        assert unauthorized.status_code == 401
        assert failed.status_code >= 500
        assert SECRET not in failed.text
        code = server.stop(signal.SIGTERM)
    assert_clean_exit(server, code, (0, -signal.SIGTERM))
    assert BINDING_WARNING not in server.output
    assert "no client keys configured" not in server.output
    assert f"listening on http://127.0.0.1:{port}" in server.output
    assert SECRET not in server.output
    assert MASTER not in server.output


def test_serve_takes_the_port_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, good_config(host="127.0.0.1", port=1))
    env = clean_env(tmp_path, LLM_PROXY__SERVER__PORT=str(port))
    with serving(["--config", str(path)], env, tmp_path) as server:
        server.wait_live(port)
        code = server.stop(signal.SIGTERM)
    assert_clean_exit(server, code, (0, -signal.SIGTERM))
    assert f"listening on http://127.0.0.1:{port}" in server.output
    assert BINDING_WARNING not in server.output  # already loopback: nothing to rebind
    assert (tmp_path / "llm_proxy.db").exists()  # LLM_PROXY__DATABASE__PATH was used


def test_serve_tells_h11_to_buffer_a_request_head_a_little_over_the_header_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``server.max_header_kb`` the app answers 431; h11 is only kept from buffering much more."""
    import uvicorn

    from llm_proxy.cli import main

    given: dict[str, Any] = {}
    real_init = uvicorn.Config.__init__

    def capture(self: uvicorn.Config, app: Any, **options: Any) -> None:
        given.update(options)
        real_init(self, app, **options)

    def started(self: uvicorn.Server, sockets: Any = None) -> None:  # serve nothing: only the options matter
        self.started = True

    monkeypatch.setattr(uvicorn.Config, "__init__", capture)
    monkeypatch.setattr(uvicorn.Server, "run", started)
    config = good_config(host="127.0.0.1", max_header_kb=8)
    config["database"] = {"path": str(tmp_path / "gw.db")}
    assert main(["serve", "--config", str(write_config(tmp_path, config))]) == 0
    assert 8 * 1024 < given["h11_max_incomplete_event_size"] <= 8 * 1024 + 32 * 1024


def test_serve_with_a_bad_config_exits_2_without_serving(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"server": {"port": "eighty"}, "bogus": 1})
    result = run_cli(["serve", "--config", str(path), "--port", str(free_port())], clean_env(tmp_path), tmp_path)
    assert result.returncode == 2
    assert "server.port: expected an integer" in result.stderr
    assert "bogus: unknown key" in result.stderr
