"""For ``bench/api_threads.py`` only (put on a measured server's PYTHONPATH, never installed): each OS
thread is named after its Python thread (``prctl(PR_SET_NAME)``, 15 bytes), and each thread pool's
prefix gets a number (the engines' store pool and the API store's can be told apart in /proc)."""

import concurrent.futures.thread as _cft
import ctypes
import itertools
import threading

_libc = ctypes.CDLL(None)
_bootstrap = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]


def _named(self: threading.Thread) -> None:
    try:
        _libc.prctl(15, self.name.encode()[:15], 0, 0, 0)
    except Exception:  # a measuring aid: never in the way
        pass
    _bootstrap(self)


threading.Thread._bootstrap_inner = _named  # type: ignore[attr-defined]
_pools = itertools.count(1)
_init = _cft.ThreadPoolExecutor.__init__


def _numbered(self, max_workers=None, thread_name_prefix="", *args, **kwargs):  # type: ignore[no-untyped-def]
    _init(self, max_workers, f"{thread_name_prefix or 'pool'}{next(_pools)}", *args, **kwargs)


_cft.ThreadPoolExecutor.__init__ = _numbered  # type: ignore[method-assign]
