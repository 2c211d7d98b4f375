"""Helpers for tests and benchmarks, importable from an installed package.

* :mod:`fiftyone_lazsl.testing.tiny_clip`: a tiny open_clip architecture with
  random weights, saved checkpoints and offline Hugging Face cache layouts;
* :mod:`fiftyone_lazsl.testing.mongod`: a private ``mongod`` on a free loopback
  port, so tests and benchmarks never touch a user's FiftyOne database.

Nothing here is used by the library itself.
"""
