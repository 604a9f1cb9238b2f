"""The results' one typed row and the pipeline's one order of stages: a row field misspelt or
missing fails loudly (it used to become a silent NaN column), and every command's selection
runs its stages in the pipeline's order."""

import math

import pytest

from bench import pipeline
from bench.gate import TOLERANCES
from bench.tables import ADDED_COLUMNS, RESULT_COLUMNS, ResultRow, results_frame
from vae_ref.gate_tensors import KINDS, kind_of

ROW = dict(
    backend="numba",
    device="cpu",
    precision="float32",
    latent_dim=20,
    batch_size=128,
    agreement="pass",
    dataset="mnist-5k",
    seed=0,
)


def test_a_stored_row_reads_back_and_a_new_column_takes_its_implied_value():
    row = ResultRow.from_record(ROW | {"samples_per_s": 1000.0})
    assert row.samples_per_s == 1000.0 and math.isnan(row.ms_per_step)
    old = {k: v for k, v in ROW.items() if k not in ADDED_COLUMNS}
    assert ResultRow.from_record(old).precision == "float32"
    assert list(results_frame([row]).columns) == list(RESULT_COLUMNS)


def test_a_misspelt_or_missing_field_fails_loudly():
    with pytest.raises(ValueError, match=r"unknown fields \['samples_per_sec'\]"):
        ResultRow.from_record(ROW | {"samples_per_sec": 1000.0})
    with pytest.raises(ValueError, match=r"missing fields \['agreement'\]"):
        ResultRow.from_record({k: v for k, v in ROW.items() if k != "agreement"})
    with pytest.raises(TypeError):
        ResultRow(**ROW, samples_per_sec=1.0)


def test_each_kind_of_gate_tensor_has_its_tolerance():
    assert set(TOLERANCES) == set(KINDS)
    assert [
        kind_of(t)
        for t in ("h", "loss.kl", "loss", "grad.enc.fc1.weight", "steps.loss", "steps.enc.fc1.bias")
    ] == ["intermediate", "loss", "loss", "gradient", "steps.loss", "steps.param"]


class Recorder:
    """Stands in for the stages: records the order they are called in."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(
            pipeline,
            "gate",
            lambda backends, cases, log: self.called(
                "gate", {b.name: pipeline.GateRecord(b.name, "pass", 0.1) for b in backends}
            ),
        )
        monkeypatch.setattr(pipeline, "measure", lambda *a, **k: self.called("time", []))
        monkeypatch.setattr(
            pipeline, "train_backend", lambda *a, **k: self.called("train", "result")
        )
        monkeypatch.setattr(pipeline, "evaluate", lambda *a, **k: self.called("evaluate", "scores"))

    def called(self, stage, value):
        self.calls.append(stage)
        return value


class Named:
    name, device = "stand-in", "cpu"


@pytest.mark.parametrize(
    "stages",
    [pipeline.STAGES, tuple(reversed(pipeline.STAGES)), ("time", "gate"), ("evaluate", "train")],
)
def test_a_selection_runs_its_stages_in_the_pipelines_order(monkeypatch, stages):
    import types

    recorder = Recorder(monkeypatch)
    data = types.SimpleNamespace(name="d", train_x=None, test_x=None)
    from vae_ref import VAEConfig

    pipeline.execute(
        pipeline.Selection(stages=stages, batch_sizes=(8, 16)),
        [Named()],
        config=VAEConfig(latent_dim=2),
        cases=lambda *_: [],
        data=data,
    )
    expected = [s for s in pipeline.STAGES for _ in range(2 if s == "time" else 1) if s in stages]
    assert recorder.calls == expected


def test_a_selection_that_cannot_be_run_is_refused():
    with pytest.raises(ValueError, match="evaluate needs train"):
        pipeline.Selection(stages=("evaluate",))
    with pytest.raises(ValueError, match="unknown stages"):
        pipeline.Selection(stages=("gate", "timing"))


def test_the_cost_of_reduced_precision_is_each_row_minus_its_float32_twin():
    from bench.tables import precision_cost

    def trained(backend, precision, z, elbo, iwae):
        return ResultRow(
            **ROW | dict(backend=backend, precision=precision, latent_dim=z),
            final_test_elbo=elbo,
            test_iwae=iwae,
            epochs=50,
        )

    table = results_frame(
        [
            trained("numba", "float32", 2, -170.0, -168.0),
            trained("numba-bf16", "bf16", 2, -170.5, -168.1),
            trained("numba", "float32", 20, -121.0, -116.0),
            trained("numba-bf16", "bf16", 20, -120.0, -115.5),
            trained("jax-bf16", "bf16", 20, -121.0, -116.0),
        ]
    )  # no twin here
    cost = precision_cost(table)
    assert list(zip(cost.backend, cost.twin, cost.latent_dim)) == [
        ("numba-bf16", "numba", 2),
        ("numba-bf16", "numba", 20),
    ]
    assert cost.elbo_difference.tolist() == pytest.approx([-0.5, 1.0])
    assert cost.iwae_difference.tolist() == pytest.approx([-0.1, 0.5])
    assert precision_cost(table[table.precision == "float32"]).empty


def test_a_reduced_precision_slower_than_its_float32_twin_is_named_in_the_summary():
    """Issue 42: numba-bf16 timed at 0.73x numba on an AMD Zen 4 was only a WARNING in a
    profile. Now the run's summary says it, per row, and says nothing where bf16 gains."""
    from bench.tables import slower_than_twin, slower_than_twin_warning

    def timed(backend, precision, batch, samples_per_s):
        return ResultRow(
            **ROW | dict(backend=backend, precision=precision, latent_dim=20, batch_size=batch),
            samples_per_s=samples_per_s,
        )

    table = results_frame(
        [
            timed("numba", "float32", 128, 40000.0),
            timed("numba-bf16", "bf16", 128, 60000.0),  # gains: not named
            timed("numba", "float32", 1024, 50000.0),
            timed("numba-bf16", "bf16", 1024, 36500.0),
            timed("jax-bf16", "bf16", 1024, 10000.0),  # its twin not timed here
        ]
    )
    slower = slower_than_twin(table)
    assert list(zip(slower.backend, slower.twin, slower.batch_size)) == [
        ("numba-bf16", "numba", 1024)
    ]
    assert slower.ratio.tolist() == pytest.approx([0.73])
    warning = "\n".join(slower_than_twin_warning(table))
    assert "ran slower than float32" in warning
    assert "- numba-bf16: 0.73x numba's samples/s at z = 20, batch 1024" in warning
    assert slower_than_twin_warning(table[table.batch_size == 128]) == []
