"""pytest-codegen: benchmark code-generation pipelines of small local models, with pytest.

The library works without pytest: problems → pipeline (model calls) → sandbox → outcome →
report. `pytest_codegen.plugin` is the thin pytest glue, registered through `pytest11`.
Importing this package stays cheap: models, the sandbox and datasets load on first use.
"""

from .outcome import ExecutionResult, TestResult
from .problems import Problem, TestCase

__all__ = ["ExecutionResult", "Problem", "TestCase", "TestResult"]
__version__ = "0.1.0"
