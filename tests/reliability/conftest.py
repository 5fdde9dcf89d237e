import sys
from pathlib import Path

# harness.py is shared with benchmarks/faults.py: importable by name from the tests here.
sys.path.insert(0, str(Path(__file__).parent))
