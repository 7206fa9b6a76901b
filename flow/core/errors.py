"""Typed errors of hetq.

Every mistake a user can make (bad config, bad CLI argument, missing data folder, a run directory
from another version) raises a subclass of :class:`HetqError`. The CLI turns it into one line on
stderr and exit status 2; nothing else in hetq catches it.
"""
from __future__ import annotations


class HetqError(Exception):
    """Base class of user-facing errors: the message is one line naming the field and the value."""


class ConfigError(HetqError):
    """A run config (YAML) or a command-line option has a bad key or value."""


class DataError(HetqError):
    """A data set folder is missing or its files are not in the expected format."""


class RunDirError(HetqError):
    """A run directory is missing, incomplete, or was written by another hetq version."""


class PlanError(HetqError):
    """A plan.json is malformed or does not belong to the checkpoint beside it."""


class FaultMapError(HetqError):
    """A fault map names a memory, word or bit that the weight-memory image does not have."""
