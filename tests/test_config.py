"""Config loading: YAML into the typed tree, dotted overrides, strict keys and types, CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_train_data import write_nyu_split
from train.config import ConfigError, TrainConfig, dump_config, load_config, validate
from train.losses import REAL_TERMS, LossConfig
from train.pseudo_labels import PseudoLabelConfig
from train.schema import load_yaml

ROOT = Path(__file__).resolve().parents[1]
PSEUDO_LABEL_CONFIGS = sorted((ROOT / "configs").glob("pseudo-labels*.yaml"))  # train.pseudo_labels settings
CONFIGS = sorted(set((ROOT / "configs").glob("*.yaml")) - set(PSEUDO_LABEL_CONFIGS))  # run configs


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_every_shipped_config_loads():
    assert {p.name for p in CONFIGS} >= {"ci.yaml", "synthetic.yaml", "selfsup.yaml", "selfsup-direct.yaml",
                                         "synthetic-cpu.yaml", "selfsup-cpu.yaml"}
    for path in CONFIGS:
        cfg = load_config(path)
        assert isinstance(cfg, TrainConfig)
    direct = load_config(ROOT / "configs/selfsup-direct.yaml")
    reference = [name for name, term in LossConfig().terms().items() if term.enabled]  # the opt-in ones stay off
    assert all(direct.loss.terms()[name].enabled for name in reference), "selfsup-direct.yaml turns every reference term on"
    for stage_1, stage_2 in (("synthetic.yaml", "selfsup.yaml"), ("synthetic-cpu.yaml", "selfsup-cpu.yaml")):
        first, second = load_config(ROOT / "configs" / stage_1), load_config(ROOT / "configs" / stage_2)
        assert second.model == first.model and second.crop == first.crop, "stage 2 starts from stage 1"
        assert first.data.real_batch == 0, f"{stage_1} trains on synthetic data alone (data.real: evaluation only)"
        enabled = [name for name in REAL_TERMS if second.loss.terms()[name].enabled]
        assert enabled == ["fitted"], f"{stage_2} trains the real frames on their fitted pseudo-labels alone (the route " \
                                      "BENCHMARKS.md measured working)"
    gpu = [load_config(ROOT / "configs" / name) for name in ("synthetic.yaml", "selfsup.yaml", "selfsup-direct.yaml")]
    assert all(cfg.synthesis.backend == "cuda" and cfg.optim.amp == "bf16" for cfg in gpu), "GPU configs: no fallback"


def test_the_pseudo_label_settings_load_through_the_same_strict_schema():
    assert PSEUDO_LABEL_CONFIGS
    for path in PSEUDO_LABEL_CONFIGS:
        assert isinstance(load_yaml(PseudoLabelConfig, path), PseudoLabelConfig)
    assert load_yaml(PseudoLabelConfig, ROOT / "configs/pseudo-labels.yaml") == PseudoLabelConfig()  # the defaults
    with pytest.raises(ConfigError, match="unknown config key 'stepz'.*'steps'"):
        load_yaml(PseudoLabelConfig, None, ["stepz=3"])
    with pytest.raises(ConfigError, match="collision.*>= 0"):
        load_yaml(PseudoLabelConfig, None, ["collision=-1"])


def test_every_shipped_config_validates_with_its_data(tmp_path):
    """validate() on each shipped config as its header says to launch it: data, prior file and all."""
    real, synthetic, prior = tmp_path / "nyu", tmp_path / "synth", tmp_path / "prior.pt"
    synthetic.mkdir()
    prior.write_bytes(b"")
    for path in CONFIGS:
        cfg = load_config(path)
        if cfg.data.real_batch > 0:
            if not real.exists():
                write_nyu_split(real / "train", size=cfg.crop.size, cube=cfg.crop.cube_mm, fitted=True)
                write_nyu_split(real / "test", size=cfg.crop.size, cube=cfg.crop.cube_mm)
            data = [f"data.real={real}"]
        else:
            data = []
        cfg = load_config(path, [*data, f"data.synthetic={synthetic}", f"loss.prior_path={prior}"])
        assert validate(cfg) is cfg, path.name
        assert cfg.data.has_synthetic and cfg.data.has_real == bool(data), path.name


def test_fitted_term_needs_shards_with_pseudo_labels(tmp_path):
    for split in ("train", "test"):
        write_nyu_split(tmp_path / "nyu" / split, size=64, cube=300.0)
    cfg = load_config(ROOT / "configs/selfsup-cpu.yaml", [f"data.real={tmp_path / 'nyu'}"])
    with pytest.raises(ConfigError, match=r"'loss.fitted.enabled'.*no fitted pseudo-labels.*train.pseudo_labels"):
        validate(cfg)
    assert validate(load_config(ROOT / "configs/selfsup-cpu.yaml", [f"data.real={tmp_path / 'nyu'}",
                                                                     "loss.fitted.enabled=false"]))


@pytest.mark.parametrize("key, allowed", [
    ("optim.amp", "'none', 'bf16', 'fp16'"), ("run.device", "'auto', 'cpu', 'cuda'"),
    ("synthesis.backend", "'auto', 'cuda', 'cpu', 'torch'"),
])
def test_choice_typo_fails_at_load_naming_key_and_choices(key, allowed, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=typo"])
    assert repr(key) in str(info.value) and allowed in str(info.value) and "'typo'" in str(info.value)
    section, name = key.split(".")
    path = tmp_path / "choice.yaml"
    path.write_text(yaml.safe_dump({section: {name: "Typo"}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert repr(key) in str(info.value) and allowed in str(info.value) and "choice.yaml" in str(info.value)


def test_yaml_and_overrides_apply_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {steps: 7}\noptim: {lr: 1}\nloss: {projection: {weight: 3}}\n")
    cfg = load_config(path, ["run.dir=007", "optim.decay_at=[0.5]", "loss.prior.enabled=false",
                             "data.real=null", "optim.grad_clip=2", "model.width=8",
                             "optim.weight_decay=3e-4"])
    assert cfg.run.steps == 7
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # ints widen to float
    assert cfg.loss.projection.weight == 3.0
    assert cfg.run.dir == "007"  # a string field keeps the text as typed
    assert cfg.optim.decay_at == [0.5]
    assert cfg.loss.prior.enabled is False
    assert cfg.data.real is None
    assert cfg.optim.grad_clip == 2.0
    assert cfg.model.width == 8
    assert cfg.optim.weight_decay == 3e-4  # YAML 1.1 reads 3e-4 as a string; the float field converts it


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs/ci.yaml", ["run.steps=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("override, key, suggestion", [
    ("data.synthtic=x", "data.synthtic", "data.synthetic"),
    ("loss.projection.wieght=1", "loss.projection.wieght", "loss.projection.weight"),
    ("optim.weight_decy=0", "optim.weight_decy", "optim.weight_decay"),
])
def test_unknown_override_names_key_and_suggests(override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert repr(key) in str(info.value) and repr(suggestion) in str(info.value)


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run:\n  stpes: 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'run.stpes'" in message and "'run.steps'" in message and "bad.yaml" in message


@pytest.mark.parametrize("override, key", [
    ("run.steps=ten", "run.steps"), ("optim.lr=fast", "optim.lr"), ("loss.prior.enabled=3", "loss.prior.enabled"),
    ("run.steps=1.5", "run.steps"), ("optim.decay_at=0.5", "optim.decay_at"), ("model.width=true", "model.width"),
])
def test_wrong_type_names_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert repr(key) in str(info.value)


def test_section_checks_become_config_errors():
    with pytest.raises(ConfigError, match="model.width"):
        load_config(None, ["model.width=7"])  # NetworkConfig's own check: width must be even


def test_validate_checks_data_and_choices(tmp_path):
    with pytest.raises(ConfigError, match="no training data"):
        validate(load_config(None))
    with pytest.raises(ConfigError, match="'data.synthetic'"):
        validate(load_config(None, [f"data.synthetic={tmp_path / 'missing'}"]))
    with pytest.raises(ConfigError, match="'optim.amp'"):  # a choice typo fails before validate
        load_config(None, [f"data.synthetic={tmp_path}", "optim.amp=fp8"])
    with pytest.raises(ConfigError, match="'run.steps': 0 must be >= 1"):
        validate(load_config(None, [f"data.synthetic={tmp_path}", "run.steps=0"]))
    assert validate(load_config(None, [f"data.synthetic={tmp_path}"])).data.has_synthetic


def test_cli_exits_nonzero_naming_misspelled_key():
    result = run_cli("--config", "configs/ci.yaml", "data.synthetc=/tmp/x")
    assert result.returncode != 0
    assert "'data.synthetc'" in result.stderr and "'data.synthetic'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_exits_nonzero_naming_wrong_type(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"run": {"steps": "many"}}))
    result = run_cli("--config", str(bad))
    assert result.returncode != 0 and "'run.steps'" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_requires_the_prior_file_and_a_test_split(tmp_path):
    real = tmp_path / "nyu"
    write_nyu_split(real / "train", size=64, cube=300.0)
    base = [f"data.real={real}", "loss.prior.enabled=true"]
    with pytest.raises(ConfigError, match="'data.real'.*no test/ split"):
        validate(load_config(None, base))
    write_nyu_split(real / "test", size=64, cube=300.0)
    with pytest.raises(ConfigError, match="'loss.prior_path' is required"):
        validate(load_config(None, base))
    with pytest.raises(ConfigError, match="'loss.prior_path'.*does not exist"):
        validate(load_config(None, [*base, f"loss.prior_path={tmp_path / 'prior.pt'}"]))
    (tmp_path / "prior.pt").write_bytes(b"")
    validate(load_config(None, [*base, f"loss.prior_path={tmp_path / 'prior.pt'}"]))
    validate(load_config(None, [f"data.real={real}", "loss.prior.enabled=false"]))


def test_validate_refuses_shards_of_another_crop_geometry(tmp_path):
    real = tmp_path / "nyu"
    write_nyu_split(real / "train", size=64, cube=300.0)
    write_nyu_split(real / "test", size=64, cube=250.0)
    with pytest.raises(ConfigError, match=r"'data.real'.*test were cut at 64 px / 250 mm"):
        validate(load_config(None, [f"data.real={real}", "loss.prior.enabled=false"]))
    with pytest.raises(ConfigError, match=r"test were cut at 64 px / 250 mm"):  # evaluating once at the start reads test/ too
        validate(load_config(None, [f"data.real={real}", "loss.prior.enabled=false", "eval.every=0"]))
    validate(load_config(None, [f"data.real={real}", "loss.prior.enabled=false", "eval.every=0",
                                "eval.at_start=false"]))
