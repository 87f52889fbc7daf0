"""Every ``serve`` setting is checked once, when its :class:`ServeConfig` is made, before anything loads: a bad
port, images folder or limit fails in a moment with a message that names it, not after the encoder has loaded
(or never, for a port); ``serve`` hands the checked settings to the app and the server unchanged."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("fastapi")

from stitch.apps import cli  # noqa: E402
from stitch.apps.service import app as service  # noqa: E402
from stitch.apps.service.config import Limits, ServeConfig, check_port  # noqa: E402
from stitch.apps.service.server import HeaderTimeoutProtocol  # noqa: E402


@pytest.fixture
def nothing_loads(monkeypatch):
    """Make any model or data loading fail the test loudly (and record it)."""
    loads: list[str] = []

    def forbidden(*args, **kwargs):
        loads.append("build_app")
        raise AssertionError("build_app ran before the arguments were checked")

    def forbidden_load(*args, **kwargs):
        loads.append("api.load")
        raise AssertionError("data loaded before the arguments were checked")

    monkeypatch.setattr(service, "build_app", forbidden)
    monkeypatch.setattr("stitch.api.load", forbidden_load)
    return loads


@pytest.mark.parametrize("port", [99999, 65536, 0, -1, "8000", True, 8000.5])
def test_a_port_out_of_range_is_refused(tmp_path, port):
    with pytest.raises(ValueError, match="port must be 1-65535"):
        ServeConfig("run", "data.npz", tmp_path, port=port)


def test_the_port_range_is_inclusive():
    assert check_port(1) == 1 and check_port(65535) == 65535


def test_cli_serve_port_99999_is_a_clear_error(tmp_path, nothing_loads, capsys):
    argv = ["serve", "--run", "run", "--data", "data.npz", "--images", str(tmp_path), "--port", "99999"]
    assert cli.main(argv) == 2
    assert "port must be 1-65535" in capsys.readouterr().err
    assert nothing_loads == []


def test_cli_serve_negative_regather_is_a_clear_error(tmp_path, nothing_loads, capsys):
    argv = ["serve", "--run", "run", "--data", "data.npz", "--image-dir", str(tmp_path), "--regather-ms", "-5"]
    assert cli.main(argv) == 2
    assert "regather_ms must be a number of milliseconds >= 0, got -5.0" in capsys.readouterr().err
    assert nothing_loads == []


def test_cli_serve_zero_keep_alive_is_a_clear_error(tmp_path, nothing_loads, capsys):
    argv = ["serve", "--run", "run", "--data", "data.npz", "--image-dir", str(tmp_path), "--keep-alive", "0"]
    assert cli.main(argv) == 2
    assert "keep_alive_s must be a positive number of seconds, got 0.0" in capsys.readouterr().err
    assert nothing_loads == []


def images_cases(tmp_path):
    a_file = tmp_path / "pictures.txt"
    a_file.write_text("not a folder")
    return {"missing": (tmp_path / "no-such-folder", "does not exist"), "a file": (a_file, "not a directory")}


@pytest.mark.parametrize("case", ["missing", "a file"])
def test_a_bad_images_folder_is_refused_naming_it(tmp_path, case):
    path, why = images_cases(tmp_path)[case]
    with pytest.raises(ValueError, match=why) as err:
        ServeConfig("run", "data.npz", path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("case", ["missing", "a file"])
def test_cli_serve_bad_images_folder_is_a_clear_error(tmp_path, nothing_loads, capsys, case):
    path, why = images_cases(tmp_path)[case]
    assert cli.main(["serve", "--run", "run", "--data", "data.npz", "--image-dir", str(path)]) == 2
    assert why in capsys.readouterr().err and nothing_loads == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_body_bytes", 0),
        ("max_body_bytes", 1.5),
        ("body_timeout_s", 0),
        ("header_timeout_s", -1),
        ("keep_alive_s", 0),
        ("keep_alive_s", float("nan")),
        ("max_header_bytes", 100),
        ("max_query_chars", 0),
        ("max_k", True),
    ],
)
def test_nonsense_limits_are_refused(setting, value):
    with pytest.raises(ValueError, match=setting):
        Limits(**{setting: value})


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), True, "10"])
def test_a_nonsense_regather_wait_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="regather_ms"):
        ServeConfig("run", "data.npz", tmp_path, regather_ms=value)


def test_the_serve_config_is_frozen_and_keeps_its_settings_normalised(tmp_path):
    config = ServeConfig("runs/r1", "data.npz", tmp_path / ".", cors_origins=["https://A.example/", "*"])
    assert config.images_dir == tmp_path.resolve() and config.title == "r1"
    assert config.cors_origins == ("https://a.example", "*")
    assert ServeConfig("r", "d", tmp_path, cors_origins=None).cors_origins == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1
    with pytest.raises(ValueError, match="limits must be a Limits"):
        ServeConfig("r", "d", tmp_path, limits={"max_k": 10})


def test_the_cli_hands_serve_one_config_with_its_options_and_the_config_s_defaults(tmp_path, monkeypatch):
    seen: list[ServeConfig] = []
    monkeypatch.setattr(service, "serve", seen.append)
    base = ["serve", "--run", "runs/r", "--data", "d.npz", "--image-dir", str(tmp_path)]
    assert cli.main(base) == 0
    assert seen[-1] == ServeConfig("runs/r", "d.npz", tmp_path)  # nothing given: every default is the config's
    options = ["--split", "dev", "--index-dir", "idx", "--text-encoder", "minilm", "--text-precision", "bf16"]
    options += ["--host", "0.0.0.0", "--port", "8123", "--max-body-bytes", "5000", "--body-timeout", "3"]
    options += ["--header-timeout", "4", "--keep-alive", "2", "--regather-ms", "25"]
    options += ["--cors-origin", "https://example.org"]
    assert cli.main(base + options) == 0
    limits = Limits(max_body_bytes=5000, body_timeout_s=3, header_timeout_s=4, keep_alive_s=2)
    assert seen[-1] == ServeConfig(
        "runs/r", "d.npz", tmp_path, split="dev", index="idx", text_encoder="minilm", text_precision="bf16",
        host="0.0.0.0", port=8123, cors_origins=["https://example.org"], regather_ms=25, limits=limits,
    )  # fmt: skip


def test_serve_passes_its_config_to_the_app_and_the_server(tmp_path, monkeypatch):
    """What ``serve`` hands uvicorn: the guarded h11 protocol with its deadlines, and an app whose body cap
    and body deadline are the ones asked for."""
    import uvicorn

    from service_util import fake_app
    from stitch.apps.service.guard import BodyLimit

    built: dict = {}

    def fake_build(config):
        built["config_given"] = config
        limits = config.limits
        built["app"] = fake_app(
            images_dir=config.images_dir, max_body_bytes=limits.max_body_bytes, body_timeout_s=limits.body_timeout_s
        )
        return built["app"]

    class CapturingServer:
        def __init__(self, config):
            built["config"] = config

        def run(self):
            built["ran"] = True

    monkeypatch.setattr(service, "build_app", fake_build)
    monkeypatch.setattr(uvicorn, "Server", CapturingServer)
    import gc

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    limits = Limits(max_body_bytes=5000, body_timeout_s=3, header_timeout_s=4, keep_alive_s=2, max_header_bytes=8192)
    given = ServeConfig(
        "run", "data.npz", tmp_path, port=8123, cors_origins=["https://example.org"], regather_ms=25, limits=limits
    )
    service.serve(given)
    config = built["config"]
    assert built["config_given"] is given
    assert built["ran"] and config.port == 8123 and config.app is built["app"]
    assert issubclass(config.http, HeaderTimeoutProtocol) and config.http.header_timeout_s == 4
    assert config.timeout_keep_alive == 2 and config.h11_max_incomplete_event_size == 8192
    # the loaded models are frozen out of the garbage collector's reach before serving (no full-collection
    # pause walking them under load)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    guards = [m for m in built["app"].user_middleware if m.cls is BodyLimit]
    assert len(guards) == 1 and guards[0].kwargs == {"max_body_bytes": 5000, "body_timeout_s": 3}


def _serve_policy(env_policy: str | None, import_torch_first: bool = False) -> str:
    """What OMP_WAIT_POLICY ``stitch serve`` hands to OpenMP, in a fresh interpreter (torch not yet loaded)."""
    import os
    import subprocess
    import sys

    code = (
        ("import torch\n" if import_torch_first else "")
        + "import os, sys\n"
        + "import stitch.apps.service.app as app\n"
        + "seen = {}\n"
        + "app.serve = lambda *a, **k: seen.update(policy=os.environ.get('OMP_WAIT_POLICY'),"
        + " torch_before='torch' in sys.modules)\n"
        + "from stitch.apps.cli import main\n"
        + "main(['serve', '--run', 'r', '--data', 'd', '--image-dir', '.'])\n"
        + "print(seen['policy'], seen['torch_before'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_serve_lets_idle_openmp_threads_sleep_before_torch_loads():
    # spinning OpenMP threads took the cores the event loop needs: +14% loaded throughput without them
    assert _serve_policy(None) == "PASSIVE False"


def test_serve_keeps_the_users_own_openmp_wait_policy():
    assert _serve_policy("ACTIVE") == "ACTIVE False"


def test_serve_does_not_pretend_once_torch_is_loaded():
    assert _serve_policy(None, import_torch_first=True) == "None True"
