"""The benchmark's phases, one module each, in the order ``bench/run.py`` runs them.

Each module has ``async def run(ctx: bench.context.RunContext) -> dict``: the phase's
section of the report (``bench/report.py`` renders it).
"""
