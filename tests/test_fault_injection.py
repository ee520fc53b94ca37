"""The fault-injection harness (scripts/fault_injection.py) over a few of its fast faults: a
group SIGTERM, a SIGKILL, a second trainer on the run directory and a SIGHUP, each followed by
an --auto-resume start, then the run's end and a translation of the dev set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"
KINDS = ("sigterm-group", "sigkill", "second-trainer", "sighup")


def test_four_faults_leave_a_run_that_resumes_and_finishes(tmp_path):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--injections", "4", "--kinds", ",".join(KINDS),
         "--work-dir", tmp_path, "--keep"],
        capture_output=True, text=True, timeout=300,
        env=os.environ | {"OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("| ")
    }
    assert set(rows) == {"fault", "---", *KINDS, "total"}
    injections, _early, expected, continued, *_rest = rows["total"]
    assert (injections, expected, continued) == ("4", "4/4", "4/4")
    assert rows["sigkill"][2] == "1/1 (137)" and rows["sighup"][2] == "1/1 (129)"
    assert "finished run translates: yes" in result.stdout
    assert "every check held" in result.stdout
    (work,) = tmp_path.iterdir()  # --keep: the session's folder, its run and logs
    assert (work / "run" / "last.pt").is_file() and (work / "logs").is_dir()
