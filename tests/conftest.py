import sys
from pathlib import Path

# tests/ is no package and pytest imports in importlib mode, so the shared helpers under
# tests/support are importable only with this directory on the path.
sys.path.insert(0, str(Path(__file__).parent))
