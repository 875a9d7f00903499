"""The recipe script and the ``asr-distill`` CLI, run as subprocesses the way a user runs them."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from asr_distill.utils import read_json
from conftest import REPO, SLICE

BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # let run.sh pick the repository's .venv, as a user's shell would
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # and find asr-distill even without one
    return env


def _asr_distill():
    exe = BIN / "asr-distill"
    return [str(exe)] if exe.exists() else [shutil.which("asr-distill") or pytest.skip("asr-distill not installed")]


def _run_recipe(exp_dir):
    return subprocess.run(["bash", str(REPO / "recipes" / "an4" / "run.sh"), "--corpus-dir", str(SLICE),
                           "--exp-dir", str(exp_dir), "--stage", "0", "--stop-stage", "1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)


def test_recipe_stages_0_1_and_skip_on_rerun(tmp_path):
    exp_dir = tmp_path / "exp"
    first = _run_recipe(exp_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("prepare", "features"):
        marker = exp_dir / ".done" / stage
        assert marker.is_file(), stage
        assert "finished" in read_json(marker)
    for s in ("train", "dev", "test"):
        for kind in ("cuts", "fbank", "mfcc"):
            assert (exp_dir / "data" / f"{kind}_{s}.jsonl.gz").is_file()
    assert (exp_dir / "data" / "cmvn_fbank.npz").is_file() and (exp_dir / "data" / "cmvn_mfcc.npz").is_file()
    assert not (exp_dir / ".done" / "lang").exists()  # --stop-stage 1 stops there
    mtimes = {p.name: p.stat().st_mtime_ns for p in (exp_dir / "data").iterdir()}

    second = _run_recipe(exp_dir)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log
    assert "stage prepare: already done" in log and "stage features: already done" in log
    assert "stage prepare: start" not in log and "stage features: start" not in log
    assert {p.name: p.stat().st_mtime_ns for p in (exp_dir / "data").iterdir()} == mtimes  # nothing rewritten


def test_prepare_on_a_corrupt_corpus_fails_naming_the_utterance(small_corpus, tmp_path):
    fid = small_corpus.train[1][0]
    utt = small_corpus.uid(fid)
    small_corpus.audio(fid).write_bytes(b"not audio at all" * 50)
    cmd = _asr_distill() + ["prepare", "--exp-dir", str(tmp_path / "exp"), "--corpus-dir", str(small_corpus.root)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert utt in proc.stderr and "unreadable audio" in proc.stderr
    assert "Traceback" not in proc.stderr  # a clean error message, not a crash
    assert not (tmp_path / "exp" / ".done" / "prepare").exists()
    # --skip-bad leaves it out and finishes the stage
    proc = subprocess.run(cmd + ["--skip-bad"], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "exp" / ".done" / "prepare").is_file()
    assert utt in (tmp_path / "exp" / "data" / "bad_utterances.txt").read_text()


@pytest.mark.parametrize("args, named", [
    (["--experiments", "table1,tabel5"], "tabel5"),
    (["--experiments", "select", "--select-candidates", "2:0.5,5:0"], "5:0"),
    (["--experiments", "select", "--select-candidates", "2:x"], "2:x"),
    (["--teacher-precision", "fp8", "--device", "cpu"], "compute capability 8.9"),
    (["--teacher-source", "cache", "--transfer-data", "."], "--transfer-data"),
])
def test_distill_refuses_unknown_experiments_and_bad_candidates(tmp_path, args, named):
    """Before any work: a typo in an experiment name or a candidate is named, not silently skipped or crashed on."""
    cmd = _asr_distill() + ["distill", "--exp-dir", str(tmp_path), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".done" / "distill").exists()


@pytest.mark.parametrize("args, named", [
    (["--score-systems", "tri2,tri9"], "tri9"),
    (["--dev-tuning", "fast"], "fast"),
])
def test_gmm_refuses_unknown_scored_systems_and_tuners(tmp_path, args, named):
    cmd = _asr_distill() + ["gmm", "--exp-dir", str(tmp_path), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, said", [
    (["--stage", "foo"], "--stage foo: expected a stage number 0-8"),
    (["--stage", "9"], "--stage 9: expected a stage number 0-8"),
    (["--stage", "5", "--stop-stage", "2"], "nothing would run"),
    (["--stage"], "option --stage needs a value"),
    (["--frames", "fast"], "--frames fast"),
])
def test_recipe_refuses_bad_stage_ranges_before_any_work(tmp_path, args, said):
    proc = subprocess.run(["bash", str(REPO / "recipes" / "an4" / "run.sh"), "--exp-dir", str(tmp_path / "exp"), *args],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and said in proc.stderr, proc.stderr
    assert not (tmp_path / "exp").exists()


def test_a_stage_before_its_inputs_names_the_missing_stage(tmp_path):
    proc = subprocess.run(_asr_distill() + ["train-teachers", "--exp-dir", str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "run stage 'gmm'" in proc.stderr and "cuts_train.jsonl.gz" in proc.stderr
    assert not (tmp_path / ".done" / "teachers").exists()


def test_finished_stages_refuse_new_options_and_a_redo_invalidates_later_stages(small_corpus, tmp_path):
    exp_dir = tmp_path / "exp"
    base = ["--exp-dir", str(exp_dir), "--corpus-dir", str(small_corpus.root)]

    def run(*args):
        return subprocess.run(_asr_distill() + list(args), env=_env(), capture_output=True, text=True, timeout=300)

    assert run("prepare", *base).returncode == 0
    assert run("features", "--exp-dir", str(exp_dir)).returncode == 0
    # the same options again: skipped; other options: refused by name, not silently ignored
    again = run("prepare", *base)
    assert again.returncode == 0 and "already done" in again.stderr
    other = run("prepare", *base[:2], "--corpus-dir", str(tmp_path / "nonexistent"))
    assert other.returncode == 2 and "corpus_dir" in other.stderr and "--force" in other.stderr
    assert "Traceback" not in other.stderr
    # the corpus edited after stage 0 ran: refused, naming the input (a touched, unchanged file is no change)
    transcription = small_corpus.root / "etc" / "an4_train.transcription"
    os.utime(transcription)
    assert "already done" in run("prepare", *base).stderr
    lines = transcription.read_text().splitlines()
    transcription.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same size, other content
    edited = run("prepare", *base)
    assert edited.returncode == 2 and "what it read has changed" in edited.stderr, edited.stderr
    assert f"--corpus-dir: {small_corpus.root} changed" in edited.stderr and "Traceback" not in edited.stderr
    # redoing stage 0 leaves stage 1 to be redone: its features came from the old manifests
    assert run("prepare", *base, "--force", "--dev-fraction", "0.5").returncode == 0
    assert not (exp_dir / ".done" / "features").exists()
    redo = run("features", "--exp-dir", str(exp_dir))
    assert redo.returncode == 0 and "stage features: start" in redo.stderr


def test_a_second_run_on_a_busy_experiment_is_refused(small_corpus, tmp_path):
    """While one process holds the experiment (here: this test, through the library's lock), a stage started on
    the same directory stops at once, naming the holder, and writes nothing."""
    from asr_distill.experiment import Experiment

    exp = Experiment(tmp_path / "exp")
    with exp.lock("a test holding it"):
        proc = subprocess.run(_asr_distill() + ["prepare", "--exp-dir", str(exp.dir), "--corpus-dir",
                                                str(small_corpus.root)], env=_env(), capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 1 and "in use by another asr-distill" in proc.stderr
    assert "a test holding it" in proc.stderr and "Traceback" not in proc.stderr
    assert not (exp.dir / "data").exists()
    # released: the same command now runs
    again = subprocess.run(_asr_distill() + ["prepare", "--exp-dir", str(exp.dir), "--corpus-dir",
                                             str(small_corpus.root)], env=_env(), capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr


def test_a_finished_teacher_stage_refuses_other_options_and_the_corpus_kind_is_a_choice(tmp_path):
    """Issue 16's rows: `train-teachers --num-teachers 7 --hidden-dim 64` on a finished experiment names the changed
    options instead of reporting "already done"; `--corpus librispeach` (a typo) is refused with the choices."""
    import json

    marker = tmp_path / "exp" / ".done" / "teachers"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"finished": "then", "options": {"num_teachers": 4, "hidden_dim": 512}}))
    proc = subprocess.run(_asr_distill() + ["train-teachers", "--exp-dir", str(tmp_path / "exp"), "--num-teachers", "7",
                                            "--hidden-dim", "64"], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "num_teachers: 4 then, 7 now" in proc.stderr and "hidden_dim: 512 then, 64 now" in proc.stderr
    assert "--force" in proc.stderr
    proc = subprocess.run(_asr_distill() + ["prepare", "--exp-dir", str(tmp_path / "exp2"), "--corpus", "librispeach",
                                            "--corpus-dir", str(tmp_path)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "librispeach" in proc.stderr and "librispeech" in proc.stderr
    assert not (tmp_path / "exp2" / ".done").exists()


def test_deployable_student_is_the_smallest_close_to_the_ensemble_on_dev():
    from asr_distill.results import choose_deployable
    rows = [{"name": "ensemble-arithmetic", "kind": "ensemble", "params": 4000, "dev_wer": 6.0, "wer": 1.0},
            {"name": "ensemble-geometric", "kind": "ensemble", "params": 4000, "dev_wer": 6.4, "wer": 0.5},
            {"name": "student", "kind": "student", "params": 1000, "dev_wer": 6.2, "wer": 9.0},
            {"name": "student-h128", "kind": "student", "params": 250, "dev_wer": 6.5, "wer": 3.0},
            {"name": "student-h64", "kind": "student", "params": 60, "dev_wer": 7.5, "wer": 2.0},
            {"name": "baseline", "kind": "baseline", "params": 10, "dev_wer": 5.0, "wer": 2.0}]
    pick = choose_deployable({"systems": rows}, margin=0.5)
    # within 0.5 of the best ensemble's dev WER (6.0): student and student-h128; the smaller one; test never read
    assert (pick["system"], pick["ensemble"], pick["params_vs_ensemble"]) == ("student-h128", "ensemble-arithmetic",
                                                                              0.0625)
    assert pick["within_margin"]
    # nothing close enough: the best student on dev, flagged
    pick = choose_deployable({"systems": rows}, margin=0.1)
    assert (pick["system"], pick["within_margin"]) == ("student", False)
    with pytest.raises(ValueError, match="stage 6"):
        choose_deployable({"systems": rows[:2]})


def test_export_auto_without_students_names_the_stage(tmp_path):
    cmd = _asr_distill() + ["export", "--exp-dir", str(tmp_path), "--system", "auto", "--out-dir",
                            str(tmp_path / "out")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "stage 6" in proc.stderr and "Traceback" not in proc.stderr
