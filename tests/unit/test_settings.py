"""Daemon settings from TOML, environment and flags: precedence, and errors that name the
field and where its value came from. Pure logic; the daemons started from such files are
in tests/e2e/test_config_files.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dnnscaler.agents.cli import resolve_config as agent_config
from dnnscaler.agents.config import AgentConfig
from dnnscaler.cli import build_parser
from dnnscaler.config_cli import check
from dnnscaler.controller.cli import resolve_config as controller_config
from dnnscaler.controller.config import ControllerConfig
from dnnscaler.core.settings import ConfigError, flags_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deploy" / "config"


def write(tmp_path: Path, text: str, name: str = "c.toml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_the_shipped_examples_are_valid_and_say_every_key() -> None:
    ctl = controller_config(str(EXAMPLES / "controller.toml"), {})
    assert ctl.value.listen == "0.0.0.0:50051"
    assert ctl.value.state_path == "/var/lib/dnnscaler/controller.db"
    agent = agent_config(str(EXAMPLES / "agent.toml"), {})
    assert agent.value.backend == "triton"
    # Each example names every key (commented out where its default depends on the host),
    # so that a new setting cannot be added without documenting it there.
    for cls, name in ((ControllerConfig, "controller.toml"), (AgentConfig, "agent.toml")):
        text = (EXAMPLES / name).read_text()
        keys = set(re.findall(r"^#?\s*([a-z_]+) = ", text, flags=re.M))
        fields = set(cls.__dataclass_fields__)
        assert fields <= keys, f"{name} lacks {sorted(fields - keys)}"


def test_precedence_is_file_then_environment_then_flag(tmp_path: Path) -> None:
    path = write(tmp_path, '[controller]\nlisten = "127.0.0.1:7000"\ndefault_slo_ms = 40\n')
    r = controller_config(path, {})
    assert (r.value.listen, r.value.default_slo_ms) == ("127.0.0.1:7000", 40.0)
    assert r.origin["listen"] == f"file {path}"
    assert r.origin["report_interval_s"] == "default"
    r = controller_config(path, {"DNNSCALER_LISTEN": "127.0.0.1:7001"})
    assert r.value.listen == "127.0.0.1:7001"
    assert r.origin["listen"] == "environment DNNSCALER_LISTEN"
    r = controller_config(
        path, {"DNNSCALER_LISTEN": "127.0.0.1:7001"}, {"listen": "127.0.0.1:7002"}
    )
    assert r.value.listen == "127.0.0.1:7002"
    assert r.origin["listen"] == "flag --listen"
    assert r.value.default_slo_ms == 40.0  # untouched by the others


def test_flags_parse_into_the_same_settings() -> None:
    args = build_parser().parse_args(
        ["controller", "--policy", "aimd", "--stale-after-s", "9", "--state-path", "x.db"]
    )
    r = controller_config(None, {}, flags_of(args, ControllerConfig))
    assert (r.value.default_policy, r.value.stale_after_s, r.value.state_path) == (
        "aimd",
        9.0,
        "x.db",
    )
    assert r.origin["default_policy"] == "flag --policy"
    args = build_parser().parse_args(
        [
            "agent",
            "--sim-model",
            "a=imagenet/Mob-V1-025@10",
            "--sim-model",
            "b=imagenet/Mob-V1-025@5",
        ]
    )
    r = agent_config(None, {}, flags_of(args, AgentConfig))
    assert r.value.sim_models == ("a=imagenet/Mob-V1-025@10", "b=imagenet/Mob-V1-025@5")


def test_an_unset_state_path_goes_under_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    r = controller_config(None, {})
    assert r.value.state_path == str(tmp_path / "controller.db")
    assert r.origin["state_path"] == "$STATE_DIRECTORY"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert controller_config(None, {}).value.state_path == ":memory:"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("listen = 5", "listen", "must be a string, got the number 5"),
        ("default_slo_ms = -3", "default_slo_ms", "must be in [0.01, 3.6e+06] ms, got -3"),
        ("default_slo_ms = 1e308", "default_slo_ms", "got 1e+308"),
        ("default_slo_ms = nan", "default_slo_ms", "finite"),
        ("default_slo_ms = true", "default_slo_ms", "got the boolean true"),
        ("default_percentile = 100", "default_percentile", "must be in [50, 99.999], got 100"),
        ("metrics_port = 70000", "metrics_port", "0..65535"),
        ("metrics_port = 1.5", "metrics_port", "must be an integer"),
        ('default_policy = "fastest"', "default_policy", "unknown policy 'fastest'"),
        ("stale_after_s = 0.5", "stale_after_s", "larger than report_interval_s"),
        ("lisen = '127.0.0.1:1'", "lisen", "unknown key (did you mean 'listen'?); valid keys: "),
        ('listen = "' + "x" * 100_000 + '"', "listen", "expected HOST:PORT"),
    ],
)
def test_a_bad_controller_file_names_the_field_and_the_file(
    tmp_path: Path, body: str, field: str, words: str
) -> None:
    path = write(tmp_path, f"[controller]\n{body}\n")
    with pytest.raises(ConfigError) as e:
        controller_config(path, {})
    msg = str(e.value)
    assert e.value.field == field
    assert msg.startswith(f"{path} [controller]: {field}: "), msg
    assert words in msg
    assert len(msg) < 600, "an error message does not echo a huge input back"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ('backend = "torch"', "backend", "unknown backend 'torch'; valid: sim, triton"),
        ('controller = "nohost"', "controller", "expected HOST:PORT"),
        ('agent_id = "a\\tb"', "agent_id", "printable characters"),
        ("gpu_index = -1", "gpu_index", "must be >= 0"),
        ('sim_models = ["bad"]', "sim_models", "expected NAME=PROFILE@RPS"),
        ('sim_models = "a=b@1"', "sim_models", "must be an array of strings"),
        ('sim_models = ["a=nope@1"]', "sim_models", "unknown profile 'nope'"),
        ('sim_profiles = "/nonexistent.json"', "sim_profiles", "cannot read"),
        ('triton_metrics = "localhost:8002"', "triton_metrics", "http:// URL"),
    ],
)
def test_a_bad_agent_file_names_the_field_and_the_file(
    tmp_path: Path, body: str, field: str, words: str
) -> None:
    path = write(tmp_path, f"[agent]\n{body}\n")
    with pytest.raises(ConfigError) as e:
        agent_config(path, {})
    assert e.value.field == field
    assert str(e.value).startswith(f"{path} [agent]: {field}: "), str(e.value)
    assert words in str(e.value)


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "[controller]\ndefault_slo_ms = 40\n")
    with pytest.raises(ConfigError) as e:
        controller_config(path, {"DNNSCALER_DEFAULT_SLO_MS": "fast"})
    assert str(e.value) == (
        "environment DNNSCALER_DEFAULT_SLO_MS: default_slo_ms: must be a finite number, got 'fast'"
    )
    with pytest.raises(ConfigError) as e:
        controller_config(path, {"DNNSCALER_DEFAULT_SLO_MS": "0"})
    assert str(e.value).startswith("environment DNNSCALER_DEFAULT_SLO_MS: default_slo_ms:")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing.toml: file: not found"):
        controller_config(str(tmp_path / "missing.toml"), {})
    path = write(tmp_path, "[controller]\nlisten = \n")
    with pytest.raises(ConfigError, match=r"c.toml: file: is not valid TOML: .*line 2"):
        controller_config(path, {})
    path = write(tmp_path, 'controller = "x"\n')
    with pytest.raises(ConfigError, match=r"c.toml: controller: must be a table"):
        controller_config(path, {})


def test_check_validates_each_table_and_refuses_strangers(tmp_path: Path) -> None:
    both = (EXAMPLES / "controller.toml").read_text() + (EXAMPLES / "agent.toml").read_text()
    out = check(write(tmp_path, both), {})
    assert set(out) == {"controller", "agent"}
    with pytest.raises(ConfigError, match=r"contoller: unknown table"):
        check(write(tmp_path, "[contoller]\nlisten = '1:2'\n"), {})
    with pytest.raises(ConfigError, match=r"holds no \[controller\] or \[agent\] table"):
        check(write(tmp_path, ""), {})


def test_the_systemd_units_run_what_the_examples_configure(tmp_path: Path) -> None:
    """Each unit's ExecStart, pointed at the shipped example, parses and resolves."""
    for unit, table in (
        ("dnnscaler-controller.service", "controller"),
        ("dnnscaler-agent@.service", "agent"),
    ):
        text = (ROOT / "deploy" / "systemd" / unit).read_text()
        line = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, flags=re.M | re.S)
        assert line is not None
        argv = shlex.split(line.group(1).replace("\\\n", " ").replace("%i", "0"))
        argv = [a.replace("/etc/dnnscaler/", f"{EXAMPLES}/") for a in argv]
        assert argv[0].endswith("/dnnscaler")
        args = build_parser().parse_args(argv[1:])
        assert args.config == str(EXAMPLES / f"{table}.toml")
        resolve = controller_config if table == "controller" else agent_config
        cls = ControllerConfig if table == "controller" else AgentConfig
        resolve(args.config, {}, flags_of(args, cls))
