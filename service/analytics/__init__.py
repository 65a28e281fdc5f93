"""Option analytics: Black-76 math, per-chain computation, its runner, and the REST seed."""
