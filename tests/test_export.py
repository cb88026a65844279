"""The exported TorchScript file (engine.services.export), loaded where the project cannot be imported,
answers raw 105x105 Omniglot PNGs exactly as the Adapt page's engine path does."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from engine import cli
from engine.config import preset
from engine.eval.calibration import run_calibration
from engine.eval.checkpoints import load_model
from engine.services import adapt
from engine.services.task_files import read_task_classes
from engine.train.launch import start_run

TINY = dict(dataset="glyphs:classes=60,drawings=8,seed=1", steps=6, width=8, concept_dim=16, meta_batch=2,
            ext_batch=8, val_every=3, val_episodes=8, snapshot_every=3, checkpoint_every=6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for name, extra in (("protonet", {}), ("maml", dict(learner="maml", inner_steps=3)), ("matching", dict(learner="matching"))):
        trainer, run = start_run(preset("smoke").with_overrides(**TINY, **extra), str(root / name))
        trainer.run(run)
        out[name] = str(run.path)
    return out


@pytest.fixture(scope="module")
def omniglot(shared_dir, tmp_path_factory):
    """A support zip of 3 Omniglot characters (5 PNGs each, as class folders) and 30 query PNGs:
    other drawings of those characters and of 3 characters outside the task."""
    path = shared_dir / "data" / "omniglot" / "images_background_small2.zip"
    if not path.is_file():
        pytest.skip(f"{path} is not there")
    z = zipfile.ZipFile(path)
    names = sorted(n for n in z.namelist() if n.endswith(".png"))
    chars = sorted({n.rsplit("/", 1)[0] for n in names})
    of = {c: [n for n in names if n.startswith(c + "/")] for c in chars}
    support = tmp_path_factory.mktemp("support") / "support.zip"
    with zipfile.ZipFile(support, "w") as out:
        for c in chars[:3]:
            for n in of[c][:5]:
                out.writestr(f"{c.rsplit('/', 1)[1]}/{n.rsplit('/', 1)[1]}", z.read(n))
    queries = [n for c in chars[:3] for n in of[c][5:10]] + [n for c in chars[10:13] for n in of[c][:5]]
    return str(support), [(n.rsplit("/", 1)[1], z.read(n)) for n in queries]


FRESH = """
import sys, json, torch
try:
    import engine
    sys.exit("the project is importable")
except ImportError:
    pass
m = torch.jit.load(sys.argv[1])
x = torch.load(sys.argv[2])
probs = m(x)
rgb = m(x[..., None].expand(-1, -1, -1, 3).contiguous())
pixels = (m.prepare(x) * 255).round().to(torch.uint8)[:, 0]
print(json.dumps({"classes": list(m.classes), "unknown_below": m.unknown_below, "probs": probs.tolist(),
                  "predict": m.predict(x).tolist(), "rgb": rgb.tolist(), "shape": list(probs.shape),
                  "pixels": pixels.tolist()}))
"""


@pytest.mark.parametrize("learner", ["protonet", "maml", "matching"])
def test_exported_file_answers_as_the_app_does(runs, omniglot, learner, tmp_path, capsys):
    support, queries = omniglot
    out = tmp_path / "model.pt"
    assert cli.main(["export", runs[learner], "--support", support, "-o", str(out)]) == 0
    said = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert said["classes"] == ["character01", "character02", "character03"] and said["ece_after"] <= said["ece_before"]
    # the app's path: the same files uploaded on the Adapt page
    cfg, model, dev = load_model(runs[learner])
    cal = run_calibration(runs[learner])
    classes = [adapt.NewClass(c.name, c.support, []) for c in read_task_classes(support)]
    task = adapt.prepare_upload(cfg, classes, [adapt.Upload(n, d) for n, d in queries])
    app = adapt.classify(model, task, dev, calibration=cal)
    # the file, in a Python where the project cannot be imported, on the raw 105x105 PNGs
    raw = np.stack([np.asarray(Image.open(io.BytesIO(d)).convert("L")) for _, d in queries])
    assert raw.shape == (30, 105, 105)
    torch.save(torch.from_numpy(raw), tmp_path / "x.pt")
    script = tmp_path / "use.py"
    script.write_text(FRESH)
    done = subprocess.run([sys.executable, "-I", str(script), str(out), str(tmp_path / "x.pt")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["classes"] == task.class_names == ["character01", "character02", "character03"]
    assert got["shape"] == [30, 3]
    assert got["unknown_below"] == pytest.approx(cal.unknown_below)
    np.testing.assert_array_equal(np.asarray(got["pixels"], np.uint8), task.query[..., 0])  # Pillow's resize, flip
    np.testing.assert_allclose(np.asarray(got["probs"]), app["probs"], atol=1e-5)  # temperature applied
    np.testing.assert_allclose(np.asarray(got["rgb"]), app["probs"], atol=1e-5)  # (N, H, W, 3) too
    np.testing.assert_array_equal(got["predict"], np.where(app["unknown"], -1, app["pred"]))


def test_export_refuses_what_it_cannot_use(runs, tmp_path, capsys):
    (tmp_path / "one" / "a").mkdir(parents=True)
    Image.new("L", (20, 20), 255).save(tmp_path / "one" / "a" / "x.png")
    assert cli.main(["export", runs["protonet"], "--support", str(tmp_path / "one"), "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "class folder" in err[0]
    assert cli.main(["export", runs["protonet"], "--support", str(tmp_path / "one"), "-o", str(tmp_path / "m.zip")]) == 2
    assert ".pt" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 64)])
def test_the_files_preprocessing_is_the_apps_within_two_gray_levels(channels, size):
    """Colour, transparency and photos larger than the decoder's reduce step, prepared in TorchScript
    and by the app (engine.data.images.decode + engine.data.imageset.to_pixels)."""
    from engine.data.images import TASK_UPLOAD, decode
    from engine.data.imageset import to_pixels
    from engine.services.export import Exported

    m = torch.jit.script(Exported(torch.nn.Identity(), size, channels, False, 0, {"centres": torch.zeros(2, 2)},
                                  ["a", "b"], 1.0, 0.0))
    rng = np.random.default_rng(0)
    for h, w, c in ((105, 105, 1), (120, 90, 3), (48, 64, 4), (600, 800, 3)):
        coarse = (rng.random((h // 8 + 2, w // 8 + 2, c)) * 255).astype(np.uint8).squeeze()
        arr = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        png = io.BytesIO()
        Image.fromarray(arr).save(png, format="PNG")
        app = to_pixels(decode(png.getvalue(), TASK_UPLOAD, reduce_to=adapt.REDUCE_TO), channels, size)
        x = torch.from_numpy(np.array(arr if arr.ndim == 3 else arr[..., None]))[None]
        got = (m.prepare(x) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
        assert got.shape == app.shape
        assert np.abs(got.astype(int) - app.astype(int)).max() <= 2, (h, w, c)
