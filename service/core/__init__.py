"""The option-chain state and its lifecycle: cache, ingest, snapshots, roll, health."""
