"""What the tests share, in one place (the tests folder is on ``sys.path``; see pyproject.toml).

* :mod:`support.keywords` -- keyword encoders standing in for trained models (fast, predictable).
* :mod:`support.images` -- small image files and bytes, coloured or random.
* :mod:`support.corpora` -- manifests and pair sets built from those images.
* :mod:`support.tiny` -- settings of tiny real models.
* :mod:`support.hf` -- tiny random transformers checkpoints (the hub is never contacted).
* :mod:`support.reference` -- a slow numpy reference of the retrieval metrics (the oracle).
* :mod:`support.fixtures` -- fixtures several folders use (one torch thread per test).
* :mod:`support.milvus` -- Milvus collection names, locations and the standalone test server
  (the test-wide fixtures `lite_db` and `milvus_server` are in tests/conftest.py).
"""
