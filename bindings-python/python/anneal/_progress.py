"""The progress display behind `progress=True`: one bar, widget or line per job.

- a terminal (stderr is a TTY): a tqdm bar on stderr;
- Jupyter with ipywidgets (`pip install anneal[notebook]`): one tqdm widget;
- Jupyter without ipywidgets: one text output, updated in place at most every few seconds;
- anything else (a log file, CI, a pipe): a plain line on stderr every few seconds, no `\\r`.

Each ends with the job's status and its final loss (and eval loss), e.g.
`job_... completed: 8/8 steps, loss 1.2345, eval loss 1.4567, model mdl_...`.
tqdm is a dependency of the package; without it the plain lines are used.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

#: Seconds between two lines (no TTY) or two updates of the notebook text.
LINE_INTERVAL = 5.0
NOTEBOOK_INTERVAL = 2.0

Event = dict[str, Any]


def _in_notebook() -> bool:
    """Whether we run in a Jupyter kernel (not a terminal IPython)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython
        return False
    return shell is not None and hasattr(shell, "kernel")


class _State:
    """What the display shows, from the events."""

    def __init__(self) -> None:
        self.job_id = ""
        self.step = 0
        self.total = 0
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.lr: float | None = None
        self.tokens_per_sec: float | None = None

    def update(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "job_started":
            self.job_id = event["job_id"]
            self.total = event["total_steps"]
        elif kind == "step":
            self.step, self.total = event["step"], event["total_steps"]
            self.loss, self.lr, self.tokens_per_sec = event["loss"], event["lr"], event["tokens_per_sec"]
        elif kind == "eval":
            metrics = event.get("metrics", {})
            self.eval_loss = metrics.get("eval_loss", metrics.get("loss", self.eval_loss))

    def line(self) -> str:
        parts = [f"{self.job_id}: step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f}")
        if self.lr is not None:
            parts.append(f"lr {self.lr:.2e}")
        if self.tokens_per_sec is not None:
            parts.append(f"{self.tokens_per_sec:.0f} tok/s")
        return " ".join(parts[:1]) + (", " + ", ".join(parts[1:]) if parts[1:] else "")

    def summary(self) -> str:
        """`loss 1.2345, eval loss 1.4567` (what is known)."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.eval_loss is not None:
            parts.append(f"eval loss {self.eval_loss:.4f}")
        return ", ".join(parts)

    def final(self, event: Event) -> str:
        line = f"{self.job_id} {event['status']}: {self.step}/{self.total} steps"
        if self.summary():
            line += ", " + self.summary()
        if event.get("model_id"):
            line += f", model {event['model_id']}"
        if event.get("error"):
            line += f" [{event['error']['code']}] {event['error']['message']}"
        return line


class _Lines:
    """Plain lines on stderr (no TTY): the start, one every LINE_INTERVAL s, the end."""

    def __init__(self, write: Callable[[str], object] | None = None, interval: float | None = None) -> None:
        self.state = _State()
        self.write = write or self._stderr
        self.interval = LINE_INTERVAL if interval is None else interval
        self.last = 0.0

    @staticmethod
    def _stderr(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        self.state.update(event)
        if kind == "job_started":
            self.write(f"{self.state.job_id}: started, {self.state.total} steps")
            self.last = time.monotonic()
        elif kind == "step":
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self.write(self.state.line())
        elif kind == "eval":
            self.write(f"{self.state.job_id}: eval @ step {event['step']}: " + ", ".join(
                f"{k} {v:.4f}" for k, v in event.get("metrics", {}).items()))
        elif kind == "job_finished":
            self.write(self.state.final(event))


class _NotebookText(_Lines):
    """One text output in a notebook, updated in place (no ipywidgets needed)."""

    def __init__(self) -> None:
        super().__init__(interval=NOTEBOOK_INTERVAL)
        from IPython.display import Pretty, display  # type: ignore[import-not-found,unused-ignore]

        self._pretty = Pretty
        self.handle: Any = display(Pretty(""), display_id=True)
        self.write = self._show

    def _show(self, line: str) -> None:
        if self.handle is not None:
            self.handle.update(self._pretty(line))

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "eval":
            # An eval updates the same output (no new line in a notebook).
            self.state.update(event)
            self._show(self.state.line())
        else:
            super().on_event(event)


class _Bar:
    """A tqdm bar (terminal) or widget (tqdm.notebook)."""

    def __init__(self, tqdm: Any) -> None:
        self.tqdm = tqdm
        self.state = _State()
        self.bar: Any = None

    def on_event(self, event: Event) -> None:
        kind = event.get("type")
        self.state.update(event)
        if kind == "job_started":
            if self.bar is None:  # one bar per job
                self.bar = self.tqdm(total=event["total_steps"], desc=event["job_id"], unit="step", dynamic_ncols=True)
        elif kind == "step" and self.bar is not None:
            self.bar.total = event["total_steps"]
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        elif kind == "eval" and self.bar is not None:
            self.bar.set_postfix_str(self._postfix(), refresh=False)
        elif kind == "job_finished" and self.bar is not None:
            # The final loss stays on the bar, followed by the status.
            end = self.state.summary()
            self.bar.set_postfix_str(f"{end}, {event['status']}" if end else event["status"])
            self.bar.close()
            self.bar = None

    def _postfix(self) -> str:
        s = self.state
        parts = []
        if s.loss is not None:
            parts.append(f"loss={s.loss:.4f}")
        if s.eval_loss is not None:
            parts.append(f"eval={s.eval_loss:.4f}")
        if s.lr is not None:
            parts.append(f"lr={s.lr:.2e}")
        return ", ".join(parts)


def display() -> _Lines | _Bar:
    """The display that fits where we run (see the module doc)."""
    if _in_notebook():
        try:
            import ipywidgets  # type: ignore[import-not-found,import-untyped,unused-ignore]  # noqa: F401
            from tqdm.notebook import tqdm as notebook_tqdm  # type: ignore[import-untyped,unused-ignore]

            return _Bar(notebook_tqdm)
        except ImportError:
            return _NotebookText()
    isatty = getattr(sys.stderr, "isatty", None)
    if isatty is not None and isatty():
        try:
            from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

            return _Bar(lambda **kw: tqdm(file=sys.stderr, **kw))
        except ImportError:
            pass
    return _Lines()


def progress_callback(on_event: Callable[[Event], object] | None = None) -> Callable[[Event], None]:
    """An event callback that drives the progress display, then calls `on_event`."""
    shown = display()

    def callback(event: Event) -> None:
        shown.on_event(event)
        if on_event is not None:
            on_event(event)

    return callback
