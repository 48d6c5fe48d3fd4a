"""The tqdm progress bar behind `progress=True` (tqdm.auto: terminal or Jupyter widget)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def progress_callback(on_event: Callable[[dict[str, Any]], object] | None = None) -> Callable[[dict[str, Any]], None]:
    """An event callback that drives a tqdm bar from training events, then calls `on_event`."""
    try:
        from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError as e:
        raise ImportError("progress=True needs tqdm: `pip install tqdm` (or pass on_event= instead)") from e

    bar: Any = None

    def callback(event: dict[str, Any]) -> None:
        nonlocal bar
        kind = event.get("type")
        if kind == "job_started":
            bar = tqdm(total=event["total_steps"], desc=event["job_id"], unit="step", dynamic_ncols=True)
        elif kind == "step" and bar is not None:
            bar.total = event["total_steps"]
            bar.update(event["step"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2e}", refresh=False)
        elif kind == "job_finished" and bar is not None:
            bar.set_postfix_str(event["status"])
            bar.close()
            bar = None
        if on_event is not None:
            on_event(event)

    return callback
