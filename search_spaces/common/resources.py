"""Process-wide resources borrowed for the length of a call and given back: torch's CPU thread count
and a Ray session. Nothing in TraceNAS changes them for the rest of the caller's process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op CPU threads, then restore the caller's count."""
    import torch

    previous = torch.get_num_threads()
    if previous != threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextmanager
def ray_session(address: str | None = None, **init_kwargs: object) -> Iterator[None]:
    """A Ray session for the block: joins the caller's if one is running (and leaves it running),
    otherwise starts one (local, or at `address`) and shuts it down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(address=address, include_dashboard=False, **init_kwargs)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """In the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so long work can save what it has;
    the caller's handler is restored after (only the main thread can take signals)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
