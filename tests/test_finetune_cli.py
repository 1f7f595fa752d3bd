"""Fine-tuning and any torchvision model from `tp train`: a resnet18 state dict with its 1000-class, 3-channel
ImageNet layout trains on 1-channel digits with 10 classes, naming the re-initialised and adapted tensors once on the
console and in logs/train.log; weights of another architecture, a pickle, a torchvision name that does not exist or
builder arguments it refuses are one line, exit 2, nothing written."""
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from conftest import REPO, check_run_dir, data_overrides, run_tp

DIGITS = REPO / "config" / "digits.yaml"
LINE = ("pretrained weights r18-imagenet.safetensors: 120 of 122 tensors loaded; re-initialised: fc.weight, fc.bias; "
        "adapted to 1 input channel(s): conv1.weight")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(weights=None).state_dict(), d / "r18-imagenet.safetensors")
    save_file(torchvision.models.resnet34(weights=None).state_dict(), d / "r34-imagenet.safetensors")
    with open(d / "r18.safetensors.pkl", "wb") as f: pickle.dump({"fc.weight": torch.zeros(2)}, f)
    return d


def finetune(weights_file):
    return ["model.architecture=resnet18", "model.pretrained=true", f"model.pretrained_weights={weights_file}",
            "training.epochs=1", "validation.early_stopping.enabled=false"]


def test_resnet18_imagenet_weights_finetune_on_digits(prepared, weights, tmp_path):
    r = run_tp("train", "--config", DIGITS, *data_overrides(prepared("digits")), *finetune(weights / "r18-imagenet.safetensors"),
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (r.stdout + r.stderr).count(LINE) == 1, r.stdout + r.stderr
    run_dir = next((tmp_path / "runs" / "digits").iterdir())
    assert LINE in (run_dir / "logs" / "train.log").read_text()
    check_run_dir(run_dir)
    spec = (run_dir / "artifacts" / "model.json").read_text()
    assert '"architecture": "resnet18"' in spec


@pytest.mark.parametrize("file,message", [
    ("r34-imagenet.safetensors", "weights do not fit resnet18: 0 missing, 96 unexpected and 0 wrongly shaped tensor(s) outside the head"),
    ("r18.safetensors.pkl", "is a pickle, which is never loaded"),
])
def test_weights_that_do_not_fit_are_one_line_exit_2_nothing_written(prepared, weights, tmp_path, file, message):
    r = run_tp("train", "--config", DIGITS, *data_overrides(prepared("digits")), *finetune(weights / file), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "internal error" not in r.stderr and not (tmp_path / "runs").exists()


def test_torchvision_names_are_asked_from_torchvision(prepared, tmp_path):
    r = run_tp("config", "check", DIGITS, "model.architecture=vit_b_16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for command in (["config", "check", DIGITS], ["train", "--config", DIGITS, *data_overrides(prepared("digits"))]):
        r = run_tp(*command, "model.architecture=vit_b_61", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and "unknown architecture 'vit_b_61' (did you mean 'vit_b_16'?)" in lines[0] and "model.architecture" in lines[0], r.stderr
    # a torchvision builder that refuses its arguments, when `tp train` builds the model: still before any run directory
    r = run_tp("train", "--config", DIGITS, *data_overrides(prepared("digits")), "model.architecture=resnet18",
               "model.init_args={depth: 3}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "unexpected keyword argument 'depth'" in lines[0] and "model.architecture" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_config_check_imports_the_model(tmp_path):
    (tmp_path / "raising_nets.py").write_text("raise ImportError('needs CUDA 13')\n")
    (tmp_path / "fine_nets.py").write_text("import torch\nNet = torch.nn.Linear\n")
    for arch, message in [("raising_nets:Net", "importing raising_nets failed"), ("fine_nets:Nett", "did you mean 'Net'"),
                          ("no_such_nets:Net", "module 'no_such_nets' not found")]:
        r = run_tp("config", "check", DIGITS, f"model.architecture={arch}", cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and message in lines[0] and "model.architecture" in lines[0], r.stderr
    r = run_tp("config", "check", DIGITS, "model.architecture=fine_nets:Net", "model.init_args={in_features: 64, out_features: 10}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
