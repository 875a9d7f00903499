"""The deployable side: export a trained model as a self-contained directory (:mod:`.export`, :mod:`.frontend`),
measure it (:mod:`.measure`), and transcribe with it (:mod:`.transcribe`, :mod:`.decoder`).

Kept free of imports: :mod:`.transcribe` and :mod:`.decoder` run with numpy, soundfile, onnxruntime, kaldifst and
kaldi-decoder alone, without torch, Lhotse or the training code.
"""
