"""The wheel installs one import root, ``llm_proxy``, and leaves a host app's own names alone.

A user who mounts the gateway in an existing ASGI app very often has a ``middleware`` or a
``plugins`` package of their own. This builds the wheel the way a release would (offline, with
this venv's setuptools), installs it into a fresh venv, and runs a host app with its own
``middleware`` and ``plugins`` packages that mounts the gateway and sends it requests.

The wheel is built from a copy of the project without its ``build/`` folder: setuptools packs
whatever it finds in ``build/lib``, so a module renamed since the last local build would
otherwise ship too (and a test run would write into the working tree).

The fresh venv gets the wheel and nothing else; the dependencies come from this venv's
site-packages through a ``.pth`` line. Such a line only adds the folder to ``sys.path``: the
``.pth`` files inside it (the editable install's finder among them) are not run, so
``llm_proxy`` can only come from the wheel, which the host app checks.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import CLIENT_KEY, gateway_config
from package_layout import ROOT, package_dirs, source_modules

pytestmark = pytest.mark.timeout(60)

EVERYWHERE = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ruff_cache", ".pytest_cache")
AT_ROOT = {".git", ".venv", "build", "data", "results"}  # local state, not source
GENERIC_NAMES = ("proxy", "middleware", "plugins")

HOST_APP = textwrap.dedent(
    '''
    """A host app with packages of its own named ``middleware`` and ``plugins``; the gateway sits under /llm."""

    import json
    import sys
    from pathlib import Path

    import middleware
    import plugins
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route
    from starlette.testclient import TestClient

    import llm_proxy
    import llm_proxy.middleware
    import llm_proxy.plugins
    from llm_proxy.app import create_app
    from llm_proxy.testing.mock_upstream import MockUpstream

    HOST = Path(__file__).resolve().parent


    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"{middleware.MARKER} {plugins.MARKER}")


    def build() -> Starlette:
        gateway = create_app("config.yaml")
        return Starlette(routes=[Route("/", home), Mount("/llm", app=gateway)],
                         lifespan=gateway.router.lifespan_context)


    def host_names() -> dict[str, object]:
        return {
            "markers": [sys.modules["middleware"].MARKER, sys.modules["plugins"].MARKER],
            "files": [sys.modules["middleware"].__file__, sys.modules["plugins"].__file__],
            "same": sys.modules["middleware"] is middleware and sys.modules["plugins"] is plugins,
        }


    def main() -> None:
        config, key = json.loads(sys.argv[1]), sys.argv[2]
        sources = [Path(folder) for folder in json.loads(sys.argv[3])]
        report: dict[str, object] = {"after_import": host_names()}
        with MockUpstream() as mock:
            for provider in config["providers"].values():
                provider["base_url"] = mock.base_url_v1
            (HOST / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
            app = build()
            report["after_build"] = host_names()
            auth = {"Authorization": f"Bearer {key}"}
            with TestClient(app) as client:
                chat = client.post("/llm/v1/chat/completions", headers=auth,
                                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
                report["replies"] = {
                    "home": [client.get("/").status_code, client.get("/").text],
                    "health": client.get("/llm/health").status_code,
                    "no_key": client.post("/llm/v1/chat/completions", json={"model": "gpt-4o"}).status_code,
                    "unknown_path": client.get("/llm/v1/nothing-here", headers=auth).status_code,
                    "chat": [chat.status_code, chat.json()["choices"][0]["message"]["content"]],
                }
            report["upstream_requests"] = len(mock.requests)
        report["after_requests"] = host_names()
        report["gateway_files"] = [llm_proxy.__file__, llm_proxy.middleware.__file__, llm_proxy.plugins.__file__]
        report["from_repo"] = sorted(
            name for name, module in list(sys.modules.items())
            if getattr(module, "__file__", None)
            and any(Path(module.__file__).resolve().is_relative_to(folder) for folder in sources)
        )
        print(json.dumps(report))


    if __name__ == "__main__":
        main()
    '''
)


def not_source(folder: str, names: list[str]) -> set[str]:
    skipped = set(EVERYWHERE(folder, names))
    return skipped | (AT_ROOT & set(names)) if Path(folder) == ROOT else skipped


def run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 45) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env,
                            timeout=timeout)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT, source, ignore=not_source, symlinks=True)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", tmp / "dist", source, env={**os.environ, "PIP_NO_INPUT": "1"})
    (built,) = (tmp / "dist").glob("llm_proxy-*.whl")
    return built


def test_wheel_holds_every_module_under_one_root(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
                for name, path in source_modules(package_dirs())}
    assert len(expected) > 50
    assert sorted(expected - names) == []
    shipped = {n for n in names if n.endswith(".py")}
    assert sorted(shipped - expected) == []  # nothing stale or from elsewhere
    assert {n.split("/")[0] for n in names} == {"llm_proxy", wheel.name.split("-py3")[0] + ".dist-info"}
    assert not {n.split("/")[0] for n in names} & set(GENERIC_NAMES)


def test_wheel_ships_the_catalog_and_the_console_script(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        models = whl.read("llm_proxy/data/models.json")
        info = next(n for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt"))
        entry_points = whl.read(info).decode()
        top_level = [n for n in whl.namelist() if n.endswith(".dist-info/top_level.txt")]
        tops = whl.read(top_level[0]).decode().split() if top_level else ["llm_proxy"]
    assert models == (ROOT / "proxy" / "data" / "models.json").read_bytes()
    assert json.loads(models)
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == {"llm-proxy": "llm_proxy.cli:main"}
    assert tops == ["llm_proxy"]


def _fresh_venv(base: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed; dependencies seen through a ``.pth`` line."""
    venv = base / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "zz_test_dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    probe = "import importlib.util as u; print(u.find_spec('starlette') is not None, u.find_spec('llm_proxy'))"
    seen = run(python, "-c", probe, cwd=base, env=clean_env()).stdout.split()
    assert seen == ["True", "None"], seen  # dependencies visible; the editable install's finder is not
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    return python


def clean_env() -> dict[str, str]:
    """The environment without what would point the child at this checkout or this venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "LLM_PROXY", "VIRTUAL_ENV"))}
    return {**env, "PYTHONNOUSERSITE": "1"}


def test_host_app_keeps_its_own_middleware_and_plugins(wheel: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path, wheel)
    host = tmp_path / "host"
    for name in ("middleware", "plugins"):
        (host / name).mkdir(parents=True)
        (host / name / "__init__.py").write_text(f'MARKER = "host {name}"\n')
    (host / "app.py").write_text(HOST_APP)
    env = clean_env()
    config = gateway_config("http://placeholder/v1", host / "gateway.db")

    sources = json.dumps([str(folder.resolve()) for folder in package_dirs().values()])
    result = run(python, "app.py", json.dumps(config), CLIENT_KEY, sources, cwd=host, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])

    own = {"markers": ["host middleware", "host plugins"], "same": True,
           "files": [str(host / "middleware" / "__init__.py"), str(host / "plugins" / "__init__.py")]}
    assert report["after_import"] == own
    assert report["after_build"] == own
    assert report["after_requests"] == own
    site = python.parents[1]
    assert all(Path(f).resolve().is_relative_to(site.resolve()) for f in report["gateway_files"]), report
    assert report["from_repo"] == []  # not one module from the working tree
    assert report["replies"] == {
        "home": [200, "host middleware host plugins"],
        "health": 200,
        "no_key": 401,
        "unknown_path": 404,
        "chat": [200, "Hello from the mock upstream."],
    }
    assert report["upstream_requests"] == 1

    cli = run(python.parent / "llm-proxy", "--help", cwd=host, env=env)
    assert "serve" in cli.stdout
