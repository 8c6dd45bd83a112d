"""Many instances: placement on devices, routers, prefill/decode disaggregation."""

# The cache-aware router registers itself in ROUTERS on import.
from llmservingsim.cluster import prefix_router as _prefix_router  # noqa: F401
