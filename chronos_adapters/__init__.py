"""Implementations of the ``chronos_core`` ports: memory (the reference), SQL stores, Kafka, executors.

Each adapter lives in its own subpackage and is imported from there (``chronos_adapters.memory``), so
that using one never imports another's driver.
"""
