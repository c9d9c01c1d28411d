"""The Triton kernel (``stdbp.kernels.triton_linear``) against the reference and the numba scan.

On a CUDA machine the kernels run compiled on the GPU; elsewhere Triton's interpreter runs them
on the CPU (``TRITON_INTERPRET=1``, set here before the kernels are defined). Skipped when the
triton package is not installed.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("the triton package is not installed", allow_module_level=True)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: it reads the flag then

from stdbp import functional as F  # noqa: E402
from stdbp.nn.network import build  # noqa: E402

from .oracles import random_case, relpsp_brute_force  # noqa: E402

# inf * 0 and NaN comparisons are part of the scan (see the kernel); the interpreter's numpy warns of them
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def _run(t: torch.Tensor, w: torch.Tensor, backend: str, grad_out: torch.Tensor, device: str = "cpu"):
    ti = t.clone().to(device).requires_grad_()
    wi = w.clone().to(device).requires_grad_()
    out = F.relpsp_linear(ti, wi, 0.8, backend=backend)
    out.backward(grad_out.to(device))
    return out.detach().cpu(), ti.grad.cpu(), wi.grad.cpu()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", range(3))
def test_triton_matches_reference_forward_and_gradients(dtype: torch.dtype, seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    t, w = random_case(rng, batch=5, n_in=23, n_out=9, dtype=dtype)  # ties, silent inputs and a silent sample
    grad_out = torch.tensor(rng.normal(size=(5, 9)), dtype=dtype)
    o1, gt1, gw1 = _run(t, w, "triton", grad_out, DEVICE)
    o2, gt2, gw2 = _run(t, w, "reference", grad_out)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    assert torch.isinf(o2).any() and torch.isfinite(o2).any()
    assert torch.equal(torch.isinf(o1), torch.isinf(o2))
    torch.testing.assert_close(o1[torch.isfinite(o1)], o2[torch.isfinite(o2)], **tol)
    torch.testing.assert_close(gw1, gw2, **tol)
    torch.testing.assert_close(gt1, gt2, **tol)


def test_triton_matches_brute_force_and_numba_on_a_wider_layer() -> None:
    """More neurons than one program's block, and more than one row range of the weight gradient."""
    rng = np.random.default_rng(9)
    t, w = random_case(rng, batch=3, n_in=40, n_out=150, dtype=torch.float64)
    grad_out = torch.tensor(rng.normal(size=(3, 150)))
    o1, gt1, gw1 = _run(t, w, "triton", grad_out, DEVICE)
    o2, gt2, gw2 = _run(t, w, "numba", grad_out)
    expected = relpsp_brute_force(t.numpy(), w.numpy(), 0.8)
    assert np.array_equal(np.isinf(o1.numpy()), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(o1.numpy()[finite], expected[finite], rtol=1e-9)
    for a, b in ((o1[torch.isfinite(o1)], o2[torch.isfinite(o2)]), (gw1, gw2), (gt1, gt2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_triton_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from stdbp.kernels import resolve_backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend(torch.device("cpu"), "triton") == "triton"  # through the interpreter
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend(torch.device("cpu"), "triton")
    assert resolve_backend(torch.device("cpu"), "triton", kind="conv") == "reference"
    if torch.cuda.is_available():
        assert resolve_backend(torch.device("cuda")) == "triton"
        assert resolve_backend(torch.device("cuda"), kind="conv") == "reference"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_trains_on_cuda_like_on_cpu() -> None:
    """A network moved with .to('cuda') takes the same training step as on the CPU, to float32 tolerance."""
    torch.manual_seed(0)
    cpu = build("784-50-10")
    gpu = build("784-50-10").to("cuda")
    gpu.load_state_dict(cpu.state_dict())
    t = torch.rand(16, 784)
    t[t < 0.6] = float("inf")
    labels = torch.randint(0, 10, (16,))
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        loss = F.first_spike_cross_entropy(model(t.to(device)), labels.to(device), tau=0.05)
        loss.backward()
    for p_cpu, p_gpu in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3, atol=1e-4)
