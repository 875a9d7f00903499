"""The deployable side: export a trained model as a self-contained directory (:mod:`.export`, :mod:`.frontend`),
measure it (:mod:`.measure`), and transcribe with it (:mod:`.transcribe`, :mod:`.decoder`, :mod:`.audio`), whole
files or streams (:mod:`.streaming`).

Kept free of imports: :mod:`.transcribe`, :mod:`.streaming`, :mod:`.audio` and :mod:`.decoder` run with numpy,
soundfile, onnxruntime, kaldifst and kaldi-decoder alone, without torch, Lhotse or the training code.
"""
