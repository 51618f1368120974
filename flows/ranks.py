"""The process side of `torchrun -m flows.cli sft|rsgrpo`: which rank this process is, and how a rank ends so that
a finished rank does not abort the whole stage at exit."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def launch_rank() -> int:
    """This process's global rank under `torchrun` (its RANK variable); 0 in an ordinary run."""
    return int(os.environ.get("RANK", "0"))


def end_worker_rank() -> NoReturn:
    """End a torchrun worker rank (RANK > 0) once its share is trained and written, without the interpreter's exit:
    left to exit-time teardown, a finished worker rank now and then aborted ("terminate called without an active
    exception", SIGABRT, after writing its shards; seen in a CI run on 2026-12-06 even with the process group torn
    down first), and torchrun then fails the whole stage. Every collective is behind it and rank 0 writes every
    output, so nothing is lost by skipping native destructors."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def leave_process_group() -> None:
    """Under torchrun, tear the process group down before the interpreter exits. Left to exit-time destructors, a
    rank that has finished its work can abort ("terminate called without an active exception", SIGABRT) and
    torchrun then fails the whole run."""
    torch = sys.modules.get("torch")  # never import torch (seconds) for a stage that did not use it
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
