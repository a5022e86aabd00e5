"""The policy engine: who may do which action on which domain, from an admin-edited directory.

A pure package: it parses policy text, loads a policy directory with ownership and mode
checks, and answers ``decide``/``explain``/``visible_domains`` for identities its caller has
already verified. It must never import the rest of vpsshell (``vpsshell.checks``, the one
dependency-free module of checks that every part shares, is the single exception), look up
users or groups itself, or import anything but the standard library (the daemon imports it at
every start).
"""

from .engine import Policy, parse_policy
from .loader import POLICY_FILE_RE, dir_fingerprint, is_policy_file_name, load_policy_dir
from .model import ACTIONS, BUILTIN_ACTION_SETS, Decision, PolicyError, Rule

__all__ = [
    "ACTIONS",
    "BUILTIN_ACTION_SETS",
    "POLICY_FILE_RE",
    "Decision",
    "Policy",
    "PolicyError",
    "Rule",
    "dir_fingerprint",
    "is_policy_file_name",
    "load_policy_dir",
    "parse_policy",
]
