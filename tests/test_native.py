"""The native step: autograd's gradients from compiled C, picked when it can run, a clear fallback when not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from funcae_cli.models import build_model, linear_layers
from funcae_cli.native import kernels as native
from funcae_cli.training.engines import engine_for, select_step
from funcae_cli.training.loop import model_args
from funcae_cli.training.native.step import EXACT_LOSS_BELOW, MAX_WIDTH, NativeMLPStep, native_problem
from funcae_cli.training.optim import FlatParams
from funcae_cli.training.steps import AutogradStep, MLPStep

from .conftest import usage_error
from .test_steps import _cfg, _pair, needs_compiler

CPU = torch.device("cpu")


@pytest.fixture
def fresh_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An empty kernel cache and no loaded library; both restored afterwards."""
    monkeypatch.setenv("FUNCAE_CACHE_DIR", str(tmp_path / "cache"))
    native.reset()
    yield tmp_path / "cache"
    native.reset()


@needs_compiler
@pytest.mark.parametrize(
    "shape",
    [["model.hidden=[12,9]", "model.decoder_hidden=[7,11,6]"],  # asymmetric, several widths
     ["model.hidden=[12]", "model.decoder_hidden=[]"],  # one middle layer, linear into the output
     ["model.hidden=[]", "model.decoder_hidden=[]"],  # no middle at all: 20 -> 2 -> 20
     [f"model.hidden=[{MAX_WIDTH}]", "model.latent_dim=5"]],
)  # fmt: skip
def test_native_step_equals_autograd_on_other_shapes(shape: list[str]) -> None:
    cfg = _cfg(*shape)
    ref, fast, fa, fb = _pair(
        cfg, batch=37, n_points=33, step=NativeMLPStep
    )  # a batch that is no multiple of the kernels' 16 lanes
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(37, 33, generator=gen)
    a, b = ref(x, x, 1.0, None), fast(x, x, 1.0, None)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-4, atol=1e-6)


@needs_compiler
def test_native_tanh_is_within_2_ulp_of_the_exact_value() -> None:
    lib = native.kernels()
    x = np.concatenate([
        np.linspace(-12, 12, 2_000_001, dtype=np.float32),
        np.geomspace(1e-30, 12, 200_001).astype(np.float32),  # tiny arguments: tanh(x) = x to the last bit
        -np.geomspace(1e-30, 12, 200_001).astype(np.float32),
    ])  # fmt: skip
    y = x.copy()
    lib.fae_tanh(y.ctypes.data, y.size)
    exact = np.tanh(x.astype(np.float64))
    _, e = np.frexp(exact)  # float32's ulp at each value, in float64 (flush-to-zero may be on: no denormals)
    ulp = np.ldexp(1.0, np.maximum(e - 24, -149))
    err = np.abs(y - exact) / ulp
    assert err.max() <= 2.0, (err.max(), x[err.argmax()])
    assert np.all(np.abs(y) <= 1.0) and np.array_equal(np.sign(y), np.sign(x))


@needs_compiler
def test_auto_takes_native_then_mlp_then_autograd() -> None:
    cases = [
        ([], NativeMLPStep),
        ([f"model.hidden=[{MAX_WIDTH + 1}]"], MLPStep),  # too wide for the kernels: the torch MLP step
        (["model.kind=vae"], AutogradStep),
        (["train.engine=mlp"], MLPStep),
        (["train.engine=autograd"], AutogradStep),
    ]
    for overrides, kind in cases:
        cfg = _cfg(*overrides)
        model = build_model(model_args(cfg, 20))
        assert type(select_step(model, cfg.train, FlatParams(model), 16)) is kind, overrides


def test_without_a_compiler_auto_falls_back_and_says_why(fresh_native: Path, monkeypatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    model = build_model(model_args(_cfg(), 20))
    assert "no C compiler" in native_problem(model, CPU)
    assert type(select_step(model, _cfg().train, FlatParams(model), 16)) is MLPStep
    with pytest.raises(Exception, match="train.engine: 'native' cannot train this model .*no C compiler"):
        engine_for(model, "native", CPU)


def test_a_failed_compile_leaves_nothing_in_the_cache(fresh_native: Path, monkeypatch) -> None:
    monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
    with pytest.raises(native.NativeUnavailable, match="failed"):
        native.kernels()
    assert list(fresh_native.iterdir()) == []


def test_native_can_be_turned_off(fresh_native: Path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    assert native_problem(build_model(model_args(_cfg(), 20)), CPU) == "turned off by FUNCAE_NATIVE=0"
    assert not fresh_native.exists()


@needs_compiler
def test_kernels_compile_once_then_load_from_the_cache(fresh_native: Path, monkeypatch) -> None:
    lib = native.kernels()
    built = list(fresh_native.iterdir())
    assert [p.name for p in built] == [native.library_path(lib.threaded).name]  # no temporary file left
    native.reset()
    monkeypatch.setattr(native, "_compile", lambda target, threads: pytest.fail("compiled again"))
    assert native.kernels().fae_abi() == native.ABI


def test_native_needs_the_cpu() -> None:
    assert "CPU" in native_problem(build_model(model_args(_cfg(), 20)), torch.device("meta"))


def test_engine_that_cannot_train_the_model_exits_2_before_writing(cli, workdir: Path, monkeypatch) -> None:
    native.reset()
    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    try:
        r = cli("train", "configs/smoke.yaml", "--set", "train.engine=native", "-q", "--no-plots")
    finally:
        native.reset()
    usage_error(r, "configs/smoke.yaml", "train.engine", "'native'", "FUNCAE_NATIVE=0")
    assert not (workdir / "runs").exists()


@needs_compiler
def test_engines_train_the_same_run_and_report_which(workdir: Path, cli) -> None:
    """Same seed, each engine: the histories agree to float32 rounding over several epochs."""
    hist = {}
    for engine in ("native", "mlp", "autograd"):
        r = cli("train", "configs/smoke.yaml", "-q", "--no-plots", "--json", "--run-dir", f"runs/{engine}",
                "--set", "train.epochs=4", "--set", f"train.engine={engine}")  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["engine"] == engine
        hist[engine] = json.loads((workdir / f"runs/{engine}/history.json").read_text())
    for other in ("mlp", "autograd"):
        for a, b in zip(hist["native"], hist[other]):
            assert a["val_sse"] == pytest.approx(b["val_sse"], rel=1e-3)
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    assert hist["native"][-1]["val_sse"] < hist["native"][0]["val_sse"]


@needs_compiler
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_a_nan_reaches_the_loss_as_in_torch(activation: str) -> None:
    """tanh(NaN) and relu(NaN) are NaN in the kernels too: divergence is caught, not hidden."""
    ref, fast, _, _ = _pair(_cfg(f"model.activation={activation}"), step=NativeMLPStep)
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(0))
    x_in = x.clone()
    x_in[3, 7] = float("nan")  # in the input only: the target is finite, so only the chain can carry it
    assert torch.isnan(ref(x_in, x, 1.0, None).loss) and torch.isnan(fast(x_in, x, 1.0, None).loss)
    y = np.array([np.nan, 0.3, -np.inf, np.inf], dtype=np.float32)
    native.kernels().fae_tanh(y.ctypes.data, y.size)
    assert np.isnan(y[0]) and y[2] == -1.0 and y[3] == 1.0


def test_an_unusable_cache_folder_falls_back_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FUNCAE_CACHE_DIR", str(blocker))
    native.reset()
    try:
        with pytest.raises(native.NativeUnavailable, match="cannot build or load"):
            native.kernels()
    finally:
        native.reset()


@needs_compiler
def test_a_nan_in_an_autoencoders_own_input_reaches_the_gram_form_loss() -> None:
    ref, fast, _, _ = _pair(_cfg(), step=NativeMLPStep)
    x = torch.randn(16, 20, generator=torch.Generator().manual_seed(0))
    x[3, 7] = float("nan")
    assert torch.isnan(ref(x, x, 1.0, None).loss) and torch.isnan(fast(x, x, 1.0, None).loss)


@needs_compiler
def test_bound_row_norms_give_the_loss_a_pass_over_the_batch_gives() -> None:
    """gather() from the bound training set sums the batch's |x|^2 from its row norms; from another
    tensor (not bound), or a batch the step is handed directly, it makes the pass over the batch."""
    _, fast, _, _ = _pair(_cfg(), step=NativeMLPStep)
    x_train = torch.randn(50, 20, generator=torch.Generator().manual_seed(1))
    rows = torch.tensor([4, 17, 0, 49, 23, 8, 31, 12, 40, 2, 9, 33, 27, 45, 6, 19])
    x = x_train[rows]
    without = fast(x, x, 1.0, None).loss
    fast.bind(x_train)
    torch.testing.assert_close(fast.row_sumsq, x_train.double().square().sum(1), rtol=1e-12, atol=0)
    xb = fast.gather(x_train, rows, torch.empty(16, 20))
    assert fast.projected_xx == pytest.approx(float(x.double().square().sum()), rel=1e-12)
    torch.testing.assert_close(fast(xb, xb, 1.0, None).loss, without, rtol=1e-6, atol=0)
    other = x_train.clone()  # same values, not the bound tensor
    xb = fast.gather(other, rows, torch.empty(16, 20))
    assert fast.projected_xx is None
    torch.testing.assert_close(fast(xb, xb, 1.0, None).loss, without, rtol=1e-6, atol=0)


@needs_compiler
def test_the_gram_form_computes_the_loss_directly_when_its_terms_cancel() -> None:
    """A near-exact fit: every curve is the last layer's bias plus 1e-3 noise, so |r|^2 ~ 1e-6 |x|^2, far
    below EXACT_LOSS_BELOW; the Gram form's sum would have lost most digits, the step forms the output."""
    ref, fast, fa, fb = _pair(_cfg(), step=NativeMLPStep)
    gen = torch.Generator().manual_seed(2)
    curve = 1.0 + torch.rand(20, generator=gen)
    x = curve + 1e-3 * torch.randn(16, 20, generator=gen)
    for model in (ref.model, fast.model):
        last = linear_layers(model)[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(curve)
    a, b = ref(x, x, 1.0, None), fast(x, x, 1.0, None)
    assert fast.exact_losses == 1
    assert b.loss < EXACT_LOSS_BELOW * x.square().sum() / 16  # the regime the fallback is for
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=0)
    # The gradients keep the Gram form: at |x| / |r| ~ 1000 they lose ~3 more digits than the direct form's.
    torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-2, atol=1e-6)
    moderate = x + 0.3 * torch.randn(16, 20, generator=gen)  # an ordinary fit: no fallback
    torch.testing.assert_close(fast(moderate, moderate, 1.0, None).loss, ref(moderate, moderate, 1.0, None).loss)
    assert fast.exact_losses == 1


@pytest.fixture
def keep_threads():
    """torch's thread count (and so the kernels'), restored after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@needs_compiler
def test_threaded_kernels_run_on_torchs_thread_pool(keep_threads) -> None:
    """Built with OpenMP where torch's libgomp is loaded; then torch.set_num_threads sets the kernels'
    threads too (one runtime, one pool: a second runtime would keep its own count)."""
    lib = native.kernels()
    if not lib.threaded:
        pytest.skip("single-threaded build: this process has no libgomp (torch built with another runtime)")
    for n in (1, 2, 3):
        torch.set_num_threads(n)
        assert lib.fae_threads() == n


def _on_threads(fn, threads: int):
    torch.set_num_threads(threads)
    return fn()


@needs_compiler
def test_threaded_kernels_give_the_same_bits_on_one_and_two_threads(keep_threads) -> None:
    """The kernels that split work over threads (fae_project, fae_gram_prepare, fae_gram_backward,
    fae_row_sumsq) split only independent outputs, in whole 16-wide tiles: one thread and two give the
    same bits, on any CPU. Sizes make both threads work, with tails: 200 rows (shares 112 and 88), 130
    points (80 and 50)."""
    lib = native.kernels()
    gen = torch.Generator().manual_seed(7)
    n, batch, d0, dk, ldf = 130, 200, 16, 16, 32
    X = torch.randn(400, n, generator=gen)
    idx = torch.randperm(400, generator=gen)[:batch]
    W0, WL, bL = torch.randn(d0, n, generator=gen), torch.randn(n, dk, generator=gen), torch.randn(n, generator=gen)
    h, Z = torch.randn(dk, batch, generator=gen), torch.randn(dk + 1 + d0, n, generator=gen)
    ptr = torch.Tensor.data_ptr

    def run() -> list[torch.Tensor]:
        Ft, WT = torch.zeros(n, ldf), torch.zeros(dk, n)
        S, wide = torch.zeros(dk + 1, dk + 1, dtype=torch.float64), torch.zeros(dk + 1, n, dtype=torch.float64)
        lib.fae_gram_prepare(ptr(Ft), ldf, ptr(WT), ptr(W0), ptr(WL), ptr(bL), n, d0, dk, ptr(S), ptr(wide))
        norms = torch.zeros(400, dtype=torch.float64)
        lib.fae_row_sumsq(ptr(X), 400, n, ptr(norms))
        xb, y = torch.zeros(batch, n), torch.zeros(batch, ldf)
        xx = lib.fae_project(ptr(X), ptr(idx), batch, n, ptr(Ft), ldf, ptr(xb), ptr(y), ptr(norms))
        gW, gb, gW0 = torch.zeros(n, dk), torch.zeros(n), torch.zeros(d0, n)
        tb = lib.fae_gram_backward(batch, batch, dk, n, ptr(h), ptr(Z), ptr(WT), ptr(bL), 0.5, ptr(gW), ptr(gb),
                                   d0, ptr(gW0))  # fmt: skip
        return [Ft, WT, S, norms, xb, y, gW, gb, gW0, torch.tensor([xx, tb], dtype=torch.float64)]

    if not lib.threaded or _on_threads(lib.fae_threads, 2) < 2:
        pytest.skip("single-threaded kernels (no libgomp in this process): nothing to compare")
    one, two = _on_threads(run, 1), _on_threads(run, 2)
    for a, b in zip(one, two):
        assert torch.equal(a, b), (a - b).abs().max()


@needs_compiler
@pytest.mark.parametrize("corrupted", [False, True], ids=["x->x", "noisy->x"])  # the Gram and direct forms
def test_threaded_step_equals_autograd_and_agrees_across_thread_counts(corrupted: bool, keep_threads) -> None:
    """The whole native step on one thread and two: both equal autograd, and agree with each other to float32
    rounding, not to the bit. Its wide products are torch's (MKL), and MKL does not promise the same bits
    on different thread counts (without MKL_CBWR): on an Intel Xeon with AVX-512 the direct form's
    gradients differed by 1.5e-7 between 1 and 2 threads, while on an AMD EPYC they were equal. In the Gram
    form the middle layers' gradients come from the kernels alone (fae_project, the chain, fae_gram_forward):
    those are the same bits on any CPU."""
    cfg = _cfg("model.hidden=[16,16,16]")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(200, 130, generator=gen)
    x_in = x + 0.1 * torch.randn(200, 130, generator=gen) if corrupted else x
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ref, fast, fa, fb = _pair(cfg, n_points=130, batch=256, step=NativeMLPStep)
        x_train = torch.cat([torch.randn(50, 130, generator=torch.Generator().manual_seed(8)), x])
        rows = torch.arange(50, 250)
        fast.bind(x_train)
        xb = fast.gather(x_train, rows, torch.empty(256, 130)[:200])  # the trainer's path
        b = fast(x_in if corrupted else xb, xb, 1.0, None)
        middle = torch.cat([layer.weight.grad.flatten() for layer in linear_layers(fast.model)[1:-1]])
        results.append((b.loss.clone(), fb.grad.clone(), middle.clone()))
        a = ref(x_in, x, 1.0, None)
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fb.grad, fa.grad, rtol=1e-4, atol=1e-6)
    (loss1, grad1, mid1), (loss2, grad2, mid2) = results
    torch.testing.assert_close(loss1, loss2, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad1, grad2, rtol=1e-5, atol=1e-7)
    if not corrupted:
        assert torch.equal(mid1, mid2), (mid1 - mid2).abs().max()


@needs_compiler
@pytest.mark.parametrize(("batch", "n_points", "ldf"), [(37, 33, 32), (200, 130, 64), (256, 1000, 32)])
@pytest.mark.parametrize("gathered", [True, False], ids=["rows", "in-order"])
def test_project_gathers_the_rows_and_makes_the_first_product(batch, n_points, ldf, gathered) -> None:
    """fae_project: y = X[idx] Ft and xb = X[idx], over short row groups (37), two threads with a short
    last group (200), two 32-column blocks (ldf 64), a tail of points (33, 130); idx NULL reads X in order."""
    lib = native.kernels()
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(500, n_points, generator=gen)
    Ft = torch.randn(n_points, ldf, generator=gen)
    idx = torch.randperm(500, generator=gen)[:batch] if gathered else torch.arange(batch)
    xb, y = torch.full((batch, n_points), float("nan")), torch.empty(batch, ldf)
    norms = X.double().square().sum(1)
    xx = lib.fae_project(
        X.data_ptr(), idx.data_ptr() if gathered else None, batch, n_points, Ft.data_ptr(), ldf,
        xb.data_ptr() if gathered else None, y.data_ptr(), norms.data_ptr(),
    )  # fmt: skip
    assert xx == pytest.approx(float(norms[idx].sum()), rel=1e-12)
    exact = (X[idx].double() @ Ft.double()).float()
    torch.testing.assert_close(y, exact, rtol=1e-5, atol=1e-4)
    if gathered:
        assert torch.equal(xb, X[idx])
    else:
        assert torch.isnan(xb).all()  # no copy asked for, none made


@needs_compiler
def test_the_trainers_gather_gives_the_step_the_same_bits_as_a_gathered_batch() -> None:
    """Trainer path: step.gather() makes the first product while it gathers; the step then skips it. The
    result is the step on x_train[rows] to the bit, and a batch not from gather() is multiplied afresh."""
    cfg = _cfg("model.hidden=[16,16]")
    gen = torch.Generator().manual_seed(9)
    x_train = torch.randn(300, 70, generator=gen)
    rows = torch.randperm(300, generator=gen)[:100]
    _, a, fa, _ = _pair(cfg, n_points=70, batch=128, step=NativeMLPStep)
    _, b, fb, _ = _pair(cfg, n_points=70, batch=128, step=NativeMLPStep)
    x = x_train[rows]
    out_a = a(x, x, 1.0, None)
    xb = b.gather(x_train, rows, torch.empty(128, 70)[:100])
    assert torch.equal(xb, x)
    out_b = b(xb, xb, 1.0, None)
    assert torch.equal(out_a.loss, out_b.loss) and torch.equal(fa.grad, fb.grad)
    assert b.projected is None  # used once
    fb.data.add_(0.01)  # new weights; the same batch again without gather(): the product is made afresh
    fa.data.add_(0.01)
    assert torch.equal(b(xb, xb, 1.0, None).loss, a(x, x, 1.0, None).loss)


@needs_compiler
def test_a_denoising_step_gathers_with_torch() -> None:
    """With input noise the step takes the direct form, which reads the corrupted input: gather() only copies."""
    cfg = _cfg("train.noise.kind=gaussian", "train.noise.std=0.1")
    _, step, _, _ = _pair(cfg, n_points=20, batch=16, step=NativeMLPStep)
    x_train = torch.randn(40, 20)
    rows = torch.arange(0, 40, 2)[:16]
    assert torch.equal(step.gather(x_train, rows, torch.empty(16, 20)), x_train[rows])
    assert step.projected is None


@needs_compiler
def test_gather_refuses_more_rows_than_the_steps_buffers_hold() -> None:
    _, step, _, _ = _pair(_cfg(), n_points=20, batch=16, step=NativeMLPStep)
    with pytest.raises(ValueError, match="17 rows; this step's buffers hold 16"):
        step.gather(torch.randn(40, 20), torch.arange(17), torch.empty(17, 20))


@needs_compiler
def test_a_compiler_without_openmp_builds_single_threaded_kernels(
    fresh_native: Path, tmp_path: Path, monkeypatch
) -> None:
    cc = tmp_path / "cc-without-openmp"
    cc.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -fopenmp ] && { echo "unsupported option -fopenmp" >&2; exit 1; }; done\n'
        'exec cc "$@"\n'
    )
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    lib = native.kernels()
    assert not lib.threaded and lib.fae_threads() == 1
    assert [p.name for p in fresh_native.iterdir()] == [native.library_path(False).name]


@needs_compiler
def test_native_threads_can_be_turned_off(fresh_native: Path, monkeypatch) -> None:
    monkeypatch.setenv("FUNCAE_NATIVE_THREADS", "0")
    lib = native.kernels()
    assert not lib.threaded and lib.fae_threads() == 1


def test_an_unavailable_library_keeps_no_callers_frames_alive(monkeypatch) -> None:
    """FUNCAE_NATIVE=0 (or no compiler): asking for the kernels again and again must not chain the askers' frames,
    and the tensors in them, onto a cached exception's traceback (the torch fallbacks ask once per likelihood
    evaluation: mcmc grew to 24 GB that way)."""
    import gc
    import weakref

    monkeypatch.setenv("FUNCAE_NATIVE", "0")
    native.reset()
    try:

        def caller() -> weakref.ref:
            big = torch.empty(1000)
            assert native.kernels_or_none() is None
            with pytest.raises(native.NativeUnavailable, match="FUNCAE_NATIVE=0"):
                native.kernels()
            return weakref.ref(big)

        refs = [caller() for _ in range(3)]
        gc.collect()
        assert all(r() is None for r in refs)
    finally:
        monkeypatch.delenv("FUNCAE_NATIVE")
        native.reset()
