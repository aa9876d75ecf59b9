"""TraceNAS: find and train tiny TraceNet-style tap-to-segment models for phones.

The folders follow the data flow: `search_spaces` (ArchConfig -> student -> tracing) -> `nas.latency`
(traced op keys -> latency tables) -> `nas.search` (scores, algorithms -> search result) -> `distill`
(teachers, training -> checkpoint) -> `nas.evaluation` / `nas.deploy` (export, bench, demo); `nas.cli`
is the `nas` command on top. Every error a user can cause is a `TraceNASError`.
"""

from search_spaces.common.errors import TraceNASError

__version__ = "0.1.0"
__all__ = ["TraceNASError", "__version__"]
