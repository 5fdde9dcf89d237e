"""log.trackers: each tracker receives the config, the metrics and the summary through its own
library, read back from its own local store (MLflow on SQLite, W&B offline files, trackio's local
database) and compared with the run's metrics.jsonl and summary.json."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from conftest import run_cli
from scaletrain.config.load import load_config
from scaletrain.train import trackers as trackers_module
from scaletrain.train.build import build_trainer

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("trackio")

RUN = ["train.threads=1", "train.max_steps=40", "log.every=10", "train.eval_every=20", "log.project=st-test"]


def _stores(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"),
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "TRACKIO_DIR": str(tmp_path / "trackio")}.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "wandb").mkdir()
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns: not in the checkout
    return uri


def _jsonl(run) -> tuple[dict[int, float], dict[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    val = {r["step"]: r["val_loss"] for r in records if r["split"] == "val"}
    return train, val


def _wandb_records(path):
    """The records of a W&B offline run file (.wandb): LevelDB's log format (32 KiB blocks of
    chunks with a 7-byte header) after W&B's 7-byte file header, each record a wandb protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk = 7, 32768, b""
    while pos < len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


@pytest.mark.slow  # ~20 s: three trackers' start-up in a subprocess
def test_mlflow_wandb_and_trackio_receive_config_metrics_and_summary(tmp_path, monkeypatch, cache_dir):
    uri = _stores(tmp_path, monkeypatch)
    run = tmp_path / "digits-run"
    code, out, err = run_cli("train", "mlp-digits", *RUN, "log.trackers=[tensorboard,mlflow,wandb,trackio]",
                             f"train.run_dir={run}", cwd=tmp_path, timeout=300)
    assert code == 0, err[-3000:]
    assert out.startswith("done: ") and "Trackio" not in out  # trackio prints: kept off stdout
    train, val = _jsonl(run)
    summary = json.loads((run / "summary.json").read_text())
    assert sorted(train) == [10, 20, 30, 40] and sorted(val) == [20, 40]
    ids = json.loads((run / "trackers.json").read_text())

    # MLflow: parameters from the config, every logged value by step, the summary, the run finished.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    mrun = client.get_run(ids["mlflow"])
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "digits-run"
    assert client.get_experiment(mrun.info.experiment_id).name == "st-test"
    assert mrun.data.params["optim.lr"] == "0.001" and mrun.data.params["model.name"] == "mlp"
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "train/loss")} == pytest.approx(train)
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "val/loss")} == pytest.approx(val)
    assert mrun.data.metrics["summary/val_accuracy"] == pytest.approx(summary["val_accuracy"])
    artifact = client.download_artifacts(ids["mlflow"], "summary.json", str(tmp_path))
    assert json.loads(open(artifact).read())["best_step"] == summary["best_step"]

    # W&B offline: the run's own file holds the config, the history and the summary.
    (wandb_file,) = (tmp_path / "wandb").glob(f"wandb/offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb")
    history, final, config, exit_code = {}, {}, {}, None
    for record in _wandb_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            final.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    assert config["optim"]["lr"] == 0.001 and config["train"]["max_steps"] == 40
    assert {s: r["train/loss"] for s, r in history.items()} == pytest.approx(train)
    assert {s: r["val/loss"] for s, r in history.items() if "val/loss" in r} == pytest.approx(val)
    assert final["val_loss"] == pytest.approx(summary["val_loss"]) and final["steps"] == 40
    assert exit_code == 0

    # trackio: its local database, read by trackio in a process that sees TRACKIO_DIR from the start.
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
            f"print(json.dumps([S.get_logs('st-test', {ids['trackio']!r}), S.get_run_config('st-test', {ids['trackio']!r})]))")
    proc = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, timeout=120, check=True)
    logs, tconfig = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tconfig["optim"]["lr"] == 0.001
    assert {r["step"]: r["train/loss"] for r in logs if "train/loss" in r} == pytest.approx(train)
    assert {r["step"]: r["val/loss"] for r in logs if "val/loss" in r} == pytest.approx(val)
    (last,) = [r for r in logs if "summary/val_loss" in r]
    assert last["summary/val_loss"] == pytest.approx(summary["val_loss"]) and last["step"] == 40


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch, fast):
    uri = _stores(tmp_path, monkeypatch)
    run = tmp_path / "run"
    common = [*fast, "log.trackers=[mlflow]", "log.project=resume", "train.eval_every=0",
              "train.checkpoint_every=20", "log.every=10", f"train.run_dir={run}"]
    build_trainer(load_config("mlp-digits", [*common, "train.max_steps=20"])).fit()
    first = json.loads((run / "trackers.json").read_text())["mlflow"]
    build_trainer(load_config("mlp-digits", [*common, "train.max_steps=40", "train.resume=auto"])).fit()
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == first
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    train, _ = _jsonl(run)
    assert {m.step: m.value for m in client.get_metric_history(first, "train/loss")} == pytest.approx(train)
    assert client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_experiment_by_name("resume").experiment_id])) == 1


def test_a_failing_tracker_is_dropped_with_one_warning(tmp_path, monkeypatch, fast):
    class Broken:
        def __init__(self, run_dir, **_):
            self.calls = 0

        def log(self, step, split, metrics):
            raise ConnectionError("the server went away\nmore detail")

        def finish(self, summary, step):
            raise AssertionError("never called: dropped at the first log")

    warnings = []

    class Keep(trackers_module.logging.Handler):
        def emit(self, record):
            if record.levelno >= trackers_module.logging.WARNING:
                warnings.append(record.getMessage())

    monkeypatch.setitem(trackers_module.KINDS, "wandb", Broken)
    logger = trackers_module.logging.getLogger("scaletrain")
    handler = Keep()
    logger.addHandler(handler)
    try:
        cfg = load_config("mlp-digits", [*fast, "log.trackers=[wandb]", "train.max_steps=20", "log.every=5",
                                         f"train.run_dir={tmp_path / 'run'}"])
        summary = build_trainer(cfg).fit()
    finally:
        logger.removeHandler(handler)
    assert summary["steps"] == 20
    assert warnings == ["warning: log.trackers=wandb failed to log (ConnectionError: the server went away); "
                        "the run goes on without it"]
