"""Face-verification evaluation: one package for every protocol, model and report.

* :mod:`.metrics`: ROC AUC, k-fold accuracy, EER, TAR@FAR from scores (pure numpy);
  :mod:`.bootstrap`: paired bootstrap of AUC differences; :mod:`.plots`: ROC figures.
* :mod:`.protocols`: every pair protocol (LFW pair files, the assignment's, CSV, CFP-FP/FF,
  insightface ``.bin``) read into one :class:`~.protocols.PairSet`; :mod:`.bins` the ``.bin``
  reader / writer; :mod:`.ijb` IJB-B/C template verification.
* :mod:`.embedder`: one embedder interface (a torch model, a run folder, an ONNX model);
  :mod:`.embed`: embedding images and scoring pairs with it.
* :mod:`.identify`: 1:N identification (closed-set CMC, open-set TPIR@FPIR, distractor
  scaling) over :mod:`.search` (FAISS indexes); :mod:`.idsets` the gallery / probe sources;
  :mod:`.store` embedding stores (memory-mapped, with norms).
* :mod:`.callback`: the per-epoch verification callback (held-out identities or any protocol).
* :mod:`.report`: the files evaluation writes and reads (score files, ``metrics.json``).
* :mod:`.verify_cli`, :mod:`.compare`, :mod:`.embed_cli`: the ``fvloss verify``,
  ``fvloss compare`` and ``fvloss embed`` commands.

Importing this package imports nothing heavy; import the submodule you need.
"""
