"""Runtime patches: fast-reid's multi-process launch and DDP wrapping assume CUDA + NCCL.

Without CUDA, ``launch`` asserts CUDA and initialises NCCL, and ``DefaultTrainer`` passes
``device_ids=[local_rank]`` to DDP, which CPU modules reject. With these patches the same
``--num-gpus N`` flag starts N CPU processes on the gloo backend (used by the tests, and by users on
CPU-only machines); with CUDA nothing changes.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .base import Patch


def _distributed_worker_cpu(local_rank, main_func, world_size, num_procs_per_machine, machine_rank, dist_url,
                            args):
    """CPU twin of ``fastreid.engine.launch._distributed_worker``: gloo backend, no device pinning."""
    from fastreid.utils import comm

    import multiprocessing

    import plugins  # noqa: F401  (spawned processes re-import: apply the patches and registrations again)

    # DataLoader workers of this process must inherit the patched modules: with the "spawn" default they would
    # re-import fast-reid without the patches (torch._six ...) unless the entry script imports plugins itself.
    if "fork" in multiprocessing.get_all_start_methods():
        multiprocessing.set_start_method("fork", force=True)

    global_rank = machine_rank * num_procs_per_machine + local_rank
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=global_rank)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    comm.synchronize()
    num_machines = world_size // num_procs_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_procs_per_machine, (i + 1) * num_procs_per_machine))
        group = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    main_func(*args)


def host_ddp(module, device_ids=None, **kwargs):
    """DDP that drops ``device_ids`` for CPU modules (fast-reid always passes ``[local_rank]``)."""
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


def _cpu_launch() -> None:
    import importlib

    # `fastreid.engine` re-exports the *function* `launch`, so `import fastreid.engine.launch as m` would bind
    # the function; the worker lives on the module.
    launch_module = importlib.import_module("fastreid.engine.launch")
    launch_module._distributed_worker = _distributed_worker_cpu


def _cpu_ddp() -> None:
    import fastreid.engine.defaults as defaults

    defaults.DistributedDataParallel = host_ddp


PATCHES = [
    Patch("cpu_launch", "launch(--num-gpus N) asserts 'cuda is not available' and uses NCCL",
          _no_cuda, _cpu_launch, stage="runtime"),
    Patch("cpu_ddp", "DefaultTrainer wraps CPU models in DDP with device_ids=[rank], which DDP rejects",
          _no_cuda, _cpu_ddp, stage="runtime"),
]
