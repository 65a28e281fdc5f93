"""livechain benchmarks: every figure is a ratio against a baseline measured in the same run.

The machines we run on are noisy (±10–30 % between runs), so an absolute number alone says
little; each scenario races our code against a baseline in interleaved rounds and reports the
median ratio, with the absolute numbers beside it.

    python -m bench                 # every scenario, table on stdout, JSON in bench/results/
    python -m bench --quick         # short rounds: a smoke test for CI
    python -m bench --only decode   # one scenario (repeatable)

Layout: ``model`` (rows, budgets, scenarios), ``timing`` (the interleaved race, and
``interleave`` for contestants that time themselves), ``corpus`` (realistic Dhan packets),
``sdk`` (the official SDK as a baseline), ``machine`` (what ran it), ``report`` (table and
JSON), ``worker`` (a role in a process of its own, driven over a pipe), ``roles`` (feed
servers, clients, the service and its probes, run by ``worker``), ``redis_server`` (a
throwaway ``redis-server``), ``scenarios`` (the registry, one module per scenario).
See docs/benchmarks.md.
"""
