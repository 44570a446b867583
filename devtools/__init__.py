"""Development tools shared by the demo, the tests, the scripts and the benches; outside the pack's
floors (kernels <- nodes <- demo) and not shipped with it (imported as ``ultrares.devtools``).

- :mod:`.comfy_host`: which ComfyUI tree to use, and ComfyUI booted as a library with custom node packs;
- :mod:`.compat_matrix`: the compatibility matrix declaration (run by the tests, rendered by a script).
"""
