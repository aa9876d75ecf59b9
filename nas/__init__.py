"""TraceNAS: find and train tiny TraceNet-style tap-to-segment models for phones.

The `nas` command maps onto the data flow: `space` (ArchConfig, supernet, tracing) -> latency tables
-> search -> distill -> eval / export.
"""

__version__ = "0.1.0"
