"""A progress bar for the tools that walk image folders (tokenize, fit the HOG codebook,
infer on a folder, kNN evaluation): images done, images/s and the time left, on stderr.

mmengine's ``ProgressBar`` counts "tasks", writes to stdout by default (where these tools
print their tables) and redraws on every update, which fills a log file with one partial
line per image when stderr is not a terminal. :class:`ProgressBar` here:

* writes to ``sys.stderr`` (or the ``file`` given), never to stdout, so a tool's
  machine-readable output stays clean;
* on a terminal redraws one line (``\\r``) at most every ``min_interval`` seconds; into a
  file or pipe writes a whole line at most every ``log_interval`` seconds;
* always ends with one final line, ``DESC: DONE/TOTAL UNIT in T s (R UNIT/s)``, so a log
  shows how many images were processed and how fast;
* is silent on every rank but the main one of a distributed run (``enabled=None``).

Use it as a context manager::

    with ProgressBar(len(files), 'tokenize') as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""
import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ['ProgressBar']


class ProgressBar:
    """Count work done and show it on stderr with the rate and the time left.

    Args:
        total (int): how many items the loop will process (0 or more).
        desc (str): what is being done, the start of every line (e.g. the tool's name).
        unit (str): what is counted, plural. Defaults to 'images'.
        file (TextIO, optional): where to write. Defaults to ``sys.stderr`` (looked up
            when the bar is created, so a redirected stderr is honoured).
        enabled (bool, optional): False writes nothing. None (default) means "on the
            main process only" (``mmengine.dist.is_main_process``).
        min_interval (float): seconds between redraws on a terminal. Defaults to 0.2.
        log_interval (float): seconds between lines when ``file`` is not a terminal.
            Defaults to 30.
        clock (callable): the time source in seconds (tests pass a fake one). Defaults
            to ``time.monotonic``.
    """

    def __init__(self, total: int, desc: str, unit: str = 'images',
                 file: Optional[TextIO] = None, enabled: Optional[bool] = None,
                 min_interval: float = 0.2, log_interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f'ProgressBar: total must be an int >= 0 (the number of '
                             f'{unit} the loop will process), got {total!r}')
        if enabled is None:
            from mmengine.dist import is_main_process
            enabled = is_main_process()
        self.total, self.desc, self.unit = total, desc, unit
        self.file = sys.stderr if file is None else file
        self.enabled = bool(enabled)
        self.min_interval, self.log_interval = min_interval, log_interval
        self.clock = clock
        isatty = getattr(self.file, 'isatty', None)
        self.tty = bool(isatty and isatty())
        self.done = 0
        self.closed = False
        self.start = self.last_write = clock()
        self._width = 0  # length of the line drawn last on a terminal

    # -------------------------------------------------------------------------- numbers
    def elapsed(self) -> float:
        return max(self.clock() - self.start, 0.0)

    def rate(self) -> float:
        """Items per second so far (0 before any time has passed)."""
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, final: bool = False) -> str:
        """The progress line for the count so far (no line break): with a bar and the
        time left while running, ``DESC: DONE/TOTAL UNIT in T s (R UNIT/s)`` when
        ``final`` (also for a loop that stopped early, so the count shows)."""
        rate = self.rate()
        if final or not self.total or self.done >= self.total:
            return (f'{self.desc}: {self.done}/{self.total} {self.unit} in '
                    f'{self.elapsed():.1f} s ({rate:.1f} {self.unit}/s)')
        bar_len = 20
        filled = bar_len * self.done // self.total
        eta = f', ETA {_duration((self.total - self.done) / rate)}' if rate > 0 else ''
        return (f'{self.desc}: [{"#" * filled}{"." * (bar_len - filled)}] '
                f'{self.done}/{self.total} {self.unit}, {rate:.1f} {self.unit}/s{eta}')

    # -------------------------------------------------------------------------- updates
    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done and redraw if it is time to."""
        if n < 0:
            raise ValueError(f'ProgressBar.update: n must be >= 0, got {n}')
        self.done += n
        if not self.enabled or self.closed:
            return
        now = self.clock()
        if self.done >= self.total:
            return  # close() writes the final line
        if now - self.last_write >= (self.min_interval if self.tty else self.log_interval):
            self._write(self.line(), final=False)
            self.last_write = now

    def close(self) -> None:
        """Write the final line (count, time, rate) and end it with a line break."""
        if self.closed:
            return
        self.closed = True
        if self.enabled:
            self._write(self.line(final=True), final=True)

    def _write(self, text: str, final: bool) -> None:
        if self.tty:
            pad = ' ' * max(self._width - len(text), 0)  # wipe the end of a longer line
            self.file.write('\r' + text + pad + ('\n' if final else ''))
            self._width = 0 if final else len(text)
        else:
            self.file.write(text + '\n')
        self.file.flush()

    def __enter__(self) -> 'ProgressBar':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f'{seconds} s'
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f'{minutes} min {seconds:02d} s'
    hours, minutes = divmod(minutes, 60)
    return f'{hours} h {minutes:02d} min'
