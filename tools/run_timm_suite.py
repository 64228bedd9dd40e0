"""Run timm's own model test suite (tests/test_models.py of the installed timm version) on every nas_zoo model.

timm's tests are not installed with timm, so this fetches the matching source distribution from PyPI once
(cached in .cache/), then runs its test_models.py with nas_zoo imported first (`-p nas_zoo` registers the zoo
before collection) and `-k` selecting our models. GITHUB_ACTIONS=1 gives the suite's own CI settings, which
leave out the tests that download pretrained weights.

    python tools/run_timm_suite.py [extra pytest args]
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import timm

ROOT = Path(__file__).resolve().parents[1]


def fetch_tests(cache: Path) -> Path:
    version = timm.__version__
    dest = cache / f"timm-{version}"
    tests = dest / "tests"
    if (tests / "test_models.py").is_file():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"timm=={version}", "-d", str(cache)], check=True)
    with tarfile.open(next(cache.glob(f"timm-{version}.tar.gz"))) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"timm-{version}/tests/")]
        tar.extractall(cache, members=members, filter="data")
    return tests


def main(argv) -> int:
    import nas_zoo

    tests = fetch_tests(ROOT / ".cache" / "timm-tests")
    selection = " or ".join(sorted(e.name for e in nas_zoo.list_entries()))
    env = {**os.environ, "GITHUB_ACTIONS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-p", "nas_zoo", str(tests / "test_models.py"), "-k", selection,
           "-q", "-rf", "-W", "ignore::pytest.PytestUnknownMarkWarning", "-p", "no:cacheprovider", *argv]
    return subprocess.run(cmd, env=env, cwd=tests.parent).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
