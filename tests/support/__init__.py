"""What several test modules share, in one place: tiny checkpoints, images and the plain
one-image reference (helpers), synthetic datasets (synth), prediction folders made for the
export, review and select tests, the robustness corpus and fuzzer, and a stand-in CVAT server.
Imported as ``from support.helpers import make_checkpoint`` (tests/ is on sys.path via conftest)."""
