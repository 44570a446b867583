"""Test harness: a real ComfyUI, in-process (:mod:`.boot`) and as a server subprocess (:mod:`.server`)."""
