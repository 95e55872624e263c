"""ONNX export of a zoo model, checked against the eager model.

torch's own exporter (``torch.onnx.export(..., dynamo=True)``: ``torch.export`` then onnxscript's translation) does the
work; what is added here is what a user of an exported file needs to trust it: a dynamic batch dimension, the input
and output names, and a check that ONNX Runtime's output on a random batch matches the eager model (the maximum
absolute difference is returned and written into the run's record). Every zoo family exports this way: dense, routed
(top-k gathers), merging (ToMe), multi-scale and reversible. A routed model whose router scores tokens alike (a
fresh conversion, before its router has trained) may keep other tokens in ONNX Runtime, whose top-k breaks ties
differently: the check reports that rather than passing it.

``onnx`` and ``onnxscript`` (needed by the exporter) and ``onnxruntime`` (the check) are the ``onnx`` extra:
``pip install 'growzoo[onnx]'``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from zoo.measure.steps import random_batch

#: the check's tolerance on the largest absolute logit difference (fp32 kernels differ in summation order)
ONNX_ATOL = 1e-4

INPUT_NAME, OUTPUT_NAME = "pixel_values", "logits"


class OnnxExportError(ValueError):  # the CLI reports ValueErrors as one line and exit 2
    """The export or its check failed (the message says which, and how far the outputs differ)."""


def export_onnx(model: torch.nn.Module, path: str | Path, check: bool = True, quiet: bool = True) -> dict:
    """Write ``model`` (put in eval mode) to ``path`` as ONNX with a dynamic batch dimension.

    Args:
        model: A zoo model (any registered family).
        path: The ``.onnx`` file to write (its folder must exist).
        check: Run the file in ONNX Runtime on batches of 1 and 3 and compare with the eager model.
        quiet: Silence the exporter's progress lines.

    Returns:
        ``{"path", "input", "output", "opset", "max_abs_diff"}`` (``max_abs_diff`` is None without ``check``).

    Raises:
        OnnxExportError: A missing extra, an export failure, or outputs beyond ``ONNX_ATOL``.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it; imported here for a clear error)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise OnnxExportError(f"ONNX export needs the onnx extra: pip install 'growzoo[onnx]' ({e})") from e
    model = model.eval()
    path = Path(path)
    x, _ = random_batch(model, 2)
    batch = torch.export.Dim("batch", min=1)
    sink = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    try:
        with sink, torch.no_grad():
            program = torch.onnx.export(
                model, (x,), str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: batch}}, verbose=False,
            )  # fmt: skip
    except Exception as e:  # the exporter raises many kinds; the model name and cause are what a user needs
        raise OnnxExportError(f"{type(model).__name__}: ONNX export failed: {type(e).__name__}: {e}") from e
    opset = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    out = {"path": str(path), "input": INPUT_NAME, "output": OUTPUT_NAME, "opset": opset, "max_abs_diff": None}
    if check:
        out["max_abs_diff"] = check_onnx(model, path)
    return out


def check_onnx(model: torch.nn.Module, path: str | Path, batches: tuple[int, ...] = (1, 3)) -> float:
    """Largest absolute difference between ONNX Runtime's and the eager model's logits over random batches of each
    size in ``batches`` (sizes other than the export's, so the dynamic batch dimension is exercised).

    Raises:
        OnnxExportError: Without onnxruntime, or when the difference exceeds ``ONNX_ATOL``.
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise OnnxExportError(f"checking {path} needs onnxruntime: pip install 'growzoo[onnx]' ({e})") from e
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for b in batches:
        x, _ = random_batch(model, b)
        with torch.no_grad():
            ref = model(x).float()
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        if got.shape != ref.shape:
            raise OnnxExportError(f"{path}: ONNX output shape {tuple(got.shape)} != eager {tuple(ref.shape)}")
        worst = max(worst, (got - ref).abs().max().item())
    if not worst <= ONNX_ATOL:
        raise OnnxExportError(f"{path}: ONNX Runtime differs from the eager model by {worst:.3g} (> {ONNX_ATOL:g})")
    return worst
