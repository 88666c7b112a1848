"""Compile and test one program in isolation -> Verdict."""

from sleepy.sandbox.judge import Program, Sandbox, SandboxLimits
from sleepy.sandbox.verdict import REASONS, Diagnostic, Verdict

__all__ = ["REASONS", "Diagnostic", "Program", "Sandbox", "SandboxLimits", "Verdict"]
