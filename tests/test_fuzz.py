"""Fuzzing every reader of untrusted input: IDX data, model files (bytes and structure), training
checkpoints, ``--config`` files and command-line flags.

Every case must end in success or in ``StdbpError`` (the CLI: one line, exit status 2): never
another exception, never a hang (hypothesis' deadline), never a model with non-finite weights.
CI runs a few dozen cases per test; the long run sets ``STDBP_FUZZ_EXAMPLES`` (docs/reliability.md):

    STDBP_FUZZ_EXAMPLES=1250 STDBP_FUZZ_RANDOM=1 python -m pytest -q -m fuzz tests/test_fuzz.py
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import importlib.util
import io
import json
import math
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stdbp.checkpoint import load_model, save_checkpoint
from stdbp.cli import main
from stdbp.errors import StdbpError
from stdbp.nn import build
from stdbp.training.data import load_dataset, read_idx

pytestmark = pytest.mark.fuzz

FUZZ = settings(
    max_examples=int(os.environ.get("STDBP_FUZZ_EXAMPLES", "30")),
    deadline=datetime.timedelta(seconds=30),
    derandomize=not os.environ.get("STDBP_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)
TINY_ARCH = "784-6-10"
#: ``pytest.importorskip`` in the body comes too late where drawing the example needs nir.
NEEDS_NIR = pytest.mark.skipif(importlib.util.find_spec("nir") is None, reason="the nir package is not installed")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 training and 32 test MNIST images as IDX files: real training runs in a fraction of a second."""
    out = tmp_path_factory.mktemp("tiny-mnist")
    data = load_dataset("mnist")
    for split, n, images_name, labels_name in (
        ("train", 64, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("test", 32, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        images = data[split].images[:n].numpy()
        labels = data[split].labels[:n].numpy().astype(np.uint8)
        (out / images_name).write_bytes(_idx(images))
        (out / labels_name).write_bytes(_idx(labels))
    return out


@pytest.fixture(scope="module")
def tiny_model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(path, build(TINY_ARCH), config={"arch": TINY_ARCH})
    return path.read_bytes()


def _idx(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> int:
    """Run the CLI; only 0 or 2 with one line on stderr is acceptable (an exception fails the test)."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err[-500:])
    if code == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("stdbp: error:") and "Traceback" not in err, err[-500:]
    return code


def _cli_or_usage_error(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    """As :func:`_cli`; argparse's own refusals (a value that is not a number) exit through
    ``SystemExit`` with status 2 and the same one line."""
    try:
        _cli(argv, capsys)
        return
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("stdbp: error:") and err.count("\n") == 1, err


# --- IDX files ---------------------------------------------------------------------------------

MUTATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(0, 40), st.integers(0, 255)),  # header and early body bytes
        st.tuples(st.just("truncate"), st.integers(0, 400), st.just(0)),
        st.tuples(st.just("append"), st.integers(1, 64), st.integers(0, 255)),
        st.tuples(st.just("dims"), st.integers(0, 3), st.integers(0, 2**32 - 1)),
    ),
    max_size=4,
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in mutations:
        if kind == "set" and where < len(out):
            out[where] = value
        elif kind == "truncate":
            del out[where:]
        elif kind == "append":
            out += bytes([value]) * where
        elif kind == "dims" and len(out) >= 8 + 4 * where:
            out[4 + 4 * where : 8 + 4 * where] = value.to_bytes(4, "big")
    return bytes(out)


@FUZZ
@given(
    mutations=MUTATIONS,
    compress=st.booleans(),
    after=st.booleans(),
    shape=st.sampled_from([(5,), (3, 4, 5), (2, 28, 28)]),
)
def test_idx_reader(tmp_path: Path, mutations: list, compress: bool, after: bool, shape: tuple) -> None:
    data = _idx(np.arange(math.prod(shape), dtype=np.uint8).reshape(shape))
    if compress and after:
        data = _mutate(gzip.compress(data), mutations)  # the compressed bytes mutated
    else:
        data = _mutate(data, mutations)
        data = gzip.compress(data) if compress else data
    path = tmp_path / "file.gz"
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except StdbpError:
        return
    assert array.nbytes <= max(20 * len(data), 64 * 2**20)


# --- model files: bytes ------------------------------------------------------------------------


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    insert=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=32))),
)
def test_model_file_bytes(
    tmp_path: Path, tiny_model_bytes: bytes, flips: list, cut: int | None, insert: tuple | None
) -> None:
    data = bytearray(tiny_model_bytes)
    for where, value in flips:
        data[where % len(data)] = value
    if insert is not None:
        data[insert[0] % len(data) : insert[0] % len(data)] = insert[1]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    path = tmp_path / "m.pt"
    path.write_bytes(bytes(data))
    _load_or_refuse(path)


def _load_or_refuse(path: object, load: Callable[[Any], torch.nn.Module] = load_model) -> None:
    """``load(path)`` refuses with StdbpError, or gives a network of finite floating-point weights."""
    try:
        model = load(path)
    except StdbpError:
        return
    for tensor in model.state_dict().values():
        assert tensor.is_floating_point() and bool(torch.isfinite(tensor).all())


# --- model files: structure --------------------------------------------------------------------

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
)
ARCHS = st.one_of(
    st.sampled_from([TINY_ARCH, "784-7-10", "28x28-2C5-P2-10", "784", "", "784-x-10", "1x1-P9-3"]), st.text(max_size=20)
)


@st.composite
def payloads(draw: st.DrawFn) -> dict:
    torch.manual_seed(0)
    state = {k: v.clone(memory_format=torch.contiguous_format) for k, v in build(TINY_ARCH).state_dict().items()}
    name = draw(st.sampled_from(sorted(state)))
    change = draw(st.sampled_from(["none", "drop", "extra", "shape", "dtype", "nonfinite", "not-tensor"]))
    if change == "drop":
        del state[name]
    elif change == "extra":
        state["layers.9.weight"] = torch.zeros(2, 2)
    elif change == "shape":
        state[name] = torch.zeros(draw(st.integers(0, 9)), draw(st.integers(0, 9)))
    elif change == "dtype":
        state[name] = state[name].to(
            draw(st.sampled_from([torch.int32, torch.float16, torch.bool, torch.float64, torch.complex64]))
        )
    elif change == "nonfinite":
        state[name].view(-1)[draw(st.integers(0, state[name].numel() - 1))] = draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
    elif change == "not-tensor":
        state[name] = draw(VALUES)
    model = {"arch": draw(ARCHS)}
    for key in draw(st.lists(st.sampled_from(["threshold", "backend", "neuron", "psp_tau", "bogus"]), max_size=3)):
        model[key] = draw(st.one_of(VALUES, st.sampled_from(["numba", "reference", "alpha", "relpsp", 0.5])))
    payload: dict = {
        "format_version": draw(st.sampled_from([1, 1, 1, 0, 2, "1", None, 1.0])),
        "model": model,
        "state_dict": state,
    }
    for key in draw(st.lists(st.sampled_from(["format_version", "model", "state_dict"]), max_size=1)):
        payload[key] = draw(VALUES)
    payload["config"] = draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=3))
    return payload


@FUZZ
@given(payload=payloads())
def test_model_file_structure(tmp_path: Path, payload: dict) -> None:
    path = tmp_path / "m.pt"
    torch.save(payload, path)
    _load_or_refuse(path)


# --- training checkpoints (--resume) -----------------------------------------------------------


@FUZZ
@given(
    drop=st.lists(
        st.sampled_from(["config", "optimizer", "scheduler", "augment_rng", "torch_rng", "step"]), max_size=2
    ),
    replace=st.dictionaries(
        st.sampled_from(["config", "optimizer", "scheduler", "augment_rng", "torch_rng", "step", "metrics", "running"]),
        VALUES,
        max_size=2,
    ),
    config=st.dictionaries(
        st.sampled_from(["arch", "epochs", "lr", "tau", "seed", "batch_size", "shift", "unknown"]), VALUES, max_size=2
    ),
)
def test_resume_from_a_damaged_training_checkpoint(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture, drop: list, replace: dict, config: dict
) -> None:
    run = tmp_path / "run"
    if not (run / "checkpoint.pt").exists():
        assert (
            main(
                [
                    "train",
                    "--arch",
                    TINY_ARCH,
                    "--epochs",
                    "1",
                    "--data-dir",
                    str(tiny_data),
                    "--out",
                    str(run),
                    "--no-progress",
                ]
            )
            == 0
        )
        (run / "pristine.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    state = torch.load(run / "pristine.pt", weights_only=True)
    for key in drop:
        state.pop(key, None)
    state.update(replace)
    if isinstance(state.get("config"), dict):
        state["config"].update(config)
    torch.save(state, run / "checkpoint.pt")
    _cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"], capsys)


# --- --config files and flags -------------------------------------------------------------------

FIELDS = [
    "arch",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "weight_sum_penalty",
    "schedule",
    "tau",
    "threshold",
    "t_max",
    "jitter",
    "shift",
    "rotate",
    "scale",
    "elastic",
    "elastic_sigma",
    "hflip",
    "erase",
    "seed",
    "train_limit",
    "eval_batch_size",
    "checkpoint_every",
    "skip_grad_norm",
]
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(
    doc=st.one_of(
        st.dictionaries(st.sampled_from([*FIELDS, "bogus"]), JSON_VALUES, max_size=3).map(json.dumps),
        st.text(alphabet=string.printable, max_size=60),
        st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
    ),
    suffix=st.sampled_from([".json", ".toml"]),
)
def test_config_files(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture, two_epochs_at_most: None, doc: str, suffix: str
) -> None:
    config = tmp_path / f"c{suffix}"
    config.write_text(doc, encoding="latin-1")
    argv = ["train", "--config", str(config), "--arch", TINY_ARCH, "--epochs", "1", "--train-limit", "64", "--force"]
    _cli([*argv, "--data-dir", str(tiny_data), "--out", str(tmp_path / "run"), "--no-progress"], capsys)


FLAG_VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(repr),
    st.sampled_from(
        ["inf", "-inf", "nan", "1e308", "1e-308", "0", "-0", "1", "2", "64", "0.5", "", " ", "0x10", "1_000"]
    ),
    st.text(alphabet=string.printable, max_size=8),
)
TRAIN_FLAGS = [
    "--epochs",
    "--batch-size",
    "--lr",
    "--tau",
    "--threshold",
    "--t-max",
    "--jitter",
    "--shift",
    "--rotate",
    "--scale",
    "--elastic",
    "--elastic-sigma",
    "--hflip",
    "--erase",
    "--weight-decay",
    "--weight-sum-penalty",
    "--seed",
    "--train-limit",
    "--checkpoint-every",
    "--skip-grad-norm",
    "--arch",
    "--schedule",
    "--dataset",
]


@pytest.fixture
def two_epochs_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid runs are real but short: ``--epochs 10**9`` is a long run, not a defect."""
    import dataclasses

    import stdbp.training.loop as loop

    real = loop.train
    monkeypatch.setattr(
        loop, "train", lambda config, *a, **k: real(dataclasses.replace(config, epochs=min(config.epochs, 2)), *a, **k)
    )


@FUZZ
@given(flags=st.lists(st.tuples(st.sampled_from(TRAIN_FLAGS), FLAG_VALUES), min_size=1, max_size=2))
def test_train_flags(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture, two_epochs_at_most: None, flags: list
) -> None:
    argv = ["train", "--arch", TINY_ARCH, "--epochs", "1", "--train-limit", "64", "--data-dir", str(tiny_data)]
    for flag, value in flags:
        argv += [f"{flag}={value}"]
    argv += ["--out", str(tmp_path / "run"), "--force", "--no-progress"]
    _cli_or_usage_error(argv, capsys)


EVAL_FLAGS = st.lists(
    st.tuples(st.sampled_from(["--limit", "--t-end", "--arch", "--dataset"]), FLAG_VALUES), min_size=1, max_size=2
)


@FUZZ
@given(flags=EVAL_FLAGS, command=st.sampled_from(["eval", "analyze"]))
def test_eval_and_analyze_flags(
    tmp_path: Path, tiny_data: Path, tiny_model_bytes: bytes, capsys: pytest.CaptureFixture, flags: list, command: str
) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(tiny_model_bytes)
    argv = [command, str(model), "--data-dir", str(tiny_data)]
    for flag, value in flags:
        if command == "eval" and flag in ("--limit", "--t-end"):
            continue
        argv += [f"{flag}={value}"]
    if command == "analyze":
        argv += ["--out", str(tmp_path / "a"), "--no-progress"]
    _cli_or_usage_error(argv, capsys)


# --- regressions: each defect the first fuzzing found ----------------------------------------------


def test_truncated_archive_is_refused_without_a_large_allocation(tmp_path: Path, tiny_model_bytes: bytes) -> None:
    for cut in (10, len(tiny_model_bytes) // 2, len(tiny_model_bytes) - 30):
        (tmp_path / "t.pt").write_bytes(tiny_model_bytes[:cut])
        with pytest.raises(StdbpError):
            load_model(tmp_path / "t.pt")


def test_archive_declaring_more_than_it_holds_is_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 50_000_000)  # 50 MB that deflate to 50 kB
    with pytest.raises(StdbpError, match="declares"):
        load_model(path)


@pytest.mark.parametrize("change", ["no-state-dict", "nan", "int32"])
def test_checkpoint_contents_are_checked(tmp_path: Path, tiny_model_bytes: bytes, change: str) -> None:
    payload = torch.load(io.BytesIO(tiny_model_bytes), weights_only=True)
    name = next(iter(payload["state_dict"]))
    if change == "no-state-dict":
        del payload["state_dict"]
    elif change == "nan":
        payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], math.nan)
    else:
        payload["state_dict"][name] = payload["state_dict"][name].to(torch.int32)
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(StdbpError, match="state_dict|NaN|int32"):
        load_model(tmp_path / "m.pt")


@pytest.mark.parametrize(
    "flag", ["--seed=99999999999999999999", "--t-max=inf", "--tau=inf", "--tau=1e30", "--shift=1000000", "--lr=nan"]
)
def test_out_of_range_flags_are_refused(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture, flag: str
) -> None:
    argv = [
        "train",
        flag,
        "--arch",
        TINY_ARCH,
        "--data-dir",
        str(tiny_data),
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    assert _cli(argv, capsys) == 2
    assert not (tmp_path / "r").exists()


def test_gzip_bomb_is_refused_within_bounded_memory(tmp_path: Path) -> None:
    import zlib

    path = tmp_path / "bomb.gz"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as handle:
        handle.write(compressor.compress(bytes([0, 0, 8, 1]) + (2**29).to_bytes(4, "big")))
        for _ in range(32):
            handle.write(compressor.compress(bytes(2**24)))
        handle.write(compressor.flush())
    with pytest.raises(StdbpError, match="expands to more than"):
        read_idx(path)


def test_labels_beyond_the_output_layer_are_refused(
    tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for file in tiny_data.iterdir():
        (data / file.name).write_bytes(file.read_bytes())
    labels = np.full(64, 200, dtype=np.uint8)
    (data / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    argv = ["train", "--arch", TINY_ARCH, "--data-dir", str(data), "--out", str(tmp_path / "r"), "--no-progress"]
    assert _cli(argv, capsys) == 2


# --- NIR graphs (stdbp import) ------------------------------------------------------------------

NIR_VALUES = st.one_of(
    VALUES,
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e300]).map(lambda v: np.array(v)),
    st.tuples(st.integers(0, 4), st.integers(0, 4)).map(lambda shape: np.full(shape, 0.5)),
    st.lists(st.floats(), min_size=1, max_size=4).map(np.array),
)


@st.composite
def nir_graphs(draw: st.DrawFn) -> object:
    """An exported graph with a few of its nodes' fields, nodes or edges changed."""
    import dataclasses

    from stdbp import export_nir

    torch.manual_seed(0)
    graph = export_nir(build(draw(st.sampled_from([TINY_ARCH, "6x6-2C3-P2-4-3"]))))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["field", "field", "drop-node", "drop-edge", "add-edge", "swap-node"]))
        names = sorted(graph.nodes)
        name = draw(st.sampled_from(names))
        node = graph.nodes[name]
        if kind == "field" and dataclasses.is_dataclass(node):
            fields = [f.name for f in dataclasses.fields(node)]
            if fields:
                with contextlib.suppress(AttributeError, TypeError, dataclasses.FrozenInstanceError):
                    setattr(node, draw(st.sampled_from(fields)), draw(NIR_VALUES))
        elif kind == "drop-node":
            del graph.nodes[name]
        elif kind == "drop-edge" and graph.edges:
            graph.edges.pop(draw(st.integers(0, len(graph.edges) - 1)))
        elif kind == "add-edge":
            graph.edges.append((name, draw(st.sampled_from(names))))
        elif kind == "swap-node":
            graph.nodes[name] = graph.nodes[draw(st.sampled_from(names))]
    return graph


@NEEDS_NIR
@FUZZ
@given(graph=nir_graphs())
def test_nir_graphs(graph: object) -> None:
    from stdbp import import_nir

    _load_or_refuse(graph, import_nir)


@NEEDS_NIR
@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_nir_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flips: list, cut: int | None) -> None:
    import stdbp.interop.nir as interop
    from stdbp import export_nir, import_nir
    from stdbp.interop.nir import write_nir

    monkeypatch.setattr(interop, "READ_TIMEOUT", 5.0)  # a file that hangs h5py is refused after 5 s

    path = tmp_path / "g.nir"
    if not path.exists():
        torch.manual_seed(0)
        write_nir(export_nir(build(TINY_ARCH)), tmp_path / "pristine.nir")
    data = bytearray((tmp_path / "pristine.nir").read_bytes())
    for where, value in flips:
        data[where % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    path.write_bytes(bytes(data))
    _load_or_refuse(path, import_nir)
