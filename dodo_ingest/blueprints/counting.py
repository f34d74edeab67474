"""Byte counting for what flows through a view: file-like objects (uploads) and iterators (streamed bodies).

:func:`count_bytes` wraps a file-like object, an iterable or an async iterable and counts the bytes that pass,
without buffering anything. ``on_close(byte_count)`` runs exactly once, when the data is done with: the wrapper
is closed (a WSGI server, Flask and Django all close a response body, also when the client went away), an
iterator is exhausted or raised, or a ``with`` block around it exits.

What counts as a byte: ``bytes``/``bytearray`` by length, ``memoryview`` by ``nbytes``, ``str`` by its UTF-8
length, anything else by the UTF-8 length of ``str(chunk)`` (what Django sends for it). A reader counts the
furthest position reached, so a client that seeks back and reads again (an upload retried by boto3) is not
counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from dodo_ingest.blueprints._values import logger

OnClose = Callable[[int], object]


def chunk_size(chunk: Any) -> int:
    """The number of bytes ``chunk`` puts on the wire."""
    if isinstance(chunk, (bytes, bytearray)):
        return len(chunk)
    if isinstance(chunk, memoryview):
        return chunk.nbytes
    if isinstance(chunk, str):
        return len(chunk) if chunk.isascii() else len(chunk.encode("utf-8"))
    return len(str(chunk).encode("utf-8"))


class _Once:
    """Calls ``on_close(byte_count)`` once, whichever way the data ends; a failure in it is logged."""

    def __init__(self, on_close: OnClose | None) -> None:
        self._on_close = on_close
        self._lock = threading.Lock()
        self.fired = False

    def fire(self, byte_count: int) -> None:
        with self._lock:
            if self.fired:
                return
            self.fired = True
        if self._on_close is not None:
            try:
                self._on_close(byte_count)
            except Exception:
                logger.exception("dodo-ingest: on_close of a counted body raised; ignored")


class CountingReader:
    """A file-like wrapper that counts the bytes read through it (``byte_count``: the furthest position reached).

    ``read``, ``read1``, ``readinto``, ``readline``, ``readlines``, iteration, ``seek`` and ``tell`` go to the
    wrapped object; every other attribute too. ``close()`` closes it and runs ``on_close(byte_count)`` once.
    """

    def __init__(self, raw: Any, on_close: OnClose | None = None) -> None:
        self._raw = raw
        self._once = _Once(on_close)
        self._position = 0
        self.byte_count = 0
        try:
            self._origin: int | None = raw.tell() if raw.seekable() else None
        except Exception:  # not every stream (wsgi.input) can tell
            self._origin = None

    def _advance(self, n: int) -> None:
        self._position += n
        if self._position > self.byte_count:
            self.byte_count = self._position

    def read(self, size: int | None = -1) -> Any:
        """Read and count (``size`` None or negative: to the end)."""
        data = self._raw.read() if size is None or size < 0 else self._raw.read(size)
        self._advance(len(data))
        return data

    def read1(self, size: int = -1) -> Any:
        """Read at most one underlying read's worth and count it."""
        data = self._raw.read1(size)
        self._advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer`` and count."""
        n = int(self._raw.readinto(buffer) or 0)
        self._advance(n)
        return n

    def readline(self, size: int | None = -1) -> Any:
        """Read one line and count it."""
        line = self._raw.readline() if size is None or size < 0 else self._raw.readline(size)
        self._advance(len(line))
        return line

    def readlines(self, hint: int = -1) -> list[Any]:
        """Read lines and count them."""
        lines = list(self._raw.readlines(hint) if hint > 0 else self._raw.readlines())
        self._advance(sum(len(line) for line in lines))
        return lines

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = 0) -> int:
        """Seek the wrapped object; reading again what was already read is not counted again."""
        result = int(self._raw.seek(offset, whence))
        if self._origin is not None:
            self._position = result - self._origin
        return result

    def tell(self) -> int:
        """The wrapped object's position."""
        return int(self._raw.tell())

    def close(self) -> None:
        """Close the wrapped object, then run ``on_close(byte_count)`` (once)."""
        try:
            close = getattr(self._raw, "close", None)
            if close is not None:
                close()
        finally:
            self._once.fire(self.byte_count)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._once.fired

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name == "_raw":  # not set yet (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self._raw, name)

    def __repr__(self) -> str:
        return f"<CountingReader {self.byte_count} bytes of {self._raw!r}>"


class CountingIterator:
    """Yields the chunks of ``iterable`` unchanged and counts their bytes (``byte_count``).

    Runs ``on_close(byte_count)`` once: when the iterable is exhausted or raises, or at :meth:`close` (which
    also closes the iterable, as PEP 3333 asks of a WSGI body).
    """

    def __init__(self, iterable: Iterable[Any], on_close: OnClose | None = None) -> None:
        self._iterable = iterable
        self._iterator = iter(iterable)
        self._once = _Once(on_close)
        self.byte_count = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._iterator)
        except BaseException:  # exhausted, failed, or the generator was closed: the body is over
            self._once.fire(self.byte_count)
            raise
        self.byte_count += chunk_size(chunk)
        return chunk

    def close(self) -> None:
        """Close the wrapped iterable (if it can be), then run ``on_close(byte_count)`` (once)."""
        try:
            close = getattr(self._iterable, "close", None) or getattr(self._iterator, "close", None)
            if close is not None:
                close()
        finally:
            self._once.fire(self.byte_count)

    def __repr__(self) -> str:
        return f"<CountingIterator {self.byte_count} bytes>"


class CountingAsyncIterator:
    """:class:`CountingIterator` for async iterables (Django's async ``StreamingHttpResponse``, ASGI bodies).

    ``aclose()`` closes the wrapped iterable; ``close()`` (what Django calls when the response is closed) only
    runs ``on_close``. Either runs it once; so does the end of iteration, an error or a cancellation.
    """

    def __init__(self, iterable: AsyncIterable[Any], on_close: OnClose | None = None) -> None:
        self._iterable = iterable
        self._iterator: AsyncIterator[Any] = iterable.__aiter__()
        self._once = _Once(on_close)
        self.byte_count = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._iterator.__anext__()
        except BaseException:  # StopAsyncIteration, an error, or the task was cancelled (client gone)
            self._once.fire(self.byte_count)
            raise
        self.byte_count += chunk_size(chunk)
        return chunk

    async def aclose(self) -> None:
        """Close the wrapped iterable (if it can be), then run ``on_close(byte_count)`` (once)."""
        try:
            aclose = getattr(self._iterator, "aclose", None) or getattr(self._iterable, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._once.fire(self.byte_count)

    def close(self) -> None:
        """Run ``on_close(byte_count)`` now (once); the iterable itself is left to its owner."""
        self._once.fire(self.byte_count)

    def __repr__(self) -> str:
        return f"<CountingAsyncIterator {self.byte_count} bytes>"


def count_bytes(
    body: Any, on_close: OnClose | None = None
) -> CountingReader | CountingIterator | CountingAsyncIterator:
    """Wrap ``body`` to count its bytes: a file-like object (has ``read``) → :class:`CountingReader`, an async
    iterable → :class:`CountingAsyncIterator`, any other iterable → :class:`CountingIterator` (``bytes`` and
    ``str`` are one chunk)."""
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        return CountingIterator([body], on_close)
    if callable(getattr(body, "read", None)):
        return CountingReader(body, on_close)
    if hasattr(body, "__aiter__"):
        return CountingAsyncIterator(body, on_close)
    if hasattr(body, "__iter__"):
        return CountingIterator(body, on_close)
    raise TypeError(f"cannot count the bytes of {type(body).__name__}: expected a file-like object or an iterable")
