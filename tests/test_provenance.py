"""Input fingerprints of the stage markers (asr_distill.provenance): what counts as a change and what does not."""
from __future__ import annotations

import os
import shutil

from asr_distill.provenance import describe_changes, file_fingerprint, stage_inputs, tree_fingerprint


def test_tree_fingerprint_sees_content_and_size_not_times(tmp_path):
    root = tmp_path / "corpus"
    (root / "etc").mkdir(parents=True)
    (root / "wav").mkdir()
    (root / "etc" / "train.transcription").write_text("HELLO WORLD (a)\nGOOD BYE (b)\n")
    audio = root / "wav" / "a.wav"
    audio.write_bytes(bytes(200_000))  # large: its size counts, not its content
    base = tree_fingerprint(root)
    os.utime(audio, (1, 1))
    os.utime(root / "etc" / "train.transcription", (1, 1))
    assert tree_fingerprint(root) == base  # times are no change
    shutil.copytree(root, tmp_path / "copy", copy_function=shutil.copyfile)  # a plain copy (new times)
    assert tree_fingerprint(tmp_path / "copy") == base
    (root / "etc" / "train.transcription").write_text("GOOD BYE (b)\nHELLO WORLD (a)\n")  # same size
    assert tree_fingerprint(root) != base
    (root / "etc" / "train.transcription").write_text("HELLO WORLD (a)\nGOOD BYE (b)\n")
    assert tree_fingerprint(root) == base
    audio.write_bytes(bytes(200_001))
    assert tree_fingerprint(root) != base
    audio.write_bytes(bytes(200_000))
    (root / "wav" / "b.wav").write_bytes(b"RIFF")  # a file added
    assert tree_fingerprint(root) != base


def test_file_fingerprint_of_a_large_file_reads_its_edges(tmp_path, monkeypatch):
    import asr_distill.provenance as prov

    monkeypatch.setattr(prov, "_WHOLE", 1000)
    monkeypatch.setattr(prov, "_EDGE", 100)
    path = tmp_path / "big.bin"
    data = bytearray(range(256)) * 10
    path.write_bytes(bytes(data))
    base = file_fingerprint(path)
    assert base.startswith("2560:")
    data[-1] ^= 1  # the last MiB (here: 100 bytes) is read
    path.write_bytes(bytes(data))
    assert file_fingerprint(path) != base


def test_stage_inputs_name_experiment_files_and_option_paths(tmp_path):
    exp = tmp_path / "exp"
    (exp / "data").mkdir(parents=True)
    for split in ("train", "dev"):
        (exp / "data" / f"cuts_{split}.jsonl.gz").write_bytes(split.encode())
    lexicon = tmp_path / "my.dic"
    lexicon.write_text("HELLO HH AH L OW\n")
    got = stage_inputs(exp, "lang", {"lexicon": str(lexicon), "oov": "skip", "order": 2})
    assert set(got) == {"data/cuts_train.jsonl.gz", f"--lexicon: {lexicon}"}
    feats = stage_inputs(exp, "features", {})
    assert set(feats) == {"data/cuts_train.jsonl.gz", "data/cuts_dev.jsonl.gz"}
    (exp / "data" / "cuts_dev.jsonl.gz").write_bytes(b"other")
    (exp / "data" / "cuts_train.jsonl.gz").unlink()
    (exp / "data" / "cuts_test.jsonl.gz").write_bytes(b"test")
    changes = describe_changes(feats, stage_inputs(exp, "features", {}))
    assert changes == ("data/cuts_dev.jsonl.gz changed, data/cuts_train.jsonl.gz missing now, "
                       "data/cuts_test.jsonl.gz new")
    assert describe_changes(feats, feats) == ""
