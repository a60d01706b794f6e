"""Which device the parts of a job run on: a Ray worker's GPU (numbered as the worker sees it),
the GPU request of a job on CUDA, and the query encoder of an evaluation on the run's device."""

from __future__ import annotations

import pytest
import torch

from helpers import SAMPLE_TEST
from tttnn.config import EvalConfig, RayConfig
from tttnn.distributed.devices import is_cuda, with_worker_gpus, worker_device
from tttnn.evaluate import open_index


@pytest.mark.parametrize(
    ("configured", "gpu_ids", "visible", "device"),
    [
        (None, [], "", "cpu"),  # asked for no GPU: Ray hides them all
        ("cpu", [], "", "cpu"),
        ("cpu", [1], "1", "cpu"),  # a CPU run keeps to the CPU, GPU or not
        (None, [3], "3", "cuda:0"),  # Ray shows only the worker's GPU: cuda:0 inside
        ("cuda", [3], "3", "cuda:0"),
        ("cuda:3", [3], "3", "cuda:0"),  # cuda:3 names a GPU of the driver's machine
        ("cuda:1", [2, 5], "2,5", "cuda:0"),  # two GPUs: the model takes the first
        ("cuda", [5], "0,5", "cuda:1"),
        ("cuda", [5], None, "cuda:5"),  # Ray told not to hide GPUs: the machine's numbering
        ("cuda", ["5"], " 5 ", "cuda:0"),
    ],
)
def test_a_worker_runs_on_the_gpu_ray_gave_it(configured, gpu_ids, visible, device):
    assert worker_device(configured, gpu_ids, visible) == device
    assert torch.device(device)  # a device torch accepts


def test_a_cuda_run_on_a_worker_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cuda:1 asked, but this Ray worker was given no GPU"):
        worker_device("cuda:1", [], "")


def test_a_job_on_cuda_has_its_workers_ask_for_a_gpu():
    rc = RayConfig(ray=True)
    assert with_worker_gpus(rc, "cuda:2").gpus_per_worker == 1.0
    assert with_worker_gpus(rc, "cuda").gpus_per_worker == 1.0
    assert with_worker_gpus(rc, "cpu") is rc and with_worker_gpus(rc, None) is rc
    half = RayConfig(ray=True, gpus_per_worker=0.5)  # two models per GPU, as asked
    assert with_worker_gpus(half, "cuda") is half
    assert [is_cuda(d) for d in ("cuda", "cuda:0", "cpu", None, "cudax")] == [
        True, True, False, False, False,
    ]  # fmt: skip


def test_the_query_encoder_runs_on_the_run_device(sample_index, tmp_path):
    """`--device` moves the encoder that embeds the queries too, not only the model. "cpu:0" is
    a device other than the encoder's default (CUDA when present, else "cpu") on any machine, so
    this tells without a GPU whether the setting reached the encoder."""

    def opened(**kw):
        cfg = EvalConfig.from_flat(index=str(sample_index), data=[str(SAMPLE_TEST)],
                                   out=str(tmp_path / "run"), progress=False, **kw)  # fmt: skip
        return open_index(cfg)

    assert opened(device="cpu:0").encoder.device == torch.device("cpu:0")
    default = "cuda" if torch.cuda.is_available() else "cpu"
    assert opened().encoder.device.type == default
    # the plain model retrieves nothing: no encoder loaded for it
    assert opened(device="cpu:0", neighbors=0)._encoder is None
